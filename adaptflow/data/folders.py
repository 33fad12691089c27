"""Image folders (`<split>/<class>/*.png`) loaded once into uint8 tensors.

Small datasets are decoded a single time and kept as one tensor; training then indexes batches
from it (on the device when it fits), so decoding is never in the training loop. Decoded
tensors are cached on disk by the content hash of the files and the image size.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from adaptflow import env
from adaptflow.config import WindowConfig
from adaptflow.data.pixels import HIGH_BIT_MODES, WINDOW_FIX, to_8bit
from adaptflow.errors import PredictError, UserError
from adaptflow.io import atomic_write

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
_CACHE_FORMAT = 1


def held_out_count(n: int, fraction: float) -> int:
    """How many of a class's n labeled images `ImageSet.hold_out` holds out: `fraction` of them,
    at least one, and never all."""
    return min(n - 1, max(1, round(fraction * n)))


@dataclass(frozen=True)
class ImageSet:
    """Decoded images (uint8, N x 3 x H x W), their labels (int64, N) and the class names."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.labels)

    def per_class(self, k: int | None, seed: int = 0) -> ImageSet:
        """A seeded subset with at most k images per class (all of them when k is None)."""
        if k is None:
            return self
        return self._take(self._draw(lambda n: k, seed).sort().values)

    def hold_out(self, fraction: float, seed: int = 0) -> tuple[ImageSet, ImageSet]:
        """(the rest, a seeded `fraction` of each class held out, at least one image): a labeled validation
        split taken from a training set."""
        counts = torch.bincount(self.labels, minlength=len(self.classes))
        for name, n in zip(self.classes, counts.tolist(), strict=True):
            if n < 2:
                raise ValueError(f"class '{name}' has {n} labeled image(s): holding one out would leave none to train on; "
                                 "hold out labels only where every class has two or more")
        out = torch.zeros(len(self), dtype=torch.bool)
        out[self._draw(lambda n: held_out_count(n, fraction), seed)] = True
        return self._take(torch.nonzero(~out).flatten()), self._take(torch.nonzero(out).flatten())

    def _draw(self, size: Callable[[int], int], seed: int) -> torch.Tensor:
        """Indices of a seeded draw from each class, in class order: `size(n)` of a class's n images."""
        g = torch.Generator().manual_seed(seed)
        drawn = []
        for cls in range(len(self.classes)):
            idx = torch.nonzero(self.labels == cls).flatten()
            drawn.append(idx[torch.randperm(len(idx), generator=g)[:size(len(idx))]])
        return torch.cat(drawn)

    def _take(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.classes)

    def concat(self, other: ImageSet) -> ImageSet:
        """Both sets in one (same classes)."""
        if other.classes != self.classes:
            raise ValueError(f"cannot join image sets with classes {self.classes} and {other.classes}")
        return ImageSet(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]), self.classes)


def natural_key(name: str) -> tuple[int, int | str]:
    """Sort class folders so that '10' follows '9'."""
    return (0, int(name)) if name.isdigit() else (1, name)


class LinkOutsideError(UserError, ValueError):
    """A symbolic link in a data folder that leads out of it; the message names the link and where it points."""


def link_outside(path: Path, folder: Path) -> Path | None:
    """Where `path` leads when a symbolic link takes it out of `folder` (the folder being read); None when it stays
    inside. Links into the project's DVC cache are DVC's own (`cache.type symlink`) and stay allowed."""
    target = path.resolve()
    if target.is_relative_to(folder.resolve()) or target.is_relative_to(env.project_path(".dvc/cache").resolve()):
        return None
    return target


def refuse_links_outside(paths: list[Path], folder: Path) -> None:
    """Raise LinkOutsideError for the first of `paths` that a symbolic link takes out of `folder`."""
    for path in paths:
        target = link_outside(path, folder)
        if target is not None:
            raise LinkOutsideError(f"{path}: a symbolic link to {target}, outside {folder}; copy the file into the folder, "
                                   "or remove the link")


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder` (any depth), in path order; hidden files and folders are skipped."""
    if not folder.is_dir():
        raise PredictError(f"{folder}: no such folder; give the folder of images to predict")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise PredictError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or below it")
    return files


def list_classes(folder: Path) -> tuple[str, ...]:
    """Class names of a split: its sub-folders, in natural order."""
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such image folder (expected <split>/<class>/*.png)")
    return tuple(sorted((p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=natural_key))


#: The class index of an unlabeled image whose class nobody knows (it lies outside any class folder).
UNKNOWN = -1


def scan_folder(folder: Path, classes: tuple[str, ...], unlabeled: bool = False) -> tuple[list[Path], list[int]]:
    """All image files of a split and their class indices, in a stable order.

    An `unlabeled` split also takes images that lie in it directly or in folders that are no class
    (label UNKNOWN): unlabeled images rarely come sorted. Those in class folders keep their class,
    which measures pseudo-labels and never trains."""
    present = list_classes(folder)
    unknown = [c for c in present if c not in classes]
    if unlabeled:
        loose = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        for name in unknown:
            loose += sorted(p for p in (folder / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
        unknown = []
    if unknown:
        raise ValueError(
            f"{folder}: classes {unknown} are not among the model's classes {list(classes)}; "
            "remove those folders or train on a split that has them"
        )
    paths: list[Path] = []
    labels: list[int] = []
    for index, name in enumerate(classes):
        class_dir = folder / name
        if not class_dir.is_dir():
            continue
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        paths += files
        labels += [index] * len(files)
    if unlabeled:
        paths += loose
        labels += [UNKNOWN] * len(loose)
    if not paths:
        raise ValueError(f"{folder}: no images found (expected {folder}/<class>/*.png)")
    refuse_links_outside(paths, folder)
    return paths, labels


class HighBitDepthError(UserError, ValueError):
    """An image of more than 8 bits and no `data.window` saying how to bring it to 8."""


def decode_image(path: Path, size: int, window: WindowConfig | None) -> np.ndarray:
    """One image file as uint8 size x size x 3, the way every image a model sees is made (`load_image_folder`,
    `adaptflow predict`): single-channel images of more than 8 bits through `window`, then RGB, then resized."""
    with Image.open(path) as img:
        if img.mode in HIGH_BIT_MODES:
            if window is None:
                raise HighBitDepthError(f"{path}: {img.mode} image (16-bit or float), and data.window is empty; {WINDOW_FIX}")
            img = Image.fromarray(to_8bit(np.asarray(img), window))
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _content_key(folder: Path, paths: list[Path], labels: list[int], size: int, window: WindowConfig | None) -> str:
    digest = hashlib.sha256(f"{_CACHE_FORMAT}:{size}".encode())
    if window is not None:
        digest.update(window.model_dump_json().encode())
    for path, label in zip(paths, labels, strict=True):
        digest.update(f"{path.relative_to(folder)}:{label}:".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def load_image_folder(
    folder: str | Path, image_size: int, classes: tuple[str, ...] | None = None, window: WindowConfig | None = None,
    unlabeled: bool = False,
) -> ImageSet:
    """Decode every image of `folder/<class>/` into one tensor, using the on-disk cache when it can.

    `classes` fixes the class order (take it from the training split); by default the
    folder's own sub-folders are the classes. `window` maps images of more than 8 bits onto 8
    (`pixels.to_8bit`); without one they are an error. An `unlabeled` split may hold images outside
    class folders too (`scan_folder`).
    """
    folder = Path(folder)
    classes = classes if classes is not None else list_classes(folder)
    paths, labels = scan_folder(folder, classes, unlabeled)
    key = _content_key(folder, paths, labels, image_size, window)
    cached = env.cache_dir() / "images" / f"{key}.pt"
    if cached.exists():
        # mapped, not read: pages load as rows are used, and processes on one machine (DDP ranks) share them
        blob = torch.load(cached, weights_only=True, mmap=True)
        return ImageSet(blob["images"], blob["labels"], tuple(blob["classes"]))
    images = torch.empty((len(paths), 3, image_size, image_size), dtype=torch.uint8)
    rows = images.numpy()  # the same memory

    def decode(row: int) -> None:  # straight into its row: no list of arrays, no stacked copy
        rows[row] = decode_image(paths[row], image_size, window).transpose(2, 0, 1)

    with ThreadPoolExecutor(max_workers=min(8, env.usable_cpus())) as pool:
        list(pool.map(decode, range(len(paths))))
    result = ImageSet(images, torch.tensor(labels, dtype=torch.int64), tuple(classes))
    with atomic_write(cached) as tmp:
        torch.save({"images": result.images, "labels": result.labels, "classes": list(classes)}, tmp)
    log.info("decoded %d images from %s", len(paths), folder)
    return result

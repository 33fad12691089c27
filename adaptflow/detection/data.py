"""Detection splits in YOLO format (`<split>/images/*`, `<split>/labels/*.txt`) loaded into tensors.

A domain may also be laid out as Ultralytics documents first: `images/train`, `labels/train`, ...,
with `data.yaml` naming each split's images folder (`train:`, `val:`, `test:`, relative to `path:`).
Labels sit where Ultralytics looks for them: the images folder's path with its last `images` made `labels`.

A split decodes once into one uint8 tensor (N x 3 x S x S) plus one box table, so batches are
indexed, never re-read. Boxes are kept as one (M x 6) tensor of `image, class, x1, y1, x2, y2`
in pixels; `targets()` cuts it per image for the models that want a list.
"""

from __future__ import annotations

import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml
from PIL import Image

from adaptflow import env
from adaptflow.data.folders import IMAGE_SUFFIXES, refuse_links_outside
from adaptflow.errors import UserError
from adaptflow.io import read_yaml

#: data.yaml keys that can name each of the project's splits, the first present one chosen: Ultralytics'
#: datasets often hold no `test:`, and their `val:` split is then the held-out one.
YAML_SPLITS = {"train": ("train",), "val": ("val",), "test": ("test", "val"), "unlabeled": ("unlabeled",)}


class DatasetFileError(UserError, ValueError):
    """A domain's data.yaml names its splits in a way that cannot be read; the message names the key and the fix."""


@dataclass(frozen=True)
class DetectionSet:
    """Images (uint8, N x 3 x S x S), boxes (float, M x 6: image, class, x1, y1, x2, y2), class names."""

    images: torch.Tensor
    boxes: torch.Tensor
    classes: tuple[str, ...]
    files: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.images)

    def targets(self, index: torch.Tensor | None = None) -> list[dict[str, torch.Tensor]]:
        """Per-image `{"boxes": K x 4 xyxy, "labels": K}` for the images at `index` (all by default)."""
        index = torch.arange(len(self)) if index is None else index
        owner = self.boxes[:, 0].long()
        order = torch.argsort(owner, stable=True)
        counts = torch.bincount(owner, minlength=len(self)).tolist()
        per_image = torch.split(self.boxes[order], counts)
        return [{"boxes": per_image[i][:, 2:6], "labels": per_image[i][:, 1].long()} for i in index.tolist()]

    @staticmethod
    def join(parts: list[DetectionSet]) -> DetectionSet:
        """Several sets (same classes) as one."""
        if len(parts) == 1:
            return parts[0]
        offsets = torch.tensor([0] + [len(p) for p in parts[:-1]]).cumsum(0).tolist()
        boxes = [p.boxes + torch.tensor([offset, 0, 0, 0, 0, 0]) for p, offset in zip(parts, offsets, strict=True)]
        return DetectionSet(torch.cat([p.images for p in parts]), torch.cat(boxes), parts[0].classes,
                            tuple(f for p in parts for f in p.files))

    def subset(self, count: int | None, seed: int = 0) -> DetectionSet:
        """A seeded subset of `count` images (all of them when None)."""
        if count is None or count >= len(self):
            return self
        keep = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:count].sort().values
        remap = torch.full((len(self),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        boxes = self.boxes[remap[self.boxes[:, 0].long()] >= 0].clone()
        boxes[:, 0] = remap[boxes[:, 0].long()].float()
        return DetectionSet(self.images[keep], boxes, self.classes, tuple(self.files[i] for i in keep.tolist()) if self.files else ())


def read_names(domain_dir: Path) -> tuple[str, ...]:
    """Class names from `<domain>/data.yaml` (`names:` as a list or an index mapping)."""
    spec_path = domain_dir / "data.yaml"
    if not spec_path.exists():
        raise FileNotFoundError(f"{spec_path}: no dataset file; a detection domain needs data.yaml with `names:`")
    spec = read_yaml(spec_path) or {}
    names = spec.get("names") if isinstance(spec, dict) else None
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names)]
    if not names:
        raise ValueError(f"{spec_path}: `names:` is missing or empty; list the class names in index order")
    return tuple(str(n) for n in names)


def images_dir(split_dir: Path) -> Path:
    """The images folder of the detection split `<domain>/<split>`: `<split>/images`, or, in a domain laid out
    as Ultralytics documents, the folder its data.yaml names for that split (`YAML_SPLITS`)."""
    own = split_dir / "images"
    if own.is_dir():
        return own
    named = yaml_split(split_dir.parent, split_dir.name)
    return named if named is not None else own


def yaml_split(domain_dir: Path, split: str) -> Path | None:
    """The images folder `<domain>/data.yaml` names for `split` (None where it names none). Entries resolve from
    `path:` as Ultralytics resolves them, but must stay inside the domain folder; a `path:` that leads elsewhere
    (where the dataset was made) is ignored: the folder holding data.yaml is the dataset."""
    spec_path = domain_dir / "data.yaml"
    spec = read_yaml(spec_path) if spec_path.is_file() else None
    if not isinstance(spec, dict):
        return None
    key = next((k for k in YAML_SPLITS.get(split, (split,)) if spec.get(k)), None)
    if key is None:
        return None
    entry, root = spec[key], domain_dir.resolve()
    if not isinstance(entry, str) or entry.endswith(".txt"):
        raise DatasetFileError(f"{spec_path}: `{key}: {entry}` is not one folder of images; name one, relative to the dataset "
                               f"(e.g. {key}: images/{key}); lists and .txt image lists are not read")
    base = (root / str(spec["path"])).resolve() if spec.get("path") else root
    if not base.is_dir() or not base.is_relative_to(root):
        base = root
    folder = (base / entry).resolve()
    if not folder.is_relative_to(root):
        raise DatasetFileError(f"{spec_path}: `{key}: {entry}` leads to {folder}, outside the domain folder {domain_dir}; "
                               f"keep the dataset's folders inside it (e.g. {key}: images/{key})")
    return folder


def labels_dir(images: Path) -> Path:
    """Where Ultralytics looks for the labels of the images in `images`: the path with its last `images` made `labels`."""
    parts = images.parts
    last = max((i for i, part in enumerate(parts) if part == "images"), default=None)
    return Path(*parts[:last], "labels", *parts[last + 1:]) if last is not None else images.parent / "labels"


def image_files(split_dir: Path) -> list[Path]:
    folder = images_dir(split_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder (a detection split holds images/ and labels/, or data.yaml names its folder)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"{folder}: no images found")
    refuse_links_outside(files, folder)
    refuse_links_outside([label for label in map(label_file, files) if label.exists()], labels_dir(folder))
    return files


def label_file(image: Path) -> Path:
    return labels_dir(image.parent) / f"{image.stem}.txt"


def _read(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.Resampling.BILINEAR)
        pixels = np.asarray(img, dtype=np.uint8)
    labels = label_file(path)
    rows = np.loadtxt(labels, ndmin=2, dtype=np.float64) if labels.exists() and labels.stat().st_size else np.zeros((0, 5))
    return pixels, rows


def load_detection_split(split_dir: str | Path, image_size: int, classes: tuple[str, ...]) -> DetectionSet:
    """Decode a YOLO-format split at `image_size`; boxes come back in pixels of the resized image."""
    split_dir = Path(split_dir)
    files = image_files(split_dir)
    with ThreadPoolExecutor(max_workers=min(8, env.usable_cpus())) as pool:
        decoded = list(pool.map(lambda p: _read(p, image_size), files))
    images = torch.from_numpy(np.stack([pixels for pixels, _ in decoded])).permute(0, 3, 1, 2).contiguous()
    tables = [np.column_stack([np.full(len(rows), i), rows]) for i, (_, rows) in enumerate(decoded) if len(rows)]
    table = torch.from_numpy(np.concatenate(tables)).float() if tables else torch.zeros((0, 6))
    cls, cx, cy, w, h = (table[:, k] for k in range(1, 6))
    if len(table) and (cls.min() < 0 or cls.max() >= len(classes)):
        raise ValueError(f"{labels_dir(images_dir(split_dir))}: class ids must lie in 0..{len(classes) - 1} (the names in data.yaml)")
    xyxy = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).clamp(0, 1) * image_size
    boxes = torch.cat([table[:, :2], xyxy], 1)
    return DetectionSet(images, boxes, classes, tuple(str(p) for p in files))


def stage_yolo_dataset(splits: dict[str, Path | list[Path]], classes: tuple[str, ...], dest: Path) -> Path:
    """A YOLO dataset folder for one training run: hard links (or copies) of each split's images and
    labels under `dest` (a split may join several folders), and a `data.yaml` naming them. Training
    tools write label caches beside the labels; staging keeps those writes out of the versioned data."""
    if dest.exists():
        shutil.rmtree(dest)
    spec: dict = {"path": str(dest.resolve())}
    for name, sources in splits.items():
        parts = sources if isinstance(sources, list) else [sources]
        folders = [f"{name}/{i}" if len(parts) > 1 else name for i in range(len(parts))]
        for folder, source in zip(folders, parts, strict=True):
            for kind in ("images", "labels"):
                (dest / folder / kind).mkdir(parents=True)
            for image in image_files(source):
                link_or_copy(image, dest / folder / "images" / image.name)
                if label_file(image).exists():
                    link_or_copy(label_file(image), dest / folder / "labels" / label_file(image).name)
        spec[name] = [f"{folder}/images" for folder in folders] if len(parts) > 1 else f"{name}/images"
    spec["names"] = dict(enumerate(classes))
    path = dest / "data.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def link_or_copy(source: Path, dest: Path) -> None:
    """A hard link to `source` at `dest`, or a copy where links cannot be made (another file system)."""
    try:
        os.link(source, dest)
    except OSError:
        shutil.copyfile(source, dest)

"""Batch prediction: a registered (or local) classifier over a folder of images, written to a CSV.

Each file is decoded exactly as training decoded its images (`folders.decode_image`: the model's
image size and `data.window`), so the classes and scores are those evaluation would give. Files
decode on a thread pool a chunk ahead of the model, and only a few chunks are ever in memory, so
a folder of any size streams through. Nothing is written unless every file decodes: the CSV
appears whole, or not at all.
"""

from __future__ import annotations

import csv
import logging
import os
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from adaptflow.config import WindowConfig
from adaptflow.data.folders import IMAGE_SUFFIXES, decode_image
from adaptflow.errors import UserError
from adaptflow.io import atomic_write
from adaptflow.models import load_checkpoint
from adaptflow.train import predict, resolve_device

log = logging.getLogger(__name__)

COLUMNS = ("path", "class", "score")


class PredictError(UserError, ValueError):
    """The images or the model cannot be predicted on; nothing was written."""


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder` (any depth), in path order; hidden files and folders are skipped."""
    if not folder.is_dir():
        raise PredictError(f"{folder}: no such folder; give the folder of images to predict")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise PredictError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or below it")
    return files


def _decoded(files: list[Path], size: int, window: WindowConfig | None, chunk: int) -> Iterator[torch.Tensor]:
    """uint8 N x 3 x size x size per chunk of `files`, the next chunk decoding while the caller uses this one."""

    def decode(path: Path) -> np.ndarray:
        try:
            return decode_image(path, size, window)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
            raise PredictError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc}); remove or re-export it. "
                               "No predictions were written") from None

    def stack(futures: list[Future]) -> torch.Tensor:
        return torch.from_numpy(np.stack([f.result() for f in futures])).permute(0, 3, 1, 2)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pending: deque[list[Future]] = deque()
        for start in range(0, len(files), chunk):
            pending.append([pool.submit(decode, p) for p in files[start : start + chunk]])
            if len(pending) == 2:
                yield stack(pending.popleft())
        while pending:
            yield stack(pending.popleft())


def predict_folder(model_path: str | Path, folder: str | Path, output: str | Path, batch_size: int = 256,
                   device: str = "auto") -> Counter[str]:
    """Classify every image under `folder` with the classifier at `model_path`; write `output` (CSV: the path relative
    to `folder`, the class, its probability) and return how many images each class got."""
    folder, output = Path(folder), Path(output)
    files = image_files(folder)
    try:
        model, meta = load_checkpoint(model_path)
    except ValueError as exc:
        raise PredictError(f"{exc}; `adaptflow predict` takes a classifier (a detector's registered pyfunc predicts boxes)") from None
    window = WindowConfig.model_validate(meta["window"]) if meta.get("window") else None
    classes, dev = meta["classes"], str(resolve_device(device))
    counts: Counter[str] = Counter()
    with atomic_write(output) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        done = 0
        for images in _decoded(files, meta["image_size"], window, batch_size):
            score, index = predict(model, images, batch_size, dev).softmax(1).max(1)
            names = [classes[i] for i in index.tolist()]
            writer.writerows(zip((p.relative_to(folder).as_posix() for p in files[done : done + len(images)]), names,
                                 (f"{s:.6f}" for s in score.tolist()), strict=True))
            counts.update(names)
            done += len(images)
    log.info("predicted %d images from %s into %s", done, folder, output)
    return counts

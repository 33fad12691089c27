"""Classifying a folder of images into a CSV: an adaptflow classifier (with the domain check against a reference), or its ONNX export."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import torch

from adaptflow.console import progress
from adaptflow.data.folders import image_files
from adaptflow.data.pixels import recorded_window
from adaptflow.errors import PredictError
from adaptflow.io import atomic_write
from adaptflow.models import load_checkpoint
from adaptflow.predict.common import (CHECK_IMAGES, CHECK_MIN_IMAGES, COLUMNS, Prediction, decoded, domain_check,
                                      onnx_session, progress_chunks)
from adaptflow.training import predict_with_features, resolve_device

log = logging.getLogger(__name__)


def predict_folder(model_path: str | Path, folder: str | Path, output: str | Path, batch_size: int = 256,
                   device: str = "auto", reference: Path | None = None) -> Prediction:
    """Classify every image under `folder` with the classifier at `model_path` and write `output` (CSV: the path relative
    to `folder`, the class, its probability). With `reference` (a `<split>/<class>/` folder of the model's classes,
    such as the target test split), check whether the folder's images look like it."""
    from adaptflow.data.folders import load_image_folder, scan_folder

    folder, output = Path(folder), Path(output)
    files = image_files(folder)
    try:
        model, meta = load_checkpoint(model_path)
    except ValueError as exc:
        raise PredictError(f"{exc}; `adaptflow predict` takes a classifier (a detector's registered pyfunc predicts boxes)") from None
    window = recorded_window(meta)
    classes, dev = meta["classes"], str(resolve_device(device))
    if reference is not None:  # first: a reference that does not load stops the run before anything is written
        known = load_image_folder(reference, meta["image_size"], classes, window)
        predicted = {p.resolve() for p in files}  # a set compared with itself would say nothing: its own images are left out
        others = torch.tensor([i for i, p in enumerate(scan_folder(reference, classes)[0]) if p.resolve() not in predicted], dtype=torch.long)
        pick = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:CHECK_IMAGES]].sort().values
        if len(pick) < CHECK_MIN_IMAGES:
            reference = None
        else:
            ref_logits, ref_features = predict_with_features(model, known.images[pick], batch_size, dev)
    sampled = torch.zeros(len(files), dtype=torch.bool)  # the images whose features the domain check keeps
    sampled[torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:CHECK_IMAGES]] = True
    result, kept, total_score = Prediction(), [], 0.0
    with atomic_write(output) as tmp, open(tmp, "w", newline="") as fh, progress(len(files), "predict") as advance:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        done = 0
        for images in decoded(files, meta["image_size"], window, batch_size):
            logits, features = predict_with_features(model, images, batch_size, dev)
            score, index = logits.softmax(1).max(1)
            names = [classes[i] for i in index.tolist()]
            writer.writerows(zip((p.relative_to(folder).as_posix() for p in files[done : done + len(images)]), names,
                                 (f"{s:.6f}" for s in score.tolist()), strict=True))
            result.counts.update(names)
            total_score += float(score.sum())
            kept.append(features[sampled[done : done + len(images)]])
            done += len(images)
            advance(len(images))
    result.mean_score = total_score / done
    log.info("predicted %d images from %s into %s", done, folder, output)
    if reference is not None:
        result.check = domain_check(torch.cat(kept), ref_features, str(reference), float(ref_logits.softmax(1).max(1).values.mean()))
    return result


def predict_onnx_classifier(path: Path, task: dict, folder: Path, output: Path, batch_size: int) -> Prediction:
    files = image_files(folder)
    run, classes, size = onnx_session(path), task["classes"], int(task["input"]["shape"][-1])
    result, total = Prediction(), 0.0
    with atomic_write(output) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        done = 0
        for images in progress_chunks(decoded(files, size, None, batch_size), len(files)):
            score, index = torch.from_numpy(run(images)).softmax(1).max(1)
            names = [classes[i] for i in index.tolist()]
            writer.writerows(zip((p.relative_to(folder).as_posix() for p in files[done : done + len(images)]), names,
                                 (f"{s:.6f}" for s in score.tolist()), strict=True))
            result.counts.update(names)
            total += float(score.sum())
            done += len(images)
    result.mean_score = total / done
    return result

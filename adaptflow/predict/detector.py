"""Detecting objects in a folder of images: boxes into a CSV or JSON, drawn on copies, and the domain check on backbone features."""

from __future__ import annotations

import csv
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from adaptflow.data.folders import image_files
from adaptflow.errors import PredictError
from adaptflow.io import atomic_write
from adaptflow.predict.common import (CHECK_IMAGES, CHECK_MIN_IMAGES, Prediction, decoded, domain_check,
                                      onnx_session, progress_chunks)
from adaptflow.training import resolve_device

log = logging.getLogger(__name__)

#: A detector's table: one row per box, in the pixels of the image file as it is on disk.
DETECTION_COLUMNS = ("path", "class", "score", "x1", "y1", "x2", "y2")
#: Boxes scoring below this are not written (the registered pyfunc's default too).
DEFAULT_CONF = 0.25


def _sizes(files: list[Path]) -> torch.Tensor:
    """(width, height) of each image file, read from its header."""
    from PIL import Image

    def size(path: Path) -> tuple[int, int]:
        with Image.open(path) as img:
            return img.size

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return torch.tensor(list(pool.map(size, files)), dtype=torch.float32)


def detector_features(model: torch.nn.Module, family: str, images: torch.Tensor, batch_size: int, device: str) -> torch.Tensor:
    """The backbone's last feature map, averaged over space (N x C): what the domain check compares for a detector."""
    from adaptflow.training import resolve_device

    dev = resolve_device(device)
    model = model.to(dev).eval()
    pooled: list[torch.Tensor] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(dev).float().div_(255)
            if family == "yolo":
                captured: list[torch.Tensor] = []
                hook = model.model[9 if len(model.model) > 9 else -2].register_forward_hook(lambda m, i, o: captured.append(o))
                try:
                    model(x)
                finally:
                    hook.remove()
                feature = captured[0]
            else:
                feature = list(model.backbone(model.transform(list(x))[0].tensors).values())[-1]
            pooled.append(feature.float().mean((2, 3)).cpu())
    return torch.cat(pooled)


def predict_detections(model_path: str | Path, folder: str | Path, output: str | Path, *, batch_size: int = 64, device: str = "auto",
                       reference: Path | None = None, conf: float = DEFAULT_CONF, save_images: Path | None = None) -> Prediction:
    """Detect objects in every image under `folder` with an adaptflow detector (or a YOLO `adaptflow export` wrote to
    ONNX) and write `output`: CSV, or JSON for a `.json` name, one row per box scoring `conf` or more, its box in the
    pixels of the image file. `save_images` gets a copy of each image with its boxes drawn. With `reference` (the
    target's test split, `images/` inside), the domain check compares the folder's images with it on the backbone's features."""
    from adaptflow.detection.models import load_detector, predict

    folder, output = Path(folder), Path(output)
    files = image_files(folder)
    if Path(model_path).suffix == ".onnx":
        task = json.loads(Path(f"{model_path}.json").read_text())
        if task["family"] != "yolo":
            raise PredictError(f"{model_path}: predict takes exported classifiers and YOLO models; predict with the registered "
                               "Faster R-CNN instead")
        run, classes, size, model, meta = onnx_session(Path(model_path)), tuple(task["classes"]), int(task["input"]["shape"][-1]), None, task
        reference = None
    else:
        try:
            model, meta = load_detector(model_path)
        except ValueError as exc:
            raise PredictError(str(exc)) from None
        classes, size = meta["classes"], meta["image_size"]
        if size is None:
            raise PredictError(f"{model_path}: an Ultralytics file records no image size for adaptflow; predict with the registered "
                               "model (its model.pt) or a run folder")
    dev = str(resolve_device(device))
    if reference is not None:  # first: a reference that does not load stops the run before anything is written
        ref_files, ref_images = reference_images(reference, size)
        predicted = {p.resolve() for p in files}
        keep = [i for i, p in enumerate(ref_files) if p.resolve() not in predicted]
        pick = torch.tensor(keep, dtype=torch.long)[torch.randperm(len(keep), generator=torch.Generator().manual_seed(0))[:CHECK_IMAGES]]
        reference = reference if len(pick) >= CHECK_MIN_IMAGES else None
    sizes = _sizes(files)
    sampled = torch.zeros(len(files), dtype=torch.bool)
    sampled[torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:CHECK_IMAGES]] = True
    result, kept, rows, total = Prediction(), [], [], 0.0
    done = 0
    for images in progress_chunks(decoded(files, size, None, batch_size), len(files)):
        if model is None:
            outputs = _yolo_boxes(run(images), conf, size)
        else:
            outputs = predict(model, meta["arch"], images, batch_size, dev)
            if reference is not None:
                kept.append(detector_features(model, meta["family"], images[sampled[done : done + len(images)]], batch_size, dev))
        for i, out in enumerate(outputs):
            keep_box = out["scores"] >= conf
            scale = torch.cat([sizes[done + i], sizes[done + i]]) / size
            for box, score, label in zip((out["boxes"][keep_box] * scale).tolist(), out["scores"][keep_box].tolist(),
                                         out["labels"][keep_box].tolist(), strict=True):
                rows.append((files[done + i].relative_to(folder).as_posix(), classes[label], round(score, 6), *(round(v, 2) for v in box)))
                result.counts[classes[label]] += 1
                total += score
        done += len(images)
    with atomic_write(output) as tmp:
        if output.suffix.lower() == ".json":
            tmp.write_text(json.dumps([dict(zip(DETECTION_COLUMNS, row, strict=True)) for row in rows], indent=1) + "\n")
        else:
            with open(tmp, "w", newline="") as fh:
                csv.writer(fh).writerows([DETECTION_COLUMNS, *rows])
    result.mean_score = total / max(1, len(rows))
    if save_images is not None:
        draw_boxes(folder, rows, save_images, files)
    log.info("%d boxes in %d images from %s into %s", len(rows), done, folder, output)
    if reference is not None:
        ref = detector_features(model, meta["family"], ref_images[pick], batch_size, dev)
        result.check = domain_check(torch.cat(kept), ref, str(reference), float("nan"))
    return result


def reference_images(split: Path, size: int) -> tuple[list[Path], torch.Tensor]:
    """The images of a detection split (`images/` inside it) decoded at `size`, through the decode cache that image folders
    use (`folders.load_image_folder`: content-addressed, memory-mapped), so a second check decodes nothing."""
    from adaptflow import env
    from adaptflow.data.folders import _content_key

    folder = split / "images" if (split / "images").is_dir() else split
    files = image_files(folder)
    cached = env.cache_dir() / "images" / f"detection-{_content_key(folder, files, [0] * len(files), size, None)}.pt"
    if cached.exists():
        return files, torch.load(cached, weights_only=True, mmap=True)["images"]
    images = torch.cat(list(decoded(files, size, None, 256)))
    with atomic_write(cached) as tmp:
        torch.save({"images": images}, tmp)
    return files, images


def _yolo_boxes(raw: np.ndarray, conf: float, size: int) -> list[dict[str, torch.Tensor]]:
    """Ultralytics' raw head output (N x (4 + classes) x anchors) as boxes, after its non-maximum suppression."""
    from adaptflow.detection import yolo

    yolo.ultralytics()
    from ultralytics.utils.nms import non_max_suppression

    return [{"boxes": d[:, :4].clamp(0, size), "scores": d[:, 4], "labels": d[:, 5].long()}
            for d in non_max_suppression(torch.from_numpy(raw), conf, 0.7, max_det=100)]


def draw_boxes(folder: Path, rows: list[tuple], dest: Path, files: list[Path]) -> None:
    """A copy of every image under `dest` (the same relative paths) with its boxes and their class and score drawn."""
    from PIL import Image, ImageDraw

    by_image: dict[str, list[tuple]] = {}
    for row in rows:
        by_image.setdefault(row[0], []).append(row)
    for path in files:
        name = path.relative_to(folder).as_posix()
        with Image.open(path) as img:
            canvas = img.convert("RGB")
        pen = ImageDraw.Draw(canvas)
        for _, label, score, *box in by_image.get(name, []):
            pen.rectangle(box, outline=(255, 64, 0), width=max(1, round(min(canvas.size) / 100)))
            pen.text((box[0], box[1] - 11 if box[1] >= 11 else box[3] + 1), f"{label} {score:.2f}", fill=(255, 64, 0))  # beside the box
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(target)

"""Batch prediction: a registered (or local) classifier over a folder of images, written to a CSV.

Each file is decoded exactly as training decoded its images (`folders.decode_image`: the model's
image size and `data.window`), so the classes and scores are those evaluation would give. Files
decode on a thread pool a chunk ahead of the model, and only a few chunks are ever in memory, so
a folder of any size streams through. Nothing is written unless every file decodes: the CSV
appears whole, or not at all.

Given a reference (the target test split the model was measured on), a domain check says whether
the folder's images look like it: a linear probe on the model's own features learns to tell a
sample of each apart, and its cross-validated ROC AUC is reported (0.5: no telling them apart).
Scores cannot say this: a classifier stays confident on images from another domain (the demo's
champion gives MNIST-M digits a mean score of 0.91 and gets 27% of them right).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adaptflow import env
from adaptflow.config import WindowConfig
from adaptflow.console import progress
from adaptflow.data.folders import IMAGE_SUFFIXES, decode_image
from adaptflow.data.pixels import recorded_window
from adaptflow.errors import UserError
from adaptflow.io import atomic_write
from adaptflow.models import load_checkpoint
from adaptflow.training import predict_with_features, resolve_device

log = logging.getLogger(__name__)

COLUMNS = ("path", "class", "score")
#: Images per side the domain check compares (a seeded sample of each), and the fewest it needs.
CHECK_IMAGES, CHECK_MIN_IMAGES = 1000, 20
#: A cross-validated AUC from here up says the folder differs from the reference (chance gives
#: 0.5 +- about 0.05 with a few hundred images a side).
DIFFERS_AUC = 0.75


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

    with ThreadPoolExecutor(max_workers=min(8, env.usable_cpus())) as pool:
        pending: deque[list[Future]] = deque()
        for start in range(0, len(files), chunk):
            pending.append([pool.submit(decode, p) for p in files[start : start + chunk]])
            if len(pending) == 2:
                yield stack(pending.popleft())
        while pending:
            yield stack(pending.popleft())


@dataclass
class Prediction:
    """What `predict_folder` found: images per class, the mean score, and the domain check against the
    reference (None without one, or with too few images)."""

    counts: Counter[str] = field(default_factory=Counter)
    mean_score: float = 0.0
    check: DomainCheck | None = None


@dataclass(frozen=True)
class DomainCheck:
    """How well a linear probe on the model's features tells the folder's images from the reference's."""

    reference: str
    images: int  # per side
    auc: float
    auc_std: float
    reference_mean_score: float

    @property
    def differs(self) -> bool:
        return self.auc >= DIFFERS_AUC

    def __str__(self) -> str:
        verdict = ("these images differ from the domain the model was measured on, so its accuracy on them is unknown: label some "
                   "(adaptflow data add) or adapt to them (as the target's unlabeled split, with finetune.methods)"
                   if self.differs else "they look alike")
        return (f"domain check against {self.reference} ({self.images} images a side): a linear probe on the model's features "
                f"tells them apart with AUC {self.auc:.2f} +- {self.auc_std:.2f} (0.5: not at all): {verdict}")


def domain_check(features: torch.Tensor, reference: torch.Tensor, name: str, reference_mean_score: float, seed: int = 0) -> DomainCheck | None:
    """The 5-fold cross-validated ROC AUC of a logistic regression telling `features` (N x D) from `reference` (M x D),
    on equal seeded samples of both; None when either has fewer than CHECK_MIN_IMAGES."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(features), len(reference), CHECK_IMAGES)
    if n < CHECK_MIN_IMAGES:
        return None
    g = torch.Generator().manual_seed(seed)
    pick = [t[torch.randperm(len(t), generator=g)[:n]].numpy() for t in (reference, features)]
    x, y = np.concatenate(pick), np.repeat([0, 1], n)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    auc = cross_val_score(probe, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), scoring="roc_auc")
    return DomainCheck(name, n, float(auc.mean()), float(auc.std()), reference_mean_score)


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
        for images in _decoded(files, meta["image_size"], window, batch_size):
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


# --- detectors, and exported files -------------------------------------------------------------------------

#: A detector's table: one row per box, in the pixels of the image file as it is on disk.
DETECTION_COLUMNS = ("path", "class", "score", "x1", "y1", "x2", "y2")
#: Boxes scoring below this are not written (the registered pyfunc's default too).
DEFAULT_CONF = 0.25


def model_kind(path: str | Path) -> str:
    """"classifier", "detector" or "onnx" (a file `adaptflow export` wrote, with its JSON beside it) for a model file."""
    path = Path(path)
    if path.suffix == ".onnx":
        if not path.with_name(path.name + ".json").is_file():
            raise PredictError(f"{path}: no {path.name}.json beside it; predict with ONNX files `adaptflow export` wrote")
        return "onnx"
    from adaptflow.models import load_weights_only

    if not path.is_file():
        raise PredictError(f"{path}: no such model file; give models:/NAME@ALIAS, a run folder or a model file")
    blob = load_weights_only(path, False, "Predict with a model file adaptflow saved (weights only), or a registered model")
    return "detector" if isinstance(blob, dict) and blob.get("format", "").startswith("adaptflow-detector") else "classifier"


def predict_any(model_path: str | Path, folder: str | Path, output: str | Path, *, batch_size: int = 64, device: str = "auto",
                reference: Path | None = None, conf: float = DEFAULT_CONF, save_images: Path | None = None) -> Prediction:
    """`predict_folder` for a classifier; `predict_detections` for a detector or an exported YOLO; an exported classifier
    (ONNX) classifies as its PyTorch model does, without the domain check (it has no features to compare)."""
    kind = model_kind(model_path)
    if kind == "onnx":
        task = json.loads(Path(f"{model_path}.json").read_text())
        if task["task"] == "text_classification":
            raise PredictError(f"{model_path}: an exported text classifier; give it a CSV or JSONL file with a text column")
        if task["task"] == "classification":
            return _predict_onnx_classifier(Path(model_path), task, Path(folder), Path(output), batch_size)
        kind = "detector"
    if kind == "detector":
        return predict_detections(model_path, folder, output, batch_size=batch_size, device=device, reference=reference,
                                  conf=conf, save_images=save_images)
    if save_images is not None:
        raise PredictError("--save-images draws a detector's boxes; a classifier has none")
    return predict_folder(model_path, folder, output, batch_size, device, reference)


def _onnx_session(path: Path):  # noqa: ANN202 - (run, description)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    step = None if isinstance(shape[0], str) else int(shape[0])  # a fixed batch (1) runs image by image
    dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32

    def run(images: torch.Tensor) -> np.ndarray:
        x = images.float().div(255).numpy().astype(dtype)
        chunks = [x] if step is None else [x[i : i + step] for i in range(0, len(x), step)]
        return np.concatenate([session.run(None, {name: c})[0] for c in chunks]).astype(np.float32)

    return run


def _predict_onnx_classifier(path: Path, task: dict, folder: Path, output: Path, batch_size: int) -> Prediction:
    files = image_files(folder)
    run, classes, size = _onnx_session(path), task["classes"], int(task["input"]["shape"][-1])
    result, total = Prediction(), 0.0
    with atomic_write(output) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        done = 0
        for images in _progress(_decoded(files, size, None, batch_size), len(files)):
            score, index = torch.from_numpy(run(images)).softmax(1).max(1)
            names = [classes[i] for i in index.tolist()]
            writer.writerows(zip((p.relative_to(folder).as_posix() for p in files[done : done + len(images)]), names,
                                 (f"{s:.6f}" for s in score.tolist()), strict=True))
            result.counts.update(names)
            total += float(score.sum())
            done += len(images)
    result.mean_score = total / done
    return result


def _progress(chunks: Iterator[torch.Tensor], files: int) -> Iterator[torch.Tensor]:
    """The chunks, with a progress bar of images on a terminal (none in logs)."""
    with progress(files, "predict") as advance:
        for chunk in chunks:
            yield chunk
            advance(len(chunk))


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
        run, classes, size, model, meta = _onnx_session(Path(model_path)), tuple(task["classes"]), int(task["input"]["shape"][-1]), None, task
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
    for images in _progress(_decoded(files, size, None, batch_size), len(files)):
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
    images = torch.cat(list(_decoded(files, size, None, 256)))
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

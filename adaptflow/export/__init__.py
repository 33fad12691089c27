"""Export a trained model to ONNX or TorchScript, checked against PyTorch on real images (or texts) before it is kept.

What is exported takes float32 images scaled to [0, 1], N x 3 x S x S (S: the size the model was
trained at), RGB, resized as training resized them: the normalisation is inside the graph. A
classifier returns logits; a YOLO detector returns Ultralytics' raw head output (N x (4 + classes) x
anchors, boxes as centre x, y, width, height in input pixels), to which non-maximum suppression
applies, as with any Ultralytics export (YOLO goes through Ultralytics' own exporter). Faster R-CNN
returns boxes, labels and scores of one image. A text classifier takes `input_ids` and `attention_mask`
(int64, N x L, any batch and length up to the tokenizer's `max_length`) and returns logits; the
tokenizer stays outside the graph and is written beside the export (NAME.tokenizer.json).

Before the file is kept, the exported model runs (ONNX Runtime for ONNX, torch.jit for TorchScript)
on a batch of real images (a text model: the first texts of its test split) and its outputs are compared with adaptflow's own inference: logits
within `LOGITS_TOLERANCE` (fp32), or boxes matched one to one at IoU >= `BOX_IOU` with the same
classes. A failed check writes nothing. A JSON file beside the export records its opset, input
shape, preprocessing, classes and the check; with a run to attach to (a registered model, a
registered run folder) both are logged as artifacts of the model version's run, under `exports/`.

One module per family (`classifier`, `text`, `detector`), each an exporter with one signature that returns
the export's description and check; `common` holds what they share. `export_model` is the one entry point
and sets the tolerance (`LOGITS_TOLERANCE`, or `HALF_TOLERANCE` for fp16).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptflow.export.classifier import ScaledInput, export_classifier
from adaptflow.export.common import BOX_IOU, CHECK_CONF, CHECK_TEXT_BATCH, FRCNN_OPSET, OPSET, ExportError
from adaptflow.export.detector import export_fasterrcnn, export_yolo, match_boxes
from adaptflow.export.text import TokenInput, export_text, tokens_of

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
#: Largest |logit difference| an fp32 export may show, per unit of the largest |logit| (at least 1); an fp16 export must
#: also keep every top-1 class, within HALF_TOLERANCE.
LOGITS_TOLERANCE = 1e-4
HALF_TOLERANCE = 5e-2
#: Real images each check runs on.
CHECK_IMAGES = 16
#: Real texts a text classifier's check runs on.
CHECK_TEXTS = 32


@dataclass(frozen=True)
class ModelSource:
    """A model to export: its file, where it came from, and the MLflow run its exports belong to (or None)."""

    path: Path
    uri: str
    run_id: str | None = None

    @property
    def name(self) -> str:
        """A file name for its exports: NAME-vVERSION for a registered model, the run folder's name, or the file's stem."""
        if self.uri.startswith("models:/"):
            name, version = self.uri.removeprefix("models:/").rsplit("/", 1)
            return f"{name}-v{version}"
        return Path(self.uri).name if Path(self.uri).is_dir() else self.path.stem


@dataclass(frozen=True)
class Exported:
    """An export that passed its check: the file, its description (JSON), and the run it was logged to."""

    path: Path
    metadata: Path
    check: dict[str, Any]
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def resolve_model(model: str, tracking_uri: str | None = None) -> ModelSource:
    """`models:/NAME@ALIAS` (or `/VERSION`), a run folder (its `finetune/model.pt`), or a model file."""
    from adaptflow.weights import fetch_pretrained

    if model.startswith("models:/"):
        from mlflow import MlflowClient

        ref = fetch_pretrained(model, tracking_uri=tracking_uri, field="MODEL")
        name, version = ref.uri.removeprefix("models:/").rsplit("/", 1)
        run_id = MlflowClient(tracking_uri).get_model_version(name, version).run_id
        return ModelSource(Path(ref.path), ref.uri, run_id)
    path = Path(model)
    if path.is_dir():
        file = path / "finetune" / "model.pt"
        if not file.is_file():
            raise ExportError(f"{path}: a folder without finetune/model.pt; give a run folder (runs/<name>), a model file, "
                              "or models:/NAME@champion")
        registration = path / "register" / "registration.json"
        run_id = json.loads(registration.read_text()).get("run_id") if registration.is_file() else None
        return ModelSource(file, str(path), run_id)
    if not path.is_file():
        raise ExportError(f"{model}: no such file or folder; give models:/NAME@ALIAS, a run folder or a model file")
    return ModelSource(path, str(path), None)


def recorded_test_split(source: ModelSource, tracking_uri: str | None = None) -> Path | None:
    """The target test split the model was measured on, as its run recorded it (`data.root`, `data.target` among the MLflow
    run's params, or a run folder's config.yaml); None when nothing records it."""
    data: dict[str, Any] = {}
    config = source.path.parent.parent / "config.yaml"
    if Path(source.uri).is_dir() and config.is_file():
        import yaml

        data = (yaml.safe_load(config.read_text()) or {}).get("data", {})
    elif source.run_id:
        from mlflow import MlflowClient

        params = MlflowClient(tracking_uri).get_run(source.run_id).data.params
        data = {key: params.get(f"data.{key}") for key in ("root", "target")}
    if not data.get("root") or not data.get("target"):
        return None
    from adaptflow import env

    return env.project_path(data["root"]) / data["target"] / "test"


def read_model(path: Path) -> tuple[str, nn.Module, dict[str, Any]]:
    """("classifier" | "yolo" | "fasterrcnn" | "text", the model in eval mode, its metadata) for an adaptflow model file."""
    from adaptflow.detection.models import CHECKPOINT_FORMAT as DETECTOR, load_detector
    from adaptflow.models import CHECKPOINT_FORMAT as CLASSIFIER, load_checkpoint, load_weights_only
    from adaptflow.text.encoder import TEXT_FORMAT, load_text_checkpoint

    blob = load_weights_only(path, False, "Export the models adaptflow writes (a run's finetune/model.pt, or a registered version)")
    kind = blob.get("format") if isinstance(blob, dict) else None
    if kind == CLASSIFIER:
        model, meta = load_checkpoint(path)
        return "classifier", model.eval(), meta
    if kind == DETECTOR:
        model, meta = load_detector(path)
        return meta["family"], model.eval(), meta
    if kind == TEXT_FORMAT:
        model, meta, _ = load_text_checkpoint(path)
        return "text", model.eval(), meta
    raise ExportError(f"{path}: not an adaptflow model file (a classifier, text classifier or detector checkpoint); export a run's finetune/model.pt "
                      "or a registered version")


def check_images(folder: Path, size: int, window: Any = None, limit: int = CHECK_IMAGES) -> torch.Tensor:
    """The first `limit` images under `folder`, decoded as training decoded them: uint8 N x 3 x size x size."""
    from adaptflow.data.folders import decode_image, image_files

    files = image_files(folder)[:limit]
    return torch.from_numpy(np.stack([decode_image(p, size, window) for p in files])).permute(0, 3, 1, 2).contiguous()


def check_texts(split: Path, limit: int = CHECK_TEXTS) -> list[str]:
    """The first `limit` texts of `split`: a CSV or JSONL file with a text column, or a split's path without its suffix
    (`<domain>/test` -> test.csv or test.jsonl), read and checked as training reads splits."""
    from adaptflow.data.checks import DataValidationError, Report
    from adaptflow.text.data import TEXT_SUFFIXES, read_rows

    files = [split] if split.is_file() else [split.with_suffix(s) for s in TEXT_SUFFIXES if split.with_suffix(s).is_file()]
    if not files:
        raise ExportError(f"{split}: no {split.name}.csv or {split.name}.jsonl to check the text export on; give --images FILE "
                          "(a CSV or JSONL file with a text column)")
    report = Report()
    rows = read_rows(files[0], report, labeled=False)
    if not report.ok:
        raise DataValidationError(report, "found before exporting; nothing was written")
    if not rows.texts:
        raise ExportError(f"{files[0]}: no texts to check the export on; give --images FILE with some")
    return rows.texts[:limit]


def export_model(source: ModelSource, fmt: str, images: Path, output: Path | None = None, *, half: bool = False,
                 dynamic: bool = False, tracking_uri: str | None = None) -> Exported:
    """Export `source` as `fmt`, check it on the images under `images` (the target's test split; a text model: the texts
    of that split's file), write it with its JSON (a text model: and its tokenizer), and log them to the source's run
    when it has one."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    kind, model, meta = read_model(source.path)
    if half and kind == "text":
        raise ExportError("--half: a text classifier exports in fp32 only; export without --half")
    if half and not torch.cuda.is_available() and kind != "classifier":
        raise ExportError(f"--half: a {kind} exports in fp16 on a CUDA GPU only (Ultralytics and torchvision's detection ops "
                          "run fp16 there); export without --half here, or on a GPU machine")
    output = Path(output or Path("exports") / f"{source.name}{'-fp16' if half else ''}{FORMATS[fmt]}")
    if output.suffix != FORMATS[fmt]:
        output = output.with_suffix(FORMATS[fmt])
    if kind == "text":
        batch: Any = check_texts(images)
    else:
        from adaptflow.data.pixels import recorded_window

        batch = check_images(images, int(meta["image_size"]), recorded_window(meta))
    task = {"classifier": "classification", "text": "text_classification"}.get(kind, "detection")
    tokenizer = output.with_name(f"{output.stem}.tokenizer.json") if kind == "text" else None
    with tempfile.TemporaryDirectory(prefix="adaptflow-export-") as tmp:
        staged = Path(tmp) / output.name
        exporter = {"classifier": export_classifier, "yolo": export_yolo, "fasterrcnn": export_fasterrcnn, "text": export_text}[kind]
        info = exporter(model, meta, fmt, staged, batch, half=half, dynamic=dynamic, tolerance=HALF_TOLERANCE if half else LOGITS_TOLERANCE)
        description = {
            "format": fmt, "file": output.name, "model": source.uri, "task": task,
            "family": kind, "arch": meta["arch"], "classes": list(meta["classes"]), "precision": "fp16" if half else "fp32",
            **info, **({"tokenizer": tokenizer.name} if tokenizer else {}),
            "check": {**info["check"], "texts" if tokenizer else "images": str(images), "count": len(batch)},
            "versions": _versions(fmt, kind),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staged, output)
    if tokenizer:  # the tokenizer as `tokenizers.Tokenizer.from_file` reads it; truncation and padding as training set them
        tokenizer.write_text(tokens_of(meta).tokenizer.to_str())
    metadata = output.with_name(output.name + ".json")
    metadata.write_text(json.dumps(description, indent=2) + "\n")
    if source.run_id:
        from adaptflow.config import TrackingConfig
        from adaptflow.tracking.store import client

        c = client(TrackingConfig(uri=tracking_uri))
        for path in (output, metadata, *([tokenizer] if tokenizer else [])):
            c.log_artifact(source.run_id, str(path), f"exports/{fmt}")
    log.info("exported %s to %s (%s)", source.uri, output, description["check"]["summary"])
    return Exported(output, metadata, description["check"], source.run_id)


def _versions(fmt: str, kind: str) -> dict[str, str]:
    import importlib.metadata as md

    names = ["torch", *(["onnx", "onnxruntime"] if fmt == "onnx" else []), *(["ultralytics"] if kind == "yolo" else []),
             *(["transformers", "tokenizers"] if kind == "text" else [])]
    return {name: md.version(name) for name in names}


__all__ = ["BOX_IOU", "CHECK_CONF", "CHECK_IMAGES", "CHECK_TEXTS", "CHECK_TEXT_BATCH", "FORMATS", "FRCNN_OPSET", "HALF_TOLERANCE",
           "LOGITS_TOLERANCE", "OPSET", "ExportError", "Exported", "ModelSource", "ScaledInput", "TokenInput", "check_images", "check_texts",
           "export_model", "match_boxes", "read_model", "recorded_test_split", "resolve_model"]

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

`classifier` and `detector` predict for each kind of model, `common` holds what they share (decoding,
the result, ONNX sessions, the domain check); `predict_any` picks one by the model file.
"""

from __future__ import annotations

import json
from pathlib import Path

from adaptflow.data.folders import image_files
from adaptflow.errors import PredictError
from adaptflow.predict.classifier import predict_folder, predict_onnx_classifier
from adaptflow.predict.common import CHECK_IMAGES, CHECK_MIN_IMAGES, COLUMNS, DIFFERS_AUC, DomainCheck, Prediction, domain_check
from adaptflow.predict.detector import (DEFAULT_CONF, DETECTION_COLUMNS, detector_features, draw_boxes, predict_detections,
                                        reference_images)


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
            return predict_onnx_classifier(Path(model_path), task, Path(folder), Path(output), batch_size)
        kind = "detector"
    if kind == "detector":
        return predict_detections(model_path, folder, output, batch_size=batch_size, device=device, reference=reference,
                                  conf=conf, save_images=save_images)
    if save_images is not None:
        raise PredictError("--save-images draws a detector's boxes; a classifier has none")
    return predict_folder(model_path, folder, output, batch_size, device, reference)


__all__ = ["CHECK_IMAGES", "CHECK_MIN_IMAGES", "COLUMNS", "DEFAULT_CONF", "DETECTION_COLUMNS", "DIFFERS_AUC", "DomainCheck", "Prediction",
           "PredictError", "detector_features", "domain_check", "draw_boxes", "image_files", "model_kind", "predict_any", "predict_detections",
           "predict_folder", "reference_images"]

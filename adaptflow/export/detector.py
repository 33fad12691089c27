"""Exporting a detector: YOLO through Ultralytics' own exporter, Faster R-CNN through torch's; boxes matched against PyTorch's."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptflow.export.common import BOX_IOU, CHECK_CONF, FRCNN_OPSET, ExportError, preprocessing, quiet, runner

log = logging.getLogger(__name__)


def match_boxes(expected: list[dict[str, torch.Tensor]], got: list[dict[str, torch.Tensor]], iou: float = BOX_IOU) -> tuple[int, int]:
    """(boxes matched, boxes in all): each image's boxes paired one to one, same class, by IoU >= `iou` (greedy, best first)."""
    from torchvision.ops import box_iou

    matched = total = 0
    for a, b in zip(expected, got, strict=True):
        total += max(len(a["boxes"]), len(b["boxes"]))
        if not len(a["boxes"]) or not len(b["boxes"]):
            continue
        overlap = box_iou(a["boxes"], b["boxes"]) * (a["labels"][:, None] == b["labels"][None, :])
        while True:
            best = overlap.max()
            if best < iou:
                break
            i, j = divmod(int(overlap.argmax()), overlap.shape[1])
            matched += 1
            overlap[i, :] = 0
            overlap[:, j] = 0
    return matched, total


def box_check(fmt: str, expected: list[dict[str, torch.Tensor]], got: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    matched, total = match_boxes(expected, got)
    summary = f"{matched} of {total} boxes matched (IoU >= {BOX_IOU}, same class, score >= {CHECK_CONF}) on {len(expected)} images"
    if matched != total:
        raise ExportError(f"the {fmt} export does not match PyTorch: {summary}; nothing was written")
    if total == 0:
        log.warning("the model finds no box scoring %s or more on the check images: the export's check compared nothing", CHECK_CONF)
    return {"boxes": total, "matched": matched, "iou": BOX_IOU, "conf": CHECK_CONF, "summary": summary}


def kept(outputs: list[dict[str, torch.Tensor]], conf: float = CHECK_CONF) -> list[dict[str, torch.Tensor]]:
    return [{k: v[o["scores"] >= conf] for k, v in o.items()} for o in outputs]


def export_yolo(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, images: torch.Tensor, *, half: bool,
          dynamic: bool, tolerance: float) -> dict[str, Any]:
    from adaptflow.detection import yolo

    size = int(meta["image_size"])
    expected = kept(yolo.predict(model, images, len(images), "cpu", conf=CHECK_CONF))
    native = path.with_name("model.pt")
    yolo.save_ultralytics(native, model, arch=meta["arch"], classes=meta["classes"], image_size=size)
    ultralytics = yolo.ultralytics()
    options = {"simplify": False} if fmt == "onnx" else {}
    with quiet():
        made = Path(ultralytics.YOLO(str(native), task="detect").export(format=fmt, imgsz=size, half=half, dynamic=dynamic,
                                                                        device=0 if half else "cpu", batch=1, verbose=False, **options))
    shutil.move(made, path)
    from ultralytics.utils.nms import non_max_suppression

    run = runner(fmt, path, "cuda" if half else "cpu")
    x = images.float().div(255)
    raw = np.concatenate([run(x[i : i + 1].to(torch.float16 if half else torch.float32)).astype(np.float32) for i in range(len(x))])
    with torch.no_grad():  # the head's raw output too: a model that finds no box on the check images is still compared
        reference = model.float().eval()(x)[0].numpy()
    raw_diff = float(np.abs(raw - reference).max())
    raw_limit = tolerance * max(1.0, float(np.abs(reference).max()))
    if raw_diff > raw_limit:
        raise ExportError(f"the {fmt} export does not match PyTorch: its raw head output differs by up to {raw_diff:.2e} "
                          f"(limit {raw_limit:.2e}); nothing was written")
    got = []
    for det in non_max_suppression(torch.from_numpy(raw), CHECK_CONF, 0.7, max_det=100):
        got.append({"boxes": det[:, :4].clamp(0, size), "scores": det[:, 4], "labels": det[:, 5].long()})
    opset = None
    if fmt == "onnx":
        import onnx

        opset = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    shape = ["batch" if dynamic else 1, 3, "height" if dynamic else size, "width" if dynamic else size]
    return {"opset": opset, "input": {"name": "images", "shape": shape, "dtype": "float16" if half else "float32"},
            "output": {"name": "output0", "shape": [shape[0], 4 + len(meta["classes"]), "anchors"],
                       "meaning": "Ultralytics' raw head: cx, cy, w, h in input pixels, then one score per class; apply NMS "
                                  "(ultralytics.utils.nms.non_max_suppression, conf 0.25, iou 0.7)"},
            "preprocessing": preprocessing(meta, size), "ultralytics_weights": "model.pt of the registered version (YOLO(path) loads it)",
            "check": {**box_check(fmt, expected, got), "raw_max_abs_diff": raw_diff, "raw_limit": raw_limit}}


class _SingleImage(nn.Module):
    """A torchvision Faster R-CNN for one float image 1 x 3 x H x W: (boxes, labels, scores), labels from 0 as adaptflow counts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([images[0]])[0]
        return out["boxes"], out["labels"] - 1, out["scores"]


def export_fasterrcnn(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, images: torch.Tensor, *, half: bool,
                dynamic: bool, tolerance: float) -> dict[str, Any]:
    from adaptflow.detection import frcnn

    size = int(meta["image_size"])
    expected = kept(frcnn.predict(model, images, len(images), "cpu"))
    net = _SingleImage(model).eval()
    example = images[:1].float().div(255)
    try:
        with quiet(), torch.no_grad():
            if fmt == "onnx":
                torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=FRCNN_OPSET, input_names=["images"],
                                  output_names=["boxes", "labels", "scores"],
                                  dynamic_axes={"boxes": {0: "detections"}, "labels": {0: "detections"}, "scores": {0: "detections"}})
            else:
                torch.jit.script(model).save(str(path))
    except Exception as exc:  # noqa: BLE001 - any exporter failure is the refusal the user gets
        raise ExportError(f"Faster R-CNN does not export to {fmt} here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          "serve the registered model (mlflow models serve) instead") from None
    got = []
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for i in range(len(images)):
            boxes, labels, scores = session.run(None, {"images": images[i : i + 1].float().div(255).numpy()})
            got.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels).long(), "scores": torch.from_numpy(scores)})
    else:
        loaded = torch.jit.load(str(path))
        for i in range(len(images)):
            with torch.no_grad():
                out = loaded([images[i].float().div(255)])[1][0]
            got.append({"boxes": out["boxes"], "labels": out["labels"] - 1, "scores": out["scores"]})
    shape = [1, 3, size, size]
    return {"opset": FRCNN_OPSET if fmt == "onnx" else None, "input": {"name": "images", "shape": shape, "dtype": "float32"},
            "output": {"name": "boxes, labels, scores", "shape": [["detections", 4], ["detections"], ["detections"]],
                       "meaning": "xyxy boxes in input pixels, class indices (from 0), scores; NMS is inside the model"},
            "preprocessing": preprocessing(meta, size), "check": box_check(fmt, expected, kept(got))}

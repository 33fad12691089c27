"""YOLO networks: built from their YAML (no download), and run on images with Ultralytics' non-maximum suppression."""

from __future__ import annotations

import torch
from torch import nn

from adaptflow.detection.yolo.library import ultralytics

ARCHS = ("yolov8n", "yolov8s", "yolo11n", "yolo11s")


def build(arch: str, num_classes: int, head_width: int | None = None) -> nn.Module:
    """A freshly initialised YOLO of `arch` (from its YAML, no download) with `num_classes` outputs.

    Fine-tuning from a model with more classes keeps that model's wider classification branch
    (Ultralytics transfers it whole); `head_width` rebuilds a model of that shape to load into.
    """
    ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(f"{arch}.yaml", nc=num_classes, verbose=False)
    if head_width is not None and head_width != head_width_of(model):
        model.load(DetectionModel(f"{arch}.yaml", nc=head_width, verbose=False), verbose=False)
    model.names = {i: str(i) for i in range(num_classes)}
    return model


def head_width_of(model: nn.Module) -> int:
    """Channels of the classification branch of a YOLO's Detect head (it grows with the class count)."""
    return model.model[-1].cv3[0][-1].in_channels


def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: str, conf: float = 0.001, iou: float = 0.7,
            max_det: int = 100, multi_label: bool = False) -> list[dict[str, torch.Tensor]]:
    """Boxes (xyxy pixels), scores and class indices for uint8 images (N x 3 x H x W). The model moves
    to the device before inference mode, so that it can still be trained afterwards. `multi_label`: a box
    for every class scoring above `conf`, as Ultralytics' validator measures mAP (with max_det 300)."""
    ultralytics()
    from ultralytics.utils.nms import non_max_suppression

    from adaptflow.training import resolve_device

    dev = resolve_device(device)
    model = model.to(dev).eval()
    stride = int(max(model.stride.max().item(), 32))
    h, w = images.shape[-2:]
    pad = (0, (-w) % stride, 0, (-h) % stride)
    results: list[dict[str, torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.nn.functional.pad(images[start : start + batch_size].to(dev).float().div_(255), pad, value=114 / 255)
            out = model(x)
            for det in non_max_suppression(out[0] if isinstance(out, tuple | list) else out, conf, iou, multi_label=multi_label,
                                           max_det=300 if multi_label else max_det):
                det = det.float().cpu()
                det[:, 0:4:2] = det[:, 0:4:2].clamp(0, w)  # boxes stay inside the (unpadded) image
                det[:, 1:4:2] = det[:, 1:4:2].clamp(0, h)
                results.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
    return results

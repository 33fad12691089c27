"""Domain adaptation for detectors from unlabeled target images.

- AdaBN: the batch-norm statistics of the detector are re-estimated on target images (a
  cumulative average over every unlabeled image, not the training momentum); weights stay.
- Self-training: a teacher's confident boxes on unlabeled target images become labels; the
  student then trains on the labeled target split plus those pseudo-labeled images.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import torch
from torch import nn

from adaptflow.detection.data import DetectionSet, image_files, link_or_copy
from adaptflow.detection.models import family, predict

log = logging.getLogger(__name__)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, arch: str, images: torch.Tensor, batch_size: int = 32, device: str = "cpu") -> nn.Module:
    """Replace every batch-norm layer's running statistics by those of `images` (uint8 N x 3 x H x W)."""
    from adaptflow.training import resolve_device

    dev = resolve_device(device)
    model.to(dev)
    layers = batch_norms(model)
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average over all batches
    model.train()
    try:
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(dev).float().div_(255)
            if family(arch) == "yolo":
                model(x)
            else:  # Faster R-CNN: only its backbone has batch norm; its heads want targets in train mode
                batch, _ = model.transform(list(x.unbind(0)))
                model.backbone(batch.tensors)
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        model.eval()
    log.info("AdaBN: re-estimated %d batch-norm layers on %d target images", len(layers), len(images))
    return model


def pseudo_labels(model: nn.Module, arch: str, images: torch.Tensor, threshold: float, batch_size: int = 64,
                  device: str = "cpu") -> torch.Tensor:
    """Boxes the model scores at or above `threshold`, as a (M x 6) table `image, class, x1, y1, x2, y2`."""
    rows = []
    for i, out in enumerate(predict(model, arch, images, batch_size, device)):
        keep = out["scores"] >= threshold
        n = int(keep.sum())
        rows.append(torch.cat([torch.full((n, 1), float(i)), out["labels"][keep, None].float(), out["boxes"][keep]], 1))
    return torch.cat(rows) if rows else torch.zeros((0, 6))


def write_pseudo_split(source_split: Path, boxes: torch.Tensor, image_size: int, dest: Path) -> Path:
    """A YOLO split at `dest`: the images of `source_split` (linked) with the pseudo-labels as their labels.

    `boxes` are in pixels of images resized to `image_size`; YOLO labels are normalised, so they
    hold for the original files whatever their size. A split already at `dest` (a retried or
    repeated run) is replaced: no label of an earlier teacher survives.
    """
    files = image_files(source_split)
    if dest.exists():
        shutil.rmtree(dest)
    (dest / "images").mkdir(parents=True, exist_ok=True)
    (dest / "labels").mkdir(parents=True, exist_ok=True)
    xyxy = boxes[:, 2:] / image_size
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    size = xyxy[:, 2:] - xyxy[:, :2]
    owner = boxes[:, 0].long()
    for i, path in enumerate(files):
        link_or_copy(path, dest / "images" / path.name)
        mine = (owner == i).nonzero().flatten().tolist()
        lines = [f"{int(boxes[j, 1])} {centre[j, 0]:.6f} {centre[j, 1]:.6f} {size[j, 0]:.6f} {size[j, 1]:.6f}\n" for j in mine]
        (dest / "labels" / f"{path.stem}.txt").write_text("".join(lines))
    return dest


def pseudo_label_quality(pseudo: torch.Tensor, truth: DetectionSet) -> dict[str, float]:
    """Precision and recall of pseudo-boxes against the true boxes (IoU >= 0.5, same class), when
    the unlabeled split keeps its labels for diagnostics."""
    from torchvision.ops import box_iou

    matched, total_pseudo, total_true = 0, len(pseudo), len(truth.boxes)
    if total_pseudo and total_true:
        iou = box_iou(pseudo[:, 2:], truth.boxes[:, 2:])
        same = (pseudo[:, :1] == truth.boxes[:, 0][None]) & (pseudo[:, 1:2] == truth.boxes[:, 1][None])
        matched = int(((iou >= 0.5) & same).any(1).sum())
    return {"pseudo_boxes": float(total_pseudo), "pseudo_precision": matched / max(total_pseudo, 1),
            "pseudo_recall": min(matched, total_true) / max(total_true, 1)}

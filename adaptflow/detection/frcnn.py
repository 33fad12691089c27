"""torchvision Faster R-CNN, trained by adaptflow's own loop on the same tensors as YOLO reads.

Sized for small scenes: anchors from 16 px, fewer proposals and sampled regions than the COCO
defaults (which spend most of their time on regions a 128 px scene does not have). Class
index 0 is the background, so a detector of N classes has N + 1 outputs.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from adaptflow.detection.data import DetectionSet

log = logging.getLogger(__name__)

ARCHS = ("fasterrcnn_mobilenet_v3_large_fpn", "fasterrcnn_resnet50_fpn_v2")


def build(arch: str, num_classes: int, image_size: int) -> nn.Module:
    """A Faster R-CNN of `arch` (random weights: offline there are none to download) with a box
    predictor for `num_classes` classes plus background."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor, mobilenet_backbone

    if arch == "fasterrcnn_mobilenet_v3_large_fpn":
        backbone = mobilenet_backbone(backbone_name="mobilenet_v3_large", weights=None, fpn=True, trainable_layers=6,
                                      norm_layer=nn.BatchNorm2d)  # trained from scratch: batch norm that learns
        sizes = ((16, 32, 64, 128),) * 3
    elif arch == "fasterrcnn_resnet50_fpn_v2":
        from torchvision.models import resnet50

        backbone = _resnet_fpn_extractor(resnet50(weights=None), trainable_layers=5, norm_layer=nn.BatchNorm2d)
        sizes = ((16,), (32,), (64,), (128,), (256,))
    else:
        raise ValueError(f"unknown Faster R-CNN architecture '{arch}': use one of {', '.join(ARCHS)}")
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    return FasterRCNN(
        backbone, num_classes=num_classes + 1, rpn_anchor_generator=anchors, min_size=image_size, max_size=image_size,
        rpn_pre_nms_top_n_train=300, rpn_post_nms_top_n_train=150, rpn_pre_nms_top_n_test=300, rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=128, box_batch_size_per_image=64, box_score_thresh=0.001, box_detections_per_img=100,
    )


def _shifted(targets: list[dict[str, torch.Tensor]], device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Our class indices -> torchvision's (0 is the background)."""
    return [{"boxes": t["boxes"].to(device), "labels": (t["labels"] + 1).to(device)} for t in targets]


def train(
    model: nn.Module,
    data: DetectionSet,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    optimizer: str,
    seed: int,
    device: str,
    freeze_backbone: bool = False,
    augment: bool = False,
    precision: str = "auto",
    state_path: Path | None = None,
    fingerprint: str = "",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
) -> list[dict[str, float]]:
    """Train on `data` with a cosine schedule; the state is checkpointed every epoch and a later call
    with the same `fingerprint` resumes from it."""
    from adaptflow.training import autocast_dtype, load_state, make_optimizer, resolve_device, save_state, seed_everything

    torch.set_flush_denormal(True)
    dev = resolve_device(device)
    amp_dtype = autocast_dtype(dev, precision)
    seed_everything(seed)
    generator = torch.Generator().manual_seed(seed)
    model.to(dev)
    for p in model.backbone.parameters():
        p.requires_grad_(not freeze_backbone)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, [{"params": params, "lr": lr}], weight_decay)
    steps = math.ceil(len(data) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    targets = data.targets()
    history: list[dict[str, float]] = []
    start = 0
    resumed = load_state(state_path, fingerprint)
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        opt.load_state_dict(resumed["optimizer"])
        scheduler.load_state_dict(resumed["scheduler"])
        generator.set_state(resumed["generator"])
        start, history = resumed["epoch"], resumed["history"]
        log.info("resuming Faster R-CNN training at epoch %d", start)
    for epoch in range(start, epochs):
        t0 = time.perf_counter()
        model.train()
        if freeze_backbone:
            model.backbone.eval()
        order = torch.randperm(len(data), generator=generator)
        loss_sum = torch.zeros((), device=dev)
        for step in range(steps):
            idx = order[step * batch_size : (step + 1) * batch_size]
            batch = data.images[idx].to(dev).float().div_(255)
            if augment:
                batch = colour_jitter(batch, generator)
            images = list(batch.unbind(0))
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                losses = model(images, _shifted([targets[i] for i in idx.tolist()], dev))
                loss = sum(losses.values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            scheduler.step()
            loss_sum += loss.detach() * len(idx)
        seconds = time.perf_counter() - t0
        row = {"epoch": epoch + 1, "train_loss": float(loss_sum) / len(data), "epoch_seconds": seconds,
               "images_per_second": len(data) / seconds}
        history.append(row)
        if state_path is not None:
            save_state(state_path, {"fingerprint": fingerprint, "epoch": epoch + 1, "step": 0, "model": model.state_dict(),
                                     "optimizer": opt.state_dict(), "scheduler": scheduler.state_dict(),
                                     "generator": generator.get_state(), "history": history})
        if on_epoch is not None:
            on_epoch(epoch + 1, row)
    model.eval()
    return history


def colour_jitter(x: torch.Tensor, generator: torch.Generator, strength: float = 0.4) -> torch.Tensor:
    """Per image and channel gain, and per image offset: colour and brightness changes leave boxes where they are."""
    n, c = x.shape[:2]
    gain = 1 + (torch.rand(n, c, 1, 1, generator=generator) * 2 - 1) * strength
    offset = (torch.rand(n, 1, 1, 1, generator=generator) * 2 - 1) * strength / 2
    return (x * gain.to(x.device) + offset.to(x.device)).clamp_(0, 1)


def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: str) -> list[dict[str, torch.Tensor]]:
    """Boxes (xyxy pixels), scores and class indices for uint8 images (N x 3 x H x W). The model moves
    to the device before inference mode, so that it can still be trained afterwards."""
    from adaptflow.training import resolve_device

    dev = resolve_device(device)
    model = model.to(dev).eval()
    results = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            for out in model(list(images[start : start + batch_size].to(dev).float().div_(255).unbind(0))):
                results.append({"boxes": out["boxes"].float().cpu(), "scores": out["scores"].float().cpu(), "labels": out["labels"].cpu() - 1})
    return results

"""One training loop for every classification strategy.

A strategy is a list of phases (which parameters train, for how many epochs); the loop runs
them in turn with one optimizer step function. Batches are indexed from tensors that already
sit on the device; normalisation and augmentation run there too, on the whole batch. The full
training state is checkpointed atomically after every epoch, so a retried run resumes exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from adaptflow.data.folders import ImageSet
from adaptflow.io import atomic_write, write_json
from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD, Classifier

log = logging.getLogger(__name__)

#: Keep a dataset on the accelerator when it is smaller than this.
DEVICE_RESIDENT_BYTES = 2 << 30

EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs in which either the head alone or the whole model trains."""

    epochs: int
    train_backbone: bool


@dataclass(frozen=True)
class FitSettings:
    """What the loop needs to know, independent of which stage calls it."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    augment: bool = False
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    strategy: str = "finetune"
    lp_epochs: int = 0
    backbone_lr_scale: float = 1.0
    checkpoint_every_steps: int = 0

    @classmethod
    def from_config(cls, cfg: object, **overrides: object) -> FitSettings:
        """Take every field this class has from a config section (TrainConfig and its kin)."""
        shared = {f.name: getattr(cfg, f.name) for f in fields(cls) if hasattr(cfg, f.name)}
        return cls(**{**shared, **overrides})


def plan_phases(strategy: str, epochs: int, lp_epochs: int = 0) -> list[Phase]:
    """Phases of a transfer strategy: `linear_probe`, `finetune` or `lp_ft` (probe, then fine-tune)."""
    if strategy == "linear_probe":
        return [Phase(epochs, train_backbone=False)]
    if strategy == "finetune":
        return [Phase(epochs, train_backbone=True)]
    if strategy == "lp_ft":
        if not 0 < lp_epochs < epochs:
            raise ValueError(f"lp_ft needs 0 < finetune.lp_epochs < finetune.epochs (got {lp_epochs} and {epochs})")
        return [Phase(lp_epochs, train_backbone=False), Phase(epochs - lp_epochs, train_backbone=True)]
    raise ValueError(f"unknown strategy '{strategy}': use linear_probe, finetune or lp_ft")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device '{name}' was requested but CUDA is not available here; use device=auto or cpu")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The mixed-precision dtype for this device, or None for full precision."""
    if device.type != "cuda" or precision == "off":
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Normalizer(nn.Module):
    """uint8 N x C x H x W -> float, scaled to [0, 1], optional random affine, then mean/std."""

    def __init__(self, device: torch.device, channels_last: bool = False) -> None:
        super().__init__()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = images.float().div_(255.0)
        if generator is not None:
            x = random_affine(x, generator)
        return ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)


def random_affine(x: torch.Tensor, generator: torch.Generator, degrees: float = 15.0, scale: float = 0.1, shift: float = 0.1) -> torch.Tensor:
    """Rotate, scale and shift every image of a batch by its own random amount, in one grid sample."""
    n = x.shape[0]
    u = torch.rand(n, 4, generator=generator).to(x.device)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = 1 + (u[:, 1] * 2 - 1) * scale
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    tx, ty = (u[:, 2] * 2 - 1) * shift * 2, (u[:, 3] * 2 - 1) * shift * 2
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")


def param_groups(model: Classifier, lr: float, backbone_lr_scale: float, train_backbone: bool) -> list[dict]:
    """The head at `lr`; the backbone at `lr * backbone_lr_scale`, or frozen."""
    for p in model.backbone.parameters():
        p.requires_grad_(train_backbone)
    groups = [{"params": list(model.head.parameters()), "lr": lr}]
    if train_backbone:
        groups.append({"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale})
    return groups


def make_optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay)
    return torch.optim.AdamW(groups, weight_decay=weight_decay)


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    amp_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the detached loss and logits (no host sync)."""
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    return loss.detach(), logits.detach()


def _to_device(data: ImageSet, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    if device.type != "cpu" and data.images.nbytes < DEVICE_RESIDENT_BYTES:
        return data.images.to(device), data.labels.to(device)
    return data.images, data.labels


def fit(
    model: Classifier,
    train: ImageSet,
    settings: FitSettings,
    *,
    state_path: Path | None = None,
    fingerprint: str = "",
    on_epoch: EpochCallback | None = None,
    progress: bool = True,
) -> list[dict[str, float]]:
    """Train `model` on `train` following the strategy in `settings`; returns per-epoch metrics.

    With `state_path`, the full state (model, optimizer, scheduler, scaler, RNG, epoch and step) is
    saved there after every epoch and every `checkpoint_every_steps` steps, and a later call with
    the same `fingerprint` resumes from it exactly.
    """
    torch.set_flush_denormal(True)  # denormal floats slow CPU training several-fold
    device = resolve_device(settings.device)
    amp_dtype = autocast_dtype(device, settings.precision)
    channels_last = device.type == "cuda"
    seed_everything(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    normalize = Normalizer(device, channels_last)
    images, labels = _to_device(train, device)
    n = len(labels)
    steps_per_epoch = math.ceil(n / settings.batch_size)
    phases = plan_phases(settings.strategy, settings.epochs, settings.lp_epochs)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    history: list[dict[str, float]] = []
    start_epoch, start_step = 0, 0
    resumed = _load_state(state_path, fingerprint)
    if resumed is not None:
        start_epoch, start_step, history = resumed["epoch"], resumed["step"], resumed["history"]
        log.info("resuming from %s at epoch %d step %d", state_path, start_epoch, start_step)
        model.load_state_dict(resumed["model"])
        generator.set_state(resumed["generator"])
        torch.set_rng_state(resumed["torch_rng"])

    def save(epoch: int, step: int, order: torch.Tensor, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        if state_path is not None:
            _save_state(state_path, {
                "fingerprint": fingerprint, "epoch": epoch, "step": step, "order": order.cpu(),
                "loss_sum": loss_sum.cpu(), "correct": correct.cpu(), "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else {},
                "generator": generator.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
            })

    total = settings.epochs * steps_per_epoch
    bar = tqdm(total=total, initial=start_epoch * steps_per_epoch + start_step, disable=not progress or None, unit="step", leave=False)
    epoch = 0
    for phase in phases:
        phase_start, phase_end = epoch, epoch + phase.epochs
        epoch = phase_end
        if phase_end <= start_epoch:
            continue  # finished before the resume point
        optimizer = make_optimizer(
            settings.optimizer,
            param_groups(model, settings.lr, settings.backbone_lr_scale, phase.train_backbone),
            settings.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=phase.epochs * steps_per_epoch)
        if resumed is not None and (phase_start, 0) < (start_epoch, start_step):  # resuming inside this phase
            optimizer.load_state_dict(resumed["optimizer"])
            scheduler.load_state_dict(resumed["scheduler"])
            if scaler is not None and resumed["scaler"]:
                scaler.load_state_dict(resumed["scaler"])
        epoch = max(phase_start, start_epoch)
        while epoch < phase_end:
            t0 = time.perf_counter()
            model.train()
            if not phase.train_backbone:
                model.backbone.eval()  # a frozen backbone keeps its batch-norm statistics
            if resumed is not None and epoch == start_epoch and start_step > 0:  # resuming mid-epoch
                order = resumed["order"].to(labels.device)
                loss_sum, correct, first = resumed["loss_sum"].to(device), resumed["correct"].to(device), start_step
            else:
                order = torch.randperm(n, generator=generator).to(labels.device)
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device, dtype=torch.long)
                first = 0
            for step in range(first, steps_per_epoch):
                idx = order[step * settings.batch_size : (step + 1) * settings.batch_size]
                x = normalize(images[idx].to(device, non_blocking=True), generator if settings.augment else None)
                y = labels[idx].to(device, non_blocking=True)
                loss, logits = train_step(model, x, y, optimizer, scaler, amp_dtype)
                scheduler.step()
                loss_sum += loss * len(idx)
                correct += (logits.argmax(1) == y).sum()
                bar.update()
                every = settings.checkpoint_every_steps
                if every and (step + 1) % every == 0 and step + 1 < steps_per_epoch:
                    save(epoch, step + 1, order, loss_sum, correct)
            epoch += 1
            record = {
                "epoch": epoch,
                "train_loss": float(loss_sum) / n,
                "train_accuracy": int(correct) / n,
                "epoch_seconds": time.perf_counter() - t0,
                "images_per_second": n / (time.perf_counter() - t0),
            }
            history.append(record)
            bar.set_postfix(loss=f"{record['train_loss']:.3f}", acc=f"{record['train_accuracy']:.3f}")
            save(epoch, 0, order, loss_sum, correct)
            if on_epoch is not None:
                on_epoch(epoch, record)
    bar.close()
    model.eval()
    return history


def _save_state(path: Path, state: dict) -> None:
    """Write the training state atomically, then a small `<name>.json` saying where training stands."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    write_json(path.with_suffix(".json"), {"epoch": state["epoch"], "step": state["step"]})


def _load_state(path: Path | None, fingerprint: str) -> dict | None:
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it belongs to another configuration", path)
        return None
    return state


@torch.inference_mode()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str = "auto") -> torch.Tensor:
    """Logits for uint8 images (N x 3 x H x W), computed in batches; returned on the CPU."""
    dev = resolve_device(device)
    channels_last = dev.type == "cuda"
    model.to(dev, memory_format=torch.channels_last if channels_last else torch.contiguous_format).eval()
    normalize = Normalizer(dev, channels_last)
    amp_dtype = autocast_dtype(dev, "auto")
    outputs = []
    for start in range(0, len(images), batch_size):
        x = normalize(images[start : start + batch_size].to(dev, non_blocking=True))
        with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            outputs.append(model(x).float())
    return torch.cat(outputs).cpu()

"""One optimisation step: forward and loss under autocast, the L2-SP pull, backward (scaled for fp16), and the update."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaptflow.adapt import Adaptation
from adaptflow.training.anchor import Anchor


def train_step(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    amp_dtype: torch.dtype | None,
    adaptation: Adaptation | None = None,
    target: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: float = 0.0,
    loss_scale: float = 1.0,
    anchor: Anchor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step; returns the detached loss and logits (no host sync).

    With `adaptation`, the loss adds each method's term over the target batch `target`
    (images, their indices in the unlabeled set); with `anchor`, its pull toward the starting
    weights (in float32, outside autocast). `loss_scale` multiplies the loss before the
    backward pass only (a data-parallel worker's share of the global batch: `World.loss_scale`).
    """
    with torch.autocast(x.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
        if adaptation is None:
            logits = model(x)
            loss = F.cross_entropy(logits, y)
        else:
            x_target, index = target if target is not None else (None, None)
            loss, logits = adaptation.loss(model, x, y, x_target, index, progress)
    if anchor is not None:
        loss = loss + anchor.penalty()
    optimizer.zero_grad(set_to_none=True)
    scaled = loss * loss_scale if loss_scale != 1.0 else loss
    if scaler is not None:
        scaler.scale(scaled).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        scaled.backward()
        optimizer.step()
    return loss.detach(), logits.detach()

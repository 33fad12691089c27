"""AdaBN (Li et al., 2016): batch-norm statistics re-estimated on the target domain.

Only the running mean and variance of batch-norm layers change; weights do not. Listed before
other methods, it also makes every epoch's pseudo-labels come from target statistics.
"""

from __future__ import annotations

import torch
from torch import nn

from adaptflow.adapt.base import Method, TargetData, register


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, target: TargetData) -> None:
    """Replace every batch-norm layer's running statistics by the exact mean/variance over `target`."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not norms:
        return
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in norms]
    model.eval()
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over every batch
        m.train()
    for x in target.batches():
        model(x)
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum
    for m, training in modes.items():
        m.training = training


@register("adabn")
class AdaBN(Method):
    """Target batch-norm statistics before training, at each epoch and at the end."""

    def before_fit(self, model: nn.Module, target: TargetData) -> None:
        adapt_batch_norm(model, target)

    def before_epoch(self, model: nn.Module, target: TargetData, epoch: int) -> None:
        if epoch > 0:
            adapt_batch_norm(model, target)

    def after_fit(self, model: nn.Module, target: TargetData) -> None:
        adapt_batch_norm(model, target)

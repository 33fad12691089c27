"""Deep CORAL (Sun & Saenko, 2016): align the second-order statistics of source and target features."""

from __future__ import annotations

import torch

from adaptflow.adapt.base import AdaptBatch, Method, register


def covariance(x: torch.Tensor) -> torch.Tensor:
    """Unbiased covariance of the rows of x (n x d)."""
    centered = x - x.mean(0, keepdim=True)
    return centered.T @ centered / (x.shape[0] - 1)


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||C_s - C_t||_F^2 / (4 d^2)."""
    d = source.shape[1]
    return (covariance(source.float()) - covariance(target.float())).pow(2).sum() / (4 * d * d)


@register("coral")
class Coral(Method):
    uses_target_batch = True

    def loss(self, batch: AdaptBatch) -> torch.Tensor:
        return self.options.weight * coral_loss(batch.source_features, batch.target_features)

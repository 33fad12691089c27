"""MCC, minimum class confusion (Jin et al., 2020): penalise target predictions that spread
probability over pairs of classes, weighting confident examples more."""

from __future__ import annotations

import torch

from adaptflow.adapt.base import AdaptBatch, Method, register


def mcc_loss(logits: torch.Tensor, temperature: float = 2.5) -> torch.Tensor:
    """Off-diagonal mass of the row-normalised, entropy-weighted class correlation matrix, over K."""
    p = torch.softmax(logits.float() / temperature, dim=1)
    entropy = -(p * torch.log(p + 1e-8)).sum(1).detach()
    weight = 1 + torch.exp(-entropy)
    weight = len(p) * weight / weight.sum()
    confusion = (p * weight[:, None]).T @ p
    confusion = confusion / confusion.sum(1, keepdim=True)
    k = p.shape[1]
    return (confusion.sum() - confusion.trace()) / k


@register("mcc")
class MCC(Method):
    uses_target_batch = True

    def loss(self, batch: AdaptBatch) -> torch.Tensor:
        return self.options.weight * mcc_loss(batch.target_logits)

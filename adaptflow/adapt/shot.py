"""SHOT's information maximization (Liang et al., 2020): source-free adaptation from unlabeled target
images. Each prediction should be confident (low entropy) while the predictions together stay diverse
(the mean prediction close to uniform), so the model cannot collapse onto a few classes.

SHOT keeps the source model's classifier (its "hypothesis") fixed and moves the features to fit it:
the training loop freezes the head whenever a run has no labeled images. With labeled images the
term regularises ordinary training on them.
"""

from __future__ import annotations

import torch

from adaptflow.adapt.base import AdaptBatch, Method, register


def information_maximization_loss(logits: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Mean entropy of the predictions minus the entropy of their mean (>= -log K; lower is better)."""
    p = torch.softmax(logits.float(), dim=1)
    entropy = -(p * torch.log(p + eps)).sum(1).mean()
    mean = p.mean(0)
    diversity = -(mean * torch.log(mean + eps)).sum()
    return entropy - diversity


@register("shot")
class SHOT(Method):
    uses_target_batch = True

    def loss(self, batch: AdaptBatch) -> torch.Tensor:
        return self.options.weight * information_maximization_loss(batch.target_logits)

"""Self-training: confident, class-balanced pseudo-labels on the target, refreshed every epoch,
learned from augmented views (the loop's augmentation applies to target batches too).

A plain confidence threshold keeps mostly a few easy classes, and the model drifts towards
them; capping every class at the median per-class count keeps the pseudo-labels balanced.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adaptflow.adapt.base import AdaptBatch, Method, TargetData, register


def select_pseudo_labels(probs: torch.Tensor, threshold: float, balanced: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, keep mask): predictions with confidence >= threshold; with `balanced`, at most the
    median per-class count of each class (over classes that have any), most confident first."""
    confidence, labels = probs.max(1)
    keep = confidence >= threshold
    if not balanced or not keep.any():
        return labels, keep
    index = torch.nonzero(keep).flatten()
    index = index[torch.argsort(confidence[index], descending=True, stable=True)]
    index = index[torch.argsort(labels[index], stable=True)]  # by class, most confident first within it
    cls = labels[index]
    counts = torch.bincount(cls, minlength=probs.shape[1])
    cap = counts[counts > 0].median()
    rank = torch.arange(len(index), device=index.device) - (torch.cumsum(counts, 0) - counts)[cls]
    keep = torch.zeros_like(keep)
    keep[index[rank < cap]] = True
    return labels, keep


@register("self_training")
class SelfTraining(Method):
    uses_target_batch = True

    def setup(self, model: nn.Module, target: TargetData) -> None:
        self.register_buffer("labels", torch.zeros(len(target), dtype=torch.long))
        self.register_buffer("keep", torch.zeros(len(target), dtype=torch.bool))
        self._metrics: dict[str, float] = {}

    def before_epoch(self, model: nn.Module, target: TargetData, epoch: int) -> None:
        probs = torch.softmax(target.logits(model), 1)
        self.labels, self.keep = select_pseudo_labels(probs, self.options.pseudo_label_threshold)
        self._metrics = {"pseudo_label_fraction": float(self.keep.float().mean())}
        if target.labels is not None:  # diagnostics only: true labels never train
            known = self.keep & (target.labels.to(self.keep.device) >= 0)
            if known.any():
                right = self.labels[known] == target.labels.to(self.labels.device)[known]
                self._metrics["pseudo_label_accuracy"] = float(right.float().mean())

    def loss(self, batch: AdaptBatch) -> torch.Tensor:
        keep = self.keep[batch.target_index]
        if not keep.any():
            return batch.target_logits.sum() * 0.0
        per_image = F.cross_entropy(batch.target_logits, self.labels[batch.target_index], reduction="none")
        return self.options.weight * (per_image * keep).sum() / keep.sum()

    def metrics(self) -> dict[str, float]:
        return self._metrics

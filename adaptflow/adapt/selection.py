"""Unsupervised validators: score a model on unlabeled target images, so that a checkpoint or a
method can be chosen without target labels. Higher is better for every score.

Each score reads a model's predictions (`TargetPredictions`); `adaptflow.training.score_model` runs the
model to get them. Three read only the model's predictions on the images (and so reward confident predictions);
`mixval` also probes the model with mixed images, and scores where its decision boundaries lie.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

#: MixVal's mixing weight: each probe is this much of one image and the rest of its partner.
MIX_WEIGHT = 0.55


@dataclass(frozen=True)
class TargetPredictions:
    """A model's logits on the unlabeled target images, and on their mixed probes: probe i is
    MIX_WEIGHT x image i + (1 - MIX_WEIGHT) x image partner[i]."""

    logits: torch.Tensor
    probe_logits: torch.Tensor
    partner: torch.Tensor


def _entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * torch.log(p.clamp_min(1e-12))).sum(-1)


def neg_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Minus the mean prediction entropy: confident predictions score higher."""
    return -_entropy(torch.softmax(logits.float(), 1)).mean()


def information_maximization(logits: torch.Tensor) -> torch.Tensor:
    """H(mean prediction) - mean H(prediction): confident *and* diverse predictions score higher,
    so collapsing onto one class (confident but not diverse) does not."""
    p = torch.softmax(logits.float(), 1)
    return _entropy(p.mean(0)) - _entropy(p).mean()


def soft_neighborhood_density(logits: torch.Tensor, temperature: float = 0.05, max_points: int = 2000) -> torch.Tensor:
    """SND (Saito et al., 2021): entropy of each image's softmax similarity to the others, over
    normalised predictions; dense, well-clustered neighbourhoods score higher."""
    p = torch.nn.functional.normalize(torch.softmax(logits.float(), 1)[:max_points], dim=1)
    sim = p @ p.T / temperature
    sim.fill_diagonal_(float("-inf"))
    return _entropy(torch.softmax(sim, 1)).mean()


def mixed_probe_consistency(predictions: TargetPredictions) -> torch.Tensor:
    """MixVal (Hu et al., 2023): how often a probe keeps the predicted class of its larger part.

    Averaged separately over probes whose two images are predicted the same class (is a cluster
    solid inside?) and a different class (does the boundary lie between the clusters, not next to
    one?), then the two averages are averaged. Confidence alone does not raise it. A model that
    predicts one class for everything has no probe across classes; that half scores 0.
    """
    pseudo = predictions.logits.argmax(1)
    kept = predictions.probe_logits.argmax(1) == pseudo
    same = pseudo == pseudo[predictions.partner]
    halves = [kept[mask].float().mean() if mask.any() else kept.new_zeros((), dtype=torch.float32) for mask in (same, ~same)]
    return torch.stack(halves).mean()


def _on_logits(score: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[TargetPredictions], torch.Tensor]:
    return lambda predictions: score(predictions.logits)


VALIDATORS: dict[str, Callable[[TargetPredictions], torch.Tensor]] = {
    "information_maximization": _on_logits(information_maximization),
    "entropy": _on_logits(neg_entropy),
    "snd": _on_logits(soft_neighborhood_density),
    "mixval": mixed_probe_consistency,
}


def mixed_probes(images: torch.Tensor, seed: int = 0, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """(probes, partner): each uint8 image mixed with a partner drawn by a seeded permutation, so a
    model's score is the same on every call."""
    partner = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    probes = torch.empty_like(images)
    for start in range(0, len(images), chunk):  # in chunks: float copies of a large set stay small
        part = slice(start, start + chunk)
        mixed = images[part].float().mul_(MIX_WEIGHT).add_(images[partner[part]].float(), alpha=1 - MIX_WEIGHT)
        probes[part] = mixed.round_().to(torch.uint8)
    return probes, partner

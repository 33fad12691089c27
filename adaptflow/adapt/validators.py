"""Unsupervised validators: score a model on unlabeled target images, so that a checkpoint or a
method can be chosen without target labels. Higher is better for every score.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


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


VALIDATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "information_maximization": information_maximization,
    "entropy": neg_entropy,
    "snd": soft_neighborhood_density,
}


def score_model(logits: torch.Tensor) -> dict[str, float]:
    """Every validator's score of a model's logits on the unlabeled target images."""
    return {name: float(fn(logits)) for name, fn in VALIDATORS.items()}

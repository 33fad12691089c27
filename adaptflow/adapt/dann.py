"""DANN (Ganin et al., 2016): a domain discriminator trained through a gradient reversal layer,
so the features learn to fool it, with the paper's schedule for the reversal strength."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adaptflow.adapt.base import AdaptBatch, Method, TargetData, register


class GradientReversal(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by -coeff."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, coeff: float) -> torch.Tensor:  # noqa: ANN001 - autograd context
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.coeff * grad, None


def reverse_gradient(x: torch.Tensor, coeff: float = 1.0) -> torch.Tensor:
    return GradientReversal.apply(x, coeff)


def dann_lambda(progress: float, gamma: float = 10.0) -> float:
    """2 / (1 + exp(-gamma p)) - 1: 0 at the start, rising towards 1, so early noisy domain
    gradients do not wreck the features."""
    return 2.0 / (1.0 + math.exp(-gamma * progress)) - 1.0


def domain_discriminator(features: int, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
        nn.Linear(hidden, 1),
    )


@register("dann")
class DANN(Method):
    uses_target_batch = True

    def setup(self, model: nn.Module, target: TargetData) -> None:
        self.discriminator = domain_discriminator(model.head.in_features)

    def loss(self, batch: AdaptBatch) -> torch.Tensor:
        coeff = dann_lambda(batch.progress)
        features = torch.cat([batch.source_features, batch.target_features])
        domain = torch.cat([torch.ones(len(batch.source_features)), torch.zeros(len(batch.target_features))]).to(features.device)
        logits = self.discriminator(reverse_gradient(features, coeff)).squeeze(1)
        return self.options.weight * F.binary_cross_entropy_with_logits(logits.float(), domain)

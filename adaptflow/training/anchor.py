"""The L2-SP anchor: a pull toward the weights training started from."""

from __future__ import annotations

import torch
from torch import nn


class Anchor:
    """L2-SP (Li, Grandvalet and Davoine, 2018): `weight / 2 * ||w - w0||^2` over the parameters that
    train, where w0 are the weights training started from. Weight decay pulls a fine-tuned model toward
    zero, which forgets what the pretrained weights knew; this pulls it toward them, which matters most
    when a few labels would otherwise pull the whole backbone their way."""

    def __init__(self, model: nn.Module, weight: float) -> None:
        self.weight = weight
        self.pairs = [(p, p.detach().clone()) for p in model.parameters()]

    def state(self) -> list[torch.Tensor]:
        return [start for _, start in self.pairs]

    def restore(self, starts: list[torch.Tensor]) -> None:
        """The starting weights a resumed run saved (the model it is handed again may start elsewhere)."""
        for (_, start), saved in zip(self.pairs, starts, strict=True):
            start.copy_(saved)

    def penalty(self) -> torch.Tensor:
        distance = [((p - start) ** 2).sum() for p, start in self.pairs if p.requires_grad]
        return 0.5 * self.weight * torch.stack(distance).sum() if distance else torch.zeros(())

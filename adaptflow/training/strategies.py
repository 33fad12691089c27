"""Transfer strategies as phases: which parameters train, for how many epochs, at which learning rates.

A strategy is a list of phases; the loop (`adaptflow.training.loop`) runs them in turn, each with an
optimizer over the parameter groups `param_groups` gives it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from adaptflow.config import LAYERWISE_STRATEGIES, TrainSettings, lp_ft_problem
from adaptflow.models import Classifier


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs in which the head trains, and the backbone too when `train_backbone`:
    all of it, only its top `blocks` blocks, or, `from_input`, only its first `blocks` blocks."""

    epochs: int
    train_backbone: bool
    blocks: int | None = None
    from_input: bool = False

    def trained(self, blocks: list[nn.Module]) -> list[nn.Module]:
        """Those of the backbone's `blocks` (input to output) that train in this phase, when the backbone trains."""
        if self.blocks is None:
            return blocks
        return blocks[: self.blocks] if self.from_input else blocks[len(blocks) - self.blocks :]


def phases(settings: TrainSettings, model: Classifier) -> list[Phase]:
    """The strategy of `settings` planned on `model`'s backbone (a ValueError when it cannot be planned there)."""
    return plan_phases(settings.strategy, settings.epochs, settings.lp_epochs, len(backbone_blocks(model.backbone)),
                       settings.unfreeze_epochs, settings.surgical_blocks)


def layer_decay(settings: TrainSettings) -> float:
    """Each backbone block's rate over the block above's: `layer_lr_decay` for the layer-wise strategies, else 1."""
    return settings.layer_lr_decay if settings.strategy in LAYERWISE_STRATEGIES else 1.0


def plan_phases(
    strategy: str, epochs: int, lp_epochs: int = 0, num_blocks: int = 1, unfreeze_epochs: int = 1, surgical_blocks: int = 1
) -> list[Phase]:
    """Phases of a transfer strategy: `linear_probe`, `finetune`, `lp_ft` (probe, then fine-tune),
    `discriminative` (fine-tune, lower blocks slower), `gradual_unfreeze` (the head for
    `unfreeze_epochs`, then one more backbone block from the top every `unfreeze_epochs`) or
    `surgical` (the head and the backbone's first `surgical_blocks` blocks: those that see a
    shift in the input, such as a new camera, first; Lee et al., 2023)."""
    if strategy == "linear_probe":
        return [Phase(epochs, train_backbone=False)]
    if strategy in ("finetune", "discriminative"):
        return [Phase(epochs, train_backbone=True)]
    if strategy == "gradual_unfreeze":
        phases, done = [], 0
        for blocks in range(num_blocks):
            if done >= epochs:
                return phases
            length = min(unfreeze_epochs, epochs - done)
            phases.append(Phase(length, train_backbone=blocks > 0, blocks=blocks or None))
            done += length
        return [*phases, Phase(epochs - done, train_backbone=True)] if done < epochs else phases
    if strategy == "lp_ft":
        problem = lp_ft_problem(lp_epochs, epochs)
        if problem:
            raise ValueError(problem)
        return [Phase(lp_epochs, train_backbone=False), Phase(epochs - lp_epochs, train_backbone=True)]
    if strategy == "surgical":
        if not 1 <= surgical_blocks <= num_blocks:
            raise ValueError(f"surgical trains the first finetune.surgical_blocks backbone blocks, but this backbone has {num_blocks} "
                             f"(got {surgical_blocks}): set it between 1 and {num_blocks}")
        return [Phase(epochs, train_backbone=True, blocks=surgical_blocks, from_input=True)]
    raise ValueError(f"unknown strategy '{strategy}': use linear_probe, finetune, lp_ft, discriminative, gradual_unfreeze or surgical")


def backbone_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The backbone's blocks from input to output: its children that hold parameters, with plain
    `nn.Sequential` children (resnet's layerN, mobilenet's features) opened one level."""
    blocks: list[nn.Module] = []
    for child in backbone.children():
        parts = list(child.children()) if type(child) is nn.Sequential else [child]
        blocks += [m for m in parts if any(True for _ in m.parameters())]
    return blocks


def param_groups(
    model: Classifier, lr: float, backbone_lr_scale: float, phase: Phase, layer_decay: float = 1.0, train_head: bool = True
) -> list[dict]:
    """The head at `lr` (frozen unless `train_head`); the backbone at `lr * backbone_lr_scale`, or frozen.

    Only the backbone blocks `phase` trains get gradients; with `layer_decay` < 1 each block
    trains at `layer_decay` times the rate of the block above it (discriminative learning rates).
    """
    for p in model.backbone.parameters():
        p.requires_grad_(False)
    for p in model.head.parameters():
        p.requires_grad_(train_head)
    groups = [{"params": list(model.head.parameters()), "lr": lr}] if train_head else []
    if not phase.train_backbone:
        return groups
    if phase.blocks is None and layer_decay == 1.0:
        for p in model.backbone.parameters():
            p.requires_grad_(True)
        return [*groups, {"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_scale}]
    trainable = phase.trained(backbone_blocks(model.backbone))
    for depth, block in enumerate(reversed(trainable)):
        params = list(block.parameters())
        for p in params:
            p.requires_grad_(True)
        groups.append({"params": params, "lr": lr * backbone_lr_scale * layer_decay**depth})
    return groups


def freeze_modes(model: Classifier, phase: Phase) -> None:
    """Frozen parts keep their batch-norm statistics: put them in eval mode (the rest trains)."""
    if not phase.train_backbone:
        model.backbone.eval()
    elif phase.blocks is not None:
        blocks = backbone_blocks(model.backbone)
        trained = {id(block) for block in phase.trained(blocks)}
        for block in blocks:
            if id(block) not in trained:
                block.eval()


def make_optimizer(name: str, groups: list[dict], weight_decay: float) -> torch.optim.Optimizer:
    """SGD (Nesterov momentum) or AdamW over `groups`. When every parameter is on a CUDA device the
    update runs as one fused kernel per step instead of a kernel per parameter tensor."""
    fused = all(p.is_cuda for group in groups for p in group["params"]) or None
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, nesterov=True, weight_decay=weight_decay, fused=fused)
    return torch.optim.AdamW(groups, weight_decay=weight_decay, fused=fused)

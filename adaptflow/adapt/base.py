"""The shared signature of adaptation methods, their registry, and the container `fit` drives."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from adaptflow.config import TrainSettings, setting
from adaptflow.data.feed import DeviceRows

#: name -> Method class; filled by `@register`.
METHODS: dict[str, type[Method]] = {}


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


class AdaptOptions(BaseModel):
    """Hyperparameters shared by the methods (each reads what it needs): the training settings' adapt_weight and
    pseudo_label_threshold, with their bounds, and the number of classes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    weight: float = setting("adapt_weight", 1.0)
    pseudo_label_threshold: float = setting("pseudo_label_threshold", 0.9)
    num_classes: int = Field(10, ge=1)

    @classmethod
    def of(cls, settings: TrainSettings, num_classes: int) -> AdaptOptions:
        """The options `settings` give the methods of a run over `num_classes` classes."""
        return cls(weight=settings.adapt_weight, pseudo_label_threshold=settings.pseudo_label_threshold, num_classes=num_classes)


@dataclass
class TargetData:
    """The unlabeled target images (uint8) and how to feed them to the model on the training device.

    `labels` are the true classes when the split has them (images in class folders; -1 where no one
    knows): used only for diagnostics (pseudo-label accuracy), never for training.
    """

    images: torch.Tensor
    normalize: Callable[[torch.Tensor], torch.Tensor]
    labels: torch.Tensor | None = None
    batch_size: int = 512
    device: torch.device | None = None  # the training device; None: where `images` are

    def __post_init__(self) -> None:
        self.rows = DeviceRows([self.images], self.device or self.images.device)
        self.device = self.rows.device
        if self.labels is not None and not (self.labels >= 0).any():
            self.labels = None  # nobody knows any of their classes
        if self.labels is not None:
            self.labels = self.labels.to(self.device)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, index: torch.Tensor) -> torch.Tensor:
        """The images at `index` (uint8), on the training device."""
        return self.rows.take(index)[0]

    def batches(self) -> Iterator[torch.Tensor]:
        """Normalised batches of every image, in order (no augmentation)."""
        for (images,) in self.rows.slices(self.batch_size):
            yield self.normalize(images)

    @torch.no_grad()
    def logits(self, model: nn.Module) -> torch.Tensor:
        """The model's logits on every target image, in eval mode (the model's mode is restored)."""
        modes = {m: m.training for m in model.modules()}
        model.eval()
        out = torch.cat([model(x).float() for x in self.batches()])
        for m, training in modes.items():
            m.training = training
        return out


@dataclass
class AdaptBatch:
    """What a method's loss sees at one step: both domains' features and logits, and training progress."""

    source_features: torch.Tensor
    source_logits: torch.Tensor
    source_labels: torch.Tensor
    target_features: torch.Tensor | None
    target_logits: torch.Tensor | None
    target_index: torch.Tensor | None
    progress: float  # 0 at the first step of the run, 1 at the last


class Method(nn.Module):
    """One adaptation method. Override what it needs; every hook has the same signature for all."""

    name: ClassVar[str] = ""
    #: Whether the loss needs a target batch at each step (hooks alone do not).
    uses_target_batch: ClassVar[bool] = False

    def __init__(self, options: AdaptOptions) -> None:
        super().__init__()
        self.options = options

    def setup(self, model: nn.Module, target: TargetData) -> None:
        """Build what depends on the model or the target set (a discriminator sized to the features)."""

    def before_fit(self, model: nn.Module, target: TargetData) -> None:
        """Once, before the first epoch."""

    def before_epoch(self, model: nn.Module, target: TargetData, epoch: int) -> None:
        """At the start of every epoch (not when resuming in the middle of one)."""

    def loss(self, batch: AdaptBatch) -> torch.Tensor | None:
        """A term added to the classification loss, or None."""
        return None

    def after_fit(self, model: nn.Module, target: TargetData) -> None:
        """Once, after the last epoch."""

    def metrics(self) -> dict[str, float]:
        """Diagnostics recorded with each epoch."""
        return {}


def build_methods(names: Sequence[str], options: AdaptOptions) -> list[Method]:
    """Instantiate methods by name, in order; unknown or repeated names are errors that list the known ones."""
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown adaptation method(s) {unknown}: use any of {sorted(METHODS)}")
    repeated = sorted({n for n in names if list(names).count(n) > 1})
    if repeated:
        raise ValueError(f"adaptation method(s) {repeated} listed twice: list each method once")
    return [METHODS[n](options) for n in names]


class Adaptation(nn.Module):
    """The methods of one run, driven by the training loop; its state is checkpointed with the model's."""

    def __init__(self, methods: Sequence[Method], target: TargetData) -> None:
        super().__init__()
        self.methods = nn.ModuleList(methods)
        self.target = target

    @staticmethod
    def target_classes(model: nn.Module) -> int:
        return model.head.out_features

    @property
    def uses_target_batch(self) -> bool:
        return any(m.uses_target_batch for m in self.methods)

    def setup(self, model: nn.Module) -> None:
        for m in self.methods:
            m.setup(model, self.target)
        self.to(self.target.device)

    def before_fit(self, model: nn.Module) -> None:
        for m in self.methods:
            m.before_fit(model, self.target)

    def before_epoch(self, model: nn.Module, epoch: int) -> None:
        for m in self.methods:
            m.before_epoch(model, self.target, epoch)

    def after_fit(self, model: nn.Module) -> None:
        for m in self.methods:
            m.after_fit(model, self.target)

    def metrics(self) -> dict[str, float]:
        return {k: v for m in self.methods for k, v in m.metrics().items()}

    def loss(
        self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_target: torch.Tensor | None, index: torch.Tensor | None, progress: float
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy on the labeled batch plus every method's term; returns (loss, labeled logits).
        An empty labeled batch (source-free adaptation, no labels) adds nothing and passes through no layer."""
        if len(x):
            features = model.features(x)
            logits = model.head(features)
            loss = F.cross_entropy(logits, y)
        else:
            features, logits, loss = x.new_zeros(0, 1), x.new_zeros(0, self.target_classes(model)), x.new_zeros(())
        target_features = target_logits = None
        if x_target is not None:
            target_features = model.features(x_target)
            target_logits = model.head(target_features)
        batch = AdaptBatch(features, logits, y, target_features, target_logits, index, progress)
        for m in self.methods:
            term = m.loss(batch)
            if term is not None:
                loss = loss + term
        return loss, logits

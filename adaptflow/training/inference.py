"""Inference with a trained classifier: logits (and features) for uint8 images in batches, and the validators' scores."""

from __future__ import annotations

import torch
from torch import nn

from adaptflow.adapt.selection import VALIDATORS, TargetPredictions, mixed_probes
from adaptflow.data.feed import DeviceRows
from adaptflow.models import Classifier
from adaptflow.training import runtime
from adaptflow.training.augment import Normalizer


def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str = "auto") -> torch.Tensor:
    """Logits for uint8 images (N x 3 x H x W), computed in batches; returned on the CPU.

    The model moves to the device and layout before inference mode: parameters converted inside it
    would become inference tensors, which a later `fit` could not train."""
    return _inference(model, images, batch_size, device, with_features=False)[0]


def predict_with_features(model: Classifier, images: torch.Tensor, batch_size: int = 512, device: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, the backbone's features) for uint8 images, in one pass; both on the CPU, in float32."""
    return _inference(model, images, batch_size, device, with_features=True)


def _inference(model: nn.Module, images: torch.Tensor, batch_size: int, device: str, with_features: bool) -> tuple[torch.Tensor, ...]:
    dev = runtime.resolve_device(device)
    model.to(dev, memory_format=runtime.MEMORY_FORMAT).eval()
    normalize = Normalizer(dev)
    amp_dtype = runtime.autocast_dtype(dev, "auto")
    logits, features = [], []
    with torch.inference_mode():
        for (batch,) in DeviceRows([images], dev).slices(batch_size):
            x = normalize(batch)
            with torch.autocast(dev.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
                if with_features:
                    f = model.features(x)
                    features.append(f.float())
                    logits.append(model.head(f).float())
                else:
                    logits.append(model(x).float())
    return torch.cat(logits).cpu(), *([torch.cat(features).cpu()] if with_features else [])


def score_model(model: nn.Module, images: torch.Tensor, batch_size: int = 512, device: str = "auto") -> dict[str, float]:
    """Every validator's score (`adaptflow.adapt.selection`) of `model` on the unlabeled target images (uint8, N x 3 x H x W)."""
    probes, partner = mixed_probes(images)
    predictions = TargetPredictions(predict(model, images, batch_size, device), predict(model, probes, batch_size, device), partner)
    return {name: float(score(predictions)) for name, score in VALIDATORS.items()}

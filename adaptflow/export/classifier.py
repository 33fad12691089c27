"""Exporting a classifier: the normalisation inside the graph, checked on real images against `train.predict`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptflow.export.common import OPSET, logits_check, preprocessing, quiet, runner


class ScaledInput(nn.Module):
    """A classifier taking images in [0, 1]: the normalisation training applies (`train.Normalizer`) is part of it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD

        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def export_classifier(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, images: torch.Tensor, *, half: bool,
                dynamic: bool, tolerance: float) -> dict[str, Any]:
    from adaptflow.training import predict

    expected = predict(model, images, device="cpu").numpy()  # what adaptflow's evaluation and serving compute
    net = ScaledInput(model.float().to(memory_format=torch.contiguous_format)).eval()
    dtype = torch.float16 if half else torch.float32
    device = "cuda" if half and torch.cuda.is_available() else "cpu"
    net = net.to(device, dtype)
    size = int(meta["image_size"])
    example = torch.zeros(2 if dynamic else 1, 3, size, size, dtype=dtype, device=device)
    with quiet(), torch.no_grad():
        if fmt == "onnx":
            shapes = {"images": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
            torch.onnx.export(net, (example,), str(path), dynamo=True, opset_version=OPSET, input_names=["images"],
                              output_names=["logits"], dynamic_shapes=shapes, verbose=False, optimize=True,
                              external_data=False)  # one file: weights inside the graph (under 2 GB)
        else:
            torch.jit.trace(net, example).save(str(path))
    run = runner(fmt, path, device)
    x = images.float().div(255).to(dtype)
    got = np.concatenate([run(x[i : i + 1] if not dynamic else x[i : i + 8]) for i in range(0, len(x), 8 if dynamic else 1)])
    check = logits_check(fmt, got, expected, tolerance, f"{len(x)} images",
                          "Export in fp32 (without --half)" if half else "Report it with the model file")
    shape = ["batch" if dynamic else 1, 3, size, size]
    return {"opset": OPSET if fmt == "onnx" else None, "input": {"name": "images", "shape": shape, "dtype": str(dtype).removeprefix("torch.")},
            "output": {"name": "logits", "shape": [shape[0], len(meta["classes"])], "meaning": "class scores before softmax"},
            "preprocessing": preprocessing(meta, size),
            "check": check}

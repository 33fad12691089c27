"""What every family's export shares: the error, the ONNX opsets, quiet exporters, running the exported file, and the
comparison of its logits with PyTorch's."""

from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adaptflow.errors import UserError

#: The ONNX opset of classifiers (torch's exporter, ONNX Runtime 1.16 and later) and Faster R-CNN (torch's TorchScript-based one).
OPSET, FRCNN_OPSET = 18, 17
#: Boxes of an exported detector must overlap PyTorch's by this IoU, with the same class.
BOX_IOU = 0.99
#: The score from which a detector's boxes are compared.
CHECK_CONF = 0.25
#: How many texts a text classifier's check tokenizes at once (so batch size and length vary).
CHECK_TEXT_BATCH = 8


class ExportError(UserError, ValueError):
    """A model that cannot be exported as asked, or whose export does not match PyTorch; nothing was kept."""


def preprocessing(meta: dict[str, Any], size: int) -> dict[str, Any]:
    """How images reach an exported image model, as its JSON records it."""
    return {"color": "RGB", "resize": f"the whole image to {size} x {size}, bilinear (no crop, no letterbox)",
            "scale": "pixel values / 255 (float in [0, 1])", "layout": "NCHW", "normalization": "inside the model",
            **({"window": meta["window"]} if meta.get("window") else {})}


@contextlib.contextmanager
def quiet() -> Any:
    """torch's exporters warn about tracing details that do not apply here (constant shapes are intended)."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


def logits_check(fmt: str, got: np.ndarray, expected: np.ndarray, limit: float, what: str, advice: str) -> dict[str, Any]:
    """The export's logits against PyTorch's: within `limit` of their scale, every top-1 class the same; else ExportError."""
    diff = float(np.abs(got.astype(np.float32) - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    # float32 sums in another order differ by about 1e-5 of the logits' scale (eager PyTorch at batch 1 and batch 16 by 1e-4
    # on the demo's logits of up to 10): the limit is relative to that scale, and never tighter than LOGITS_TOLERANCE.
    tolerance = limit * max(1.0, float(np.abs(expected).max()))
    summary = f"logits max abs diff {diff:.2e} (limit {tolerance:.2e}), top-1 agreement {agree:.3f} on {what}"
    if diff > tolerance or agree < 1.0:
        raise ExportError(f"the {fmt} export does not match PyTorch: {summary}; nothing was written. {advice}")
    return {"logits_max_abs_diff": diff, "tolerance": tolerance, "top1_agreement": agree, "summary": summary}


def runner(fmt: str, path: Path, device: str = "cpu"):  # noqa: ANN202 - a function of a batch
    """A function running the exported file on its input tensors (in the graph's order), returning its first output as numpy."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *xs: session.run(None, {n: x.cpu().numpy() for n, x in zip(names, xs, strict=True)})[0]
    loaded = torch.jit.load(str(path), map_location=device)

    def run(*xs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            out = loaded(*(x.to(device) for x in xs))
        return (out[0] if isinstance(out, tuple | list) else out).float().cpu().numpy()

    return run

"""Detector files: one weights-only format for both families, and the dispatch between them.

A detector checkpoint is a plain dict (`format`, `arch`, `family`, `classes`, `image_size`,
`state_dict`) loaded with `torch.load(weights_only=True)`: nothing is unpickled. Models saved
by Ultralytics itself are pickles; they load with `weights_only=True` too, allowing only torch's and
Ultralytics' model classes (`yolo.load_ultralytics_checkpoint`); anything more only when the user sets
`pretrained.allow_pickle`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptflow.detection import frcnn, yolo
from adaptflow.models import load_weights_only

CHECKPOINT_FORMAT = "adaptflow-detector/1"
ARCHS = yolo.ARCHS + frcnn.ARCHS


def family(arch: str) -> str:
    """`yolo` or `fasterrcnn`."""
    if arch in yolo.ARCHS:
        return "yolo"
    if arch in frcnn.ARCHS:
        return "fasterrcnn"
    raise ValueError(f"'{arch}' is not a detector: use one of {', '.join(ARCHS)}")


def build_detector(arch: str, num_classes: int, image_size: int, head_width: int | None = None) -> nn.Module:
    return yolo.build(arch, num_classes, head_width) if family(arch) == "yolo" else frcnn.build(arch, num_classes, image_size)


def save_detector(path: str | Path, model: nn.Module, *, arch: str, classes: tuple[str, ...], image_size: int,
                  extra: dict[str, Any] | None = None) -> None:
    """Write a weights-only detector file (atomically, byte-identical for equal weights)."""
    from adaptflow.io import atomic_write

    blob = {
        "format": CHECKPOINT_FORMAT, "arch": arch, "family": family(arch), "classes": list(classes),
        "image_size": image_size, "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "extra": extra or {},
    }
    if family(arch) == "yolo":
        blob["head_width"] = yolo.head_width_of(model)
    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        torch.save(blob, fh)


def read_detector_meta(path: str | Path) -> dict[str, Any] | None:
    """An adaptflow detector file's metadata (`arch`, `family`, `classes`, `image_size`, `extra`, ...), read without
    building the model; None for an Ultralytics checkpoint, whose metadata sits inside the pickled model."""
    blob = load_weights_only(path, True, "")
    if blob is None:
        return None
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an adaptflow detector file (expected format {CHECKPOINT_FORMAT})")
    del blob["state_dict"]
    return blob | {"classes": tuple(blob["classes"])}


def load_detector(path: str | Path, allow_pickle: bool = False) -> tuple[nn.Module, dict[str, Any]]:
    """A detector from an adaptflow file, or from an Ultralytics checkpoint (rebuilding only torch's and Ultralytics'
    model classes from it; anything else only with `allow_pickle`)."""
    blob = load_weights_only(path, True, "")  # None: pickled, as Ultralytics saves its models; loaded with their classes only
    if blob is None:
        model, arch, classes = yolo.from_ultralytics_file(Path(path), allow_pickle)
        return model, {"arch": arch, "family": "yolo", "classes": classes, "image_size": None, "extra": {}}
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an adaptflow detector file (expected format {CHECKPOINT_FORMAT})")
    model = build_detector(blob["arch"], len(blob["classes"]), blob["image_size"], blob.get("head_width"))
    try:
        model.load_state_dict(blob.pop("state_dict"))
    except RuntimeError as exc:
        raise ValueError(f"{path}: weights do not fit {blob['arch']} ({str(exc).splitlines()[0]}); re-export the model") from None
    blob["classes"] = tuple(blob["classes"])
    return model.eval(), blob


def predict(model: nn.Module, arch: str, images: torch.Tensor, batch_size: int = 64, device: str = "auto",
            for_map: bool = False) -> list[dict[str, torch.Tensor]]:
    """Per image: `boxes` (K x 4, xyxy pixels), `scores` (K), `labels` (K, class indices). `for_map`: the predictions
    mAP is measured on; for YOLO, as Ultralytics' validator makes them (a box once for every class scoring above the
    threshold), so that adaptflow's mAP of a YOLO is the one `yolo val` reports for the same weights."""
    if family(arch) == "yolo":
        return yolo.predict(model, images, batch_size, device, multi_label=for_map)
    return frcnn.predict(model, images, batch_size, device)

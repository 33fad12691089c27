"""Ultralytics' own checkpoint files: read without running code from them (only torch and Ultralytics model classes
are rebuilt), and written as Ultralytics writes a trained model, so that `YOLO(path)` opens adaptflow's."""

from __future__ import annotations

import copy
import importlib
import pathlib
import pickle
import re
import threading
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptflow import env
from adaptflow.detection.yolo.library import ultralytics
from adaptflow.errors import ModelFileError

#: Packages whose `nn.Module` classes an Ultralytics checkpoint pickles (its layers, its model class).
_MODEL_PACKAGES = ("torch.nn.modules", "ultralytics.nn.modules", "ultralytics.nn.tasks")
_LOADING = threading.Lock()  # safe_globals() edits one process-wide list: one such load at a time


def allowed_global(name: str) -> Any | None:
    """The object an Ultralytics checkpoint may name as `name`, or None: a torch or Ultralytics layer or model
    class, the namespace of its training arguments, a path, a numpy scalar. Never a function that runs code."""
    import numpy as np

    ultralytics()
    from ultralytics.utils import IterableSimpleNamespace

    module, _, attr = name.rpartition(".")
    if module in _MODEL_PACKAGES or module.startswith(tuple(f"{p}." for p in _MODEL_PACKAGES)):
        try:
            obj = getattr(importlib.import_module(module), attr, None)
        except (ImportError, ValueError):  # no such module (or no name at all)
            return None
        return obj if isinstance(obj, type) and issubclass(obj, nn.Module) else None
    data = {
        "ultralytics.utils.IterableSimpleNamespace": IterableSimpleNamespace,
        "ultralytics.yolo.utils.IterableSimpleNamespace": IterableSimpleNamespace,  # checkpoints before 8.0.44
        "pathlib.PosixPath": pathlib.PosixPath, "pathlib._local.PosixPath": pathlib.PosixPath,
        "numpy.dtype": np.dtype, "numpy.core.multiarray.scalar": np.float64(0).__reduce__()[0],
        "numpy._core.multiarray.scalar": np.float64(0).__reduce__()[0],
    }
    return data.get(name)


def load_ultralytics_checkpoint(path: Path) -> Any:
    """The content of a checkpoint saved by Ultralytics, unpickled with `weights_only=True`: only the classes
    `allowed_global` names are rebuilt, so a file that would run code when loaded is refused, naming what it refers to."""
    ultralytics()
    try:
        needed = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except ValueError:  # not a zip archive: torch.load below refuses whatever it holds
        needed = []
    allowed = {name: allowed_global(name) for name in needed}
    refused = sorted(name for name, obj in allowed.items() if obj is None)
    if refused:
        raise ModelFileError(f"{path}: refers to {', '.join(refused[:3])}, which no Ultralytics model holds, and loading it "
                             f"could run code; refused. {UNTRUSTED_FIX}")
    entries = [(obj, name) for name, obj in allowed.items()]
    with _LOADING, torch.serialization.safe_globals(entries):
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(exc))
            reason = found.group(1).strip()[:200] if found else type(exc).__name__
            raise ModelFileError(f"{path}: not a plain Ultralytics checkpoint ({reason}), and loading it could run code; "
                                 f"refused. {UNTRUSTED_FIX}") from None
        except (RuntimeError, EOFError) as exc:
            raise ModelFileError(f"{path}: not a PyTorch model file ({str(exc).splitlines()[0][:200]}); fetch it again") from None


#: What to do about a pickled model file that was refused.
UNTRUSTED_FIX = ("Use the file Ultralytics publishes (pin its sha256 with pretrained.sha256), or set pretrained.allow_pickle=true "
                 "only if you trust its source")


def from_ultralytics_file(path: Path, allow_pickle: bool = False) -> tuple[nn.Module, str, tuple[str, ...]]:
    """A model saved by Ultralytics itself (a pickled checkpoint), loaded without running code from it; with
    `allow_pickle` (the user trusts the file), one that needs more than the model classes loads fully."""
    ultralytics()
    try:
        blob = load_ultralytics_checkpoint(path)
    except ModelFileError as exc:
        if not allow_pickle:
            raise
        if refused := env.pickle_refused(allow_pickle):
            raise ModelFileError(f"{path}: holds pickled Python objects; {refused}") from exc
        blob = torch.load(path, map_location="cpu", weights_only=False)  # noqa: S614 - explicitly allowed by the user
    if not isinstance(blob, dict) or not isinstance(blob.get("ema") or blob.get("model"), nn.Module):
        raise ModelFileError(f"{path}: not an Ultralytics checkpoint (no model in it); fetch a detector, e.g. ultralytics:yolo11n.pt")
    model = (blob.get("ema") or blob["model"]).float()
    names = model.names if isinstance(model.names, dict) else dict(enumerate(model.names))
    arch = Path(str(model.yaml.get("yaml_file", ""))).stem
    return model, arch, tuple(str(names[i]) for i in sorted(names))


def save_ultralytics(path: Path, model: nn.Module, *, arch: str, classes: tuple[str, ...] | list[str], image_size: int) -> Path:
    """Write `model` as Ultralytics writes a trained model (`YOLO.save`: the module under `model`, `ema` None), with
    the class names and image size, so that `YOLO(path)` and the `yolo` command (val, predict, export) open it. The
    weights stay fp32 (Ultralytics stores fp16): its predictions are adaptflow's. Loading it runs Ultralytics'
    unpickler; adaptflow itself loads it with only the model classes allowed (`load_ultralytics_checkpoint`)."""
    from datetime import datetime

    ultra = ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    net = copy.deepcopy(model).float().cpu().eval().to(memory_format=torch.contiguous_format)
    net.names = {i: str(name) for i, name in enumerate(classes)}
    args = {**DEFAULT_CFG_DICT, "task": "detect", "mode": "train", "model": f"{arch}.yaml", "imgsz": image_size}
    net.args = {k: v for k, v in args.items() if isinstance(v, str | int | float | bool | type(None))}
    blob = {"date": datetime.now().astimezone().isoformat(), "version": ultra.__version__,
            "license": "AGPL-3.0 License (https://ultralytics.com/license)", "docs": "https://docs.ultralytics.com",
            "epoch": -1, "best_fitness": None, "model": net, "ema": None, "updates": None, "optimizer": None,
            "train_args": net.args, "train_metrics": {}, "train_results": {}}
    from adaptflow.io import atomic_write

    with atomic_write(path) as tmp, open(tmp, "wb") as fh:
        torch.save(blob, fh)
    return Path(path)

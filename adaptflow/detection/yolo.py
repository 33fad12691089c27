"""The Ultralytics adapter: the only module that imports `ultralytics`, and only when called.

Before the import it makes Ultralytics quiet and local: its settings and font live in the
project cache (never the user's home), its own MLflow, DVC, hub and sync integrations are off
(adaptflow tracks runs itself, through the trainer's epoch callback), and the font its dataset
check wants is provided from matplotlib, so no download is attempted.
"""

from __future__ import annotations

import copy
import functools
import importlib
import logging
import os
import pathlib
import pickle
import re
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptflow import child, env
from adaptflow.config import ConfigError, TrainConfig
from adaptflow.errors import ModelFileError
from adaptflow.models import load_weights_only

log = logging.getLogger(__name__)

ARCHS = ("yolov8n", "yolov8s", "yolo11n", "yolo11s")
#: Integrations Ultralytics turns on by itself when their package imports.
_INTEGRATIONS = ("sync", "mlflow", "dvc", "wandb", "clearml", "comet", "raytune", "tensorboard")
#: Where `ultralytics:NAME` assets are published.
ASSETS_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0"
#: The reference model of Ultralytics' AMP self-check, looked for in its weights folder (and downloaded there when absent).
AMP_CHECK_WEIGHTS = "yolo26n.pt"


@functools.cache
def ultralytics():  # noqa: ANN201 - the module
    """Import Ultralytics once, configured for offline, project-local use."""
    env.apply()
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    from matplotlib import font_manager

    font = Path(font_manager.findfont("DejaVu Sans"))
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):  # the fonts its plots and dataset checks look for
        if not (config_dir / name).exists():
            shutil.copyfile(font, config_dir / name)
    threads = os.environ.get("OMP_NUM_THREADS")
    import ultralytics as module
    from ultralytics import settings

    if threads is None:  # its import sets 1 for every process started later (DVC stages, torchrun workers)
        os.environ.pop("OMP_NUM_THREADS", None)

    cache = env.cache_dir() / "ultralytics"
    folders = {"weights_dir": cache / "weights", "datasets_dir": cache / "datasets", "runs_dir": cache / "runs"}
    settings.update({key: False for key in _INTEGRATIONS} | {key: str(path) for key, path in folders.items()})
    for key, path in folders.items():  # the module's copies were read from the settings file at import, before this update
        setattr(module.utils, key.upper(), path)
    return module


def asset_url(name: str) -> str:
    """The download URL of an Ultralytics release asset such as `yolo11n.pt`."""
    base = os.environ.get("ADAPTFLOW_ULTRALYTICS_ASSETS_URL", ASSETS_URL).rstrip("/")
    return f"{base}/{name}"


def ultralytics_device(cfg: TrainConfig) -> str:
    """The `device` argument of Ultralytics' trainer for a training section: `cpu`, one GPU index,
    or with `cfg.devices` > 1 the first N GPU indices ("0,1"), with which Ultralytics runs its own DDP."""
    if cfg.devices == 1:
        return _device(cfg.device)
    from adaptflow.config import PretrainConfig
    from adaptflow.distributed import devices_problem

    section = "pretrain" if isinstance(cfg, PretrainConfig) else "finetune"
    if cfg.device == "cpu" or not torch.cuda.is_available():
        raise ConfigError(f"{section}.devices={cfg.devices}: Ultralytics trains on several devices with CUDA GPUs only, and "
                          f"none is usable here; set {section}.devices=1")
    problem = devices_problem(section, cfg.device, cfg.devices)
    if problem:
        raise ConfigError("; ".join(problem))
    return ",".join(str(i) for i in range(cfg.devices))


def build(arch: str, num_classes: int, head_width: int | None = None) -> nn.Module:
    """A freshly initialised YOLO of `arch` (from its YAML, no download) with `num_classes` outputs.

    Fine-tuning from a model with more classes keeps that model's wider classification branch
    (Ultralytics transfers it whole); `head_width` rebuilds a model of that shape to load into.
    """
    ultralytics()
    from ultralytics.nn.tasks import DetectionModel

    model = DetectionModel(f"{arch}.yaml", nc=num_classes, verbose=False)
    if head_width is not None and head_width != head_width_of(model):
        model.load(DetectionModel(f"{arch}.yaml", nc=head_width, verbose=False), verbose=False)
    model.names = {i: str(i) for i in range(num_classes)}
    return model


def head_width_of(model: nn.Module) -> int:
    """Channels of the classification branch of a YOLO's Detect head (it grows with the class count)."""
    return model.model[-1].cv3[0][-1].in_channels


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


def _device(name: str) -> str:
    if name == "auto":
        return "0" if torch.cuda.is_available() else "cpu"
    return name.partition(":")[2] or "0" if name.startswith("cuda") else name


def train(
    model: nn.Module | Path,
    arch: str,
    data_yaml: Path,
    work_dir: Path,
    *,
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    **settings: Any,
) -> tuple[nn.Module | None, list[dict[str, float]]]:
    """Train with Ultralytics' trainer, starting from `model`'s weights; returns the EMA weights and
    per-epoch history. Validation uses the `val` split of `data_yaml` (never a target test split).

    `model` may be the path of an adaptflow detector file: the trainer's process loads it, and this
    one never builds the model (nor imports Ultralytics). With `save_to` (`save_detector`'s keywords
    but the model) that process also writes the trained model, and None is returned in its place.

    The trainer runs in a child process: its augmentations draw from process-global random
    generators, which a host's other threads (Prefect's) would otherwise share, so a flow run and
    `dvc repro` of the same stage train the same model. `settings` are `fit`'s keywords.
    """
    history: list[dict[str, float]] = []

    def relay(row: dict[str, float]) -> None:  # epochs come from the one process that trains, or DDP's rank 0
        history.append(row)
        if on_epoch is not None:
            on_epoch(int(row["epoch"]), row)

    trained = child.call(fit, work_dir, on_record=relay, model=str(model) if isinstance(model, Path) else model, arch=arch,
                         data_yaml=data_yaml, work_dir=work_dir, **settings)
    return trained, history


def trainer_args(arch: str, data_yaml: Path, work_dir: Path, *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                 image_size: int, freeze: int, seed: int, device: str, optimizer: str, augment: bool = True,
                 precision: str = "auto") -> dict[str, Any]:
    """The settings Ultralytics' trainer gets from `fit`'s keywords (also what `YOLO(...).train(**args)` takes)."""
    args = {
        "model": f"{arch}.yaml", "data": str(data_yaml), "epochs": epochs, "batch": batch_size, "imgsz": image_size,
        "lr0": lr, "weight_decay": weight_decay, "optimizer": "SGD" if optimizer == "sgd" else "AdamW",
        "freeze": freeze or None, "seed": seed, "deterministic": True, "device": device, "amp": device != "cpu" and precision != "off",
        "project": str(work_dir), "name": "ultralytics", "exist_ok": True, "val": False, "plots": False,
        "verbose": False, "nbs": batch_size, "warmup_epochs": min(3, max(epochs - 1, 0)), "pretrained": False,
        "workers": 2, "fliplr": 0.0,  # mirrored digits or text are other symbols: no flips
    }
    if not augment:
        args |= {"mosaic": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0, "erasing": 0.0}
    return args


def fit(
    model: nn.Module | str,
    arch: str,
    data_yaml: Path,
    work_dir: Path,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    image_size: int,
    freeze: int,
    seed: int,
    device: str,
    optimizer: str,
    augment: bool = True,
    precision: str = "auto",
    save_to: dict[str, Any] | None = None,
    emit: Callable[[dict[str, float]], None] | None = None,
) -> nn.Module | None:
    """`train` in this process; `emit` gets each epoch's record. `model` may be a detector file's path;
    with `save_to` the trained model is written (`save_detector(model=..., **save_to)`) and None returned. With several GPUs (`device` "0,1")
    Ultralytics trains in DDP workers of its own: rank 0 emits the epochs (the callbacks travel
    with the trainer, pickled), and the trained weights are read back from its last checkpoint.
    `device` is Ultralytics' own device argument, as `ultralytics_device` makes it. On a GPU it trains
    in Ultralytics' fp16 mixed precision unless `precision` is off."""
    ultralytics()
    from ultralytics.models.yolo.detect import DetectionTrainer

    path = model if isinstance(model, str) else None
    args = trainer_args(arch, data_yaml, work_dir, epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                        image_size=image_size, freeze=freeze, seed=seed, device=device, optimizer=optimizer, augment=augment,
                        precision=precision)
    trainer = DetectionTrainer(overrides=args)
    if path is not None:  # the file's weights go straight into the model the trainer builds: no model is built for them
        model = _Weights(load_weights_only(path, False, "")["state_dict"])
        trainer.model = trainer.get_model(cfg=f"{arch}.yaml", weights=model, verbose=False)
        if not model.fits(trainer.model):  # a head of another width: Ultralytics rebuilds it from the module's shape
            from adaptflow.detection.models import load_detector

            trainer.model = trainer.get_model(cfg=f"{arch}.yaml", weights=load_detector(path)[0], verbose=False)
    else:
        trainer.model = trainer.get_model(cfg=f"{arch}.yaml", weights=model, verbose=False)

    def record(t) -> None:  # noqa: ANN001 - Ultralytics' trainer
        if t.epoch >= t.epochs or int(os.environ.get("RANK", -1)) > 0:  # the final validation reports again; DDP: rank 0 reports
            return
        seconds = float(t.epoch_time or 0.0)
        row = {"epoch": t.epoch + 1, "epoch_seconds": seconds}
        row |= {k.replace("/", "_"): float(v) for k, v in t.label_loss_items(t.tloss, prefix="train").items()}
        row |= {f"val_{k.split('/')[-1].replace('(B)', '')}": float(v) for k, v in (t.metrics or {}).items() if "(B)" in k}
        if seconds:
            row["images_per_second"] = len(t.train_loader.dataset) / seconds
        if emit is not None:
            emit(row)

    trainer.add_callback("on_fit_epoch_end", record)
    import ultralytics.engine.trainer as engine

    engine.check_amp = amp_check  # this process's trainer; Ultralytics' DDP workers import their own
    trainer.train()
    if trainer.ema is None:  # DDP: the workers trained; their EMA weights are in the last checkpoint (stored in fp16)
        trained = from_ultralytics_file(Path(trainer.last))[0]
    else:
        trained = copy.deepcopy(trainer.ema.ema).float().cpu()
    if save_to is None:
        return trained
    from adaptflow.detection.models import save_detector

    save_detector(model=trained, **save_to)
    return None


class _Weights:
    """A detector file's weights where Ultralytics' `BaseModel.load` takes a model: it reads `.float().state_dict()`."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self.state = state

    def float(self) -> _Weights:
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.float() if v.is_floating_point() else v for k, v in self.state.items()}

    def fits(self, model: nn.Module) -> bool:
        """Whether every tensor has its place, of its shape, in `model` (so all of them were loaded)."""
        own = model.state_dict()
        return all(k in own and own[k].shape == v.shape for k, v in self.state.items())


def amp_check(model: nn.Module) -> bool:
    """Ultralytics' AMP self-check where its reference weights are at hand. Without them it would
    download them in the middle of training (and fail offline): AMP stays on unchecked instead, and
    the log says how to run the check or turn AMP off."""
    from ultralytics.utils import WEIGHTS_DIR
    from ultralytics.utils.checks import check_amp

    reference = WEIGHTS_DIR / AMP_CHECK_WEIGHTS
    if next(model.parameters()).device.type != "cuda" or reference.is_file():
        return check_amp(model)
    log.warning("AMP self-check skipped: its reference model %s is not in %s, and nothing is downloaded during training; "
                "training in fp16 mixed precision. Put the file there to run the check, or set precision=off if losses turn NaN",
                AMP_CHECK_WEIGHTS, reference.parent)
    return True


def predict(model: nn.Module, images: torch.Tensor, batch_size: int, device: str, conf: float = 0.001, iou: float = 0.7,
            max_det: int = 100, multi_label: bool = False) -> list[dict[str, torch.Tensor]]:
    """Boxes (xyxy pixels), scores and class indices for uint8 images (N x 3 x H x W). The model moves
    to the device before inference mode, so that it can still be trained afterwards. `multi_label`: a box
    for every class scoring above `conf`, as Ultralytics' validator measures mAP (with max_det 300)."""
    ultralytics()
    from ultralytics.utils.nms import non_max_suppression

    from adaptflow.training import resolve_device

    dev = resolve_device(device)
    model = model.to(dev).eval()
    stride = int(max(model.stride.max().item(), 32))
    h, w = images.shape[-2:]
    pad = (0, (-w) % stride, 0, (-h) % stride)
    results: list[dict[str, torch.Tensor]] = []
    with torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = torch.nn.functional.pad(images[start : start + batch_size].to(dev).float().div_(255), pad, value=114 / 255)
            out = model(x)
            for det in non_max_suppression(out[0] if isinstance(out, tuple | list) else out, conf, iou, multi_label=multi_label,
                                           max_det=300 if multi_label else max_det):
                det = det.float().cpu()
                det[:, 0:4:2] = det[:, 0:4:2].clamp(0, w)  # boxes stay inside the (unpadded) image
                det[:, 1:4:2] = det[:, 1:4:2].clamp(0, h)
                results.append({"boxes": det[:, :4], "scores": det[:, 4], "labels": det[:, 5].long()})
    return results

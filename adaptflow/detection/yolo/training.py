"""Training a YOLO with Ultralytics' trainer, in a child process, from adaptflow's settings and detector files."""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adaptflow import child
from adaptflow.config import ConfigError, TrainConfig
from adaptflow.detection.yolo.checkpoints import from_ultralytics_file
from adaptflow.detection.yolo.library import ultralytics
from adaptflow.models import load_weights_only

log = logging.getLogger(__name__)

#: The reference model of Ultralytics' AMP self-check, looked for in its weights folder (and downloaded there when absent).
AMP_CHECK_WEIGHTS = "yolo26n.pt"


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

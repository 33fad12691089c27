"""The pretrain stage: train a torchvision architecture on the source domain and publish it.

Offline there are no published weights to download, so the demo makes its own source model.
It is published as a folder holding `model.pt` (weights-only), `model.pt.sha256`, and the
source metrics; the transfer stages then fetch it through the same resolver as any other
pretrained model.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptflow import env
from adaptflow.config import DataConfig, PretrainConfig
from adaptflow.data import load_split
from adaptflow.errors import ConfigError
from adaptflow.io import sha256_file, staged_dir, write_json
from adaptflow.launch import FitJob, fit_on_devices
from adaptflow.metrics import classification_report
from adaptflow.models import build_classifier, save_checkpoint
from adaptflow.training import EpochCallback, predict, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PublishedModel:
    """Where the source model was published, its hash, and how well it does on the source test split."""

    path: str
    sha256: str
    metrics: dict[str, float]

    def to_dict(self) -> dict:
        return asdict(self)


def published_dir(cfg: PretrainConfig) -> Path:
    """Where the source model is published: `pretrain.output`, which must stay inside the project
    folder (ConfigError otherwise), so that a flow run never writes anywhere else on the worker."""
    try:
        return env.inside_project(cfg.output, "pretrain.output")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def publish(cfg: PretrainConfig, save: Callable[[Path], None], metrics: dict[str, float], history: list[dict], work_dir: Path) -> PublishedModel:
    """Publish `cfg.output` in one step: `model.pt` (written by `save`), its `.sha256`, metrics and history."""
    final = published_dir(cfg)
    with staged_dir(final) as staging:
        save(staging / "model.pt")
        digest = sha256_file(staging / "model.pt")
        (staging / "model.pt.sha256").write_text(f"{digest}  model.pt\n")
        write_json(staging / "metrics.json", metrics)
        write_json(staging / "history.json", history)
    for leftover in ("train_state.pt", "train_state.json"):  # only an unfinished run needs them
        (work_dir / leftover).unlink(missing_ok=True)
    log.info("published source model %s (%s)", final / "model.pt", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return PublishedModel(str(final / "model.pt"), digest, metrics)


def fit_job(spec: dict) -> FitJob:
    """The pretrain's training job, made from the JSON `spec` that `pretrain` writes: by `pretrain`
    itself and, with `devices` > 1, by each torchrun worker."""
    cfg, data = PretrainConfig.model_validate(spec["cfg"]), DataConfig.model_validate(spec["data"])
    train = load_split(data, data.source, "train")
    seed_everything(cfg.seed)  # the initial weights are part of what the seed fixes
    model = build_classifier(cfg.arch, len(train.classes))
    fingerprint = f"pretrain:{cfg.model_dump_json()}:{data.model_dump_json()}"
    return FitJob(model, cfg.arch, train, cfg, Path(spec["work_dir"]), fingerprint)


def pretrain(cfg: PretrainConfig, data: DataConfig, work_dir: Path, on_epoch: EpochCallback | None = None) -> PublishedModel:
    """Train on `<source>/train`, measure on `<source>/test`, publish to `cfg.output`
    (with `cfg.devices` > 1, trained by that many data-parallel workers)."""
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = {"cfg": cfg.model_dump(mode="json"), "data": data.model_dump(mode="json"), "work_dir": str(work_dir.resolve())}
    job = fit_job(spec)
    train, model = job.train, job.model
    test = load_split(data, data.source, "test", train.classes)
    history = fit_on_devices(job, fit_job, spec, cfg.devices, "pretrain", on_epoch)
    report = classification_report(test.labels, predict(model, test.images, device=cfg.device), test.classes)

    def save(path: Path) -> None:
        save_checkpoint(path, model, arch=cfg.arch, classes=train.classes, image_size=data.image_size, window=data.window,
                        extra={"domain": data.source})

    metrics = {"source_accuracy": report["accuracy"], "source_macro_f1": report["macro_f1"]}
    return publish(cfg, save, metrics, history, work_dir)

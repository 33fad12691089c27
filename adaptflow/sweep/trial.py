"""One trial = one function call: fine-tune and evaluate one combination with the pipeline's own
stage functions, score it, and log it as a child run of the sweep's MLflow run. No registration:
a sweep selects, and the chosen overrides then go through the transfer flow."""

from __future__ import annotations

import logging
from pathlib import Path

from adaptflow import tracking
from adaptflow.config import DataConfig, EvaluateConfig, RunConfig
from adaptflow.data import load_split, split_dir
from adaptflow.io import read_json, write_json
from adaptflow.weights import PretrainedRef
from adaptflow.stages import RunStages
from adaptflow.sweep.plan import Trial
from adaptflow.training import torch_threads
from adaptflow.versioning import VersioningError, read_version

log = logging.getLogger(__name__)


def unsupervised_scores(cfg: EvaluateConfig, data: DataConfig, model_path: str | Path, device: str = "auto") -> dict[str, float]:
    """Every unsupervised validator's score of a classifier on the target's unlabeled split (no
    labels used); empty when the target has no unlabeled split."""
    from adaptflow.training import score_model
    from adaptflow.models import load_checkpoint

    if not split_dir(data, data.target, "unlabeled").is_dir():
        return {}
    model, meta = load_checkpoint(model_path)
    unlabeled = load_split(data, data.target, "unlabeled", meta["classes"])
    return score_model(model, unlabeled.images, cfg.batch_size, device)


def run_trial(trial: Trial, pretrained: PretrainedRef, work_dir: Path, parent_run_id: str, threads: int = 1) -> dict:
    """Fine-tune and evaluate `trial` in `work_dir` (a retry resumes from its last epoch and
    reuses its MLflow run); returns its metrics and validator scores."""
    cfg = trial.config
    run_id = _child_run(trial, work_dir, parent_run_id)
    with tracking.ended_on_failure(cfg.tracking, run_id), torch_threads(threads):
        stages = RunStages(cfg)
        stages.check_pretrained(pretrained)
        model = stages.finetune(pretrained, work_dir, tracking.epoch_logger(cfg.tracking, run_id))
        metrics = stages.evaluate(model.path, pretrained, work_dir)
        if cfg.task == "classification":
            metrics |= unsupervised_scores(cfg.evaluate, cfg.data, model.path, cfg.finetune.device)
    tracking.log_metrics(cfg.tracking, run_id, metrics)
    tracking.finish_run(cfg.tracking, run_id)
    history = read_json(work_dir / "finetune" / "history.json")
    log.info("%s %s: %s", trial.name, trial.label, {k: round(v, 4) for k, v in metrics.items()})
    return {"index": trial.index, "name": trial.name, "overrides": trial.overrides, "metrics": metrics,
            "train_seconds": sum(h["epoch_seconds"] for h in history), "model_path": model.path, "mlflow_run_id": run_id}


def failed_trial(trial: Trial, error: BaseException | str) -> dict:
    """The row of a trial that failed (after its retries): kept in the table, never picked."""
    return {"index": trial.index, "name": trial.name, "overrides": trial.overrides, "metrics": {}, "error": str(error)}


def _child_run(trial: Trial, work_dir: Path, parent_run_id: str) -> str:
    record = work_dir / "mlflow_run.json"
    if record.exists():
        return read_json(record)["mlflow_run_id"]
    cfg = trial.config
    tags = {"stage": "sweep-trial", "trial": trial.name, "overrides": trial.label, "config_digest": cfg.digest()}
    run_id = tracking.start_run(cfg.tracking, f"{trial.name} {trial.label}", tags, cfg.model_dump(mode="json"), parent_run_id=parent_run_id)
    write_json(record, {"mlflow_run_id": run_id})
    return run_id


def open_parent_run(config: RunConfig, grid: dict, metric: str, trials: int, origin: str, run_name: str) -> str:
    """The sweep's MLflow run, which every trial nests under: lineage tags, the base config and the grid."""
    try:
        data_version = read_version(config.data).md5
    except VersioningError:
        data_version = "unversioned"
    tags = {"stage": "sweep", "git_commit": tracking.git_commit(), "data_version": data_version, "config_digest": config.digest(),
            "origin": origin, "metric": metric, "trials": str(trials)}
    params = {**config.model_dump(mode="json"), "sweep": {"metric": metric, "grid": {k: str(v) for k, v in grid.items()}}}
    return tracking.start_run(config.tracking, run_name, tags, params)

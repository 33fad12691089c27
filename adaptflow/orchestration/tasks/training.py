"""Training tasks. A retry resumes from the last epoch checkpoint in the run folder."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from adaptflow import env, tracking
from adaptflow.config import RunConfig
from adaptflow.finetune import TrainedModel
from adaptflow.orchestration.tasks.common import NO_RESULT_CACHE, TRAINING_RETRY
from adaptflow.orchestration.tasks.progress import epoch_progress
from adaptflow.pipeline import run_pretrain
from adaptflow.pretrain import PublishedModel
from adaptflow.weights import PretrainedRef
from adaptflow.stages import RunStages
from adaptflow.versioning import DataVersion


@task(name="pretrain", task_run_name="pretrain {config.pretrain.arch} on {config.data.source}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def pretrain_task(config: RunConfig, run_dir: Path, data: DataVersion, origin: str) -> PublishedModel:
    """Train the source model and publish it with its sha256."""
    return run_pretrain(config, run_dir, data, origin)


@task(name="finetune", task_run_name="finetune {config.finetune.strategy}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def finetune_task(config: RunConfig, pretrained: PretrainedRef, run_dir: Path, mlflow_run_id: str) -> TrainedModel:
    """Fine-tune on the labeled target split, logging each epoch to the MLflow run and to a progress artifact."""
    env.apply_threads(config.threads)
    on_epoch = epoch_progress(config.finetune.epochs, f"Fine-tuning {config.finetune.arch} on {config.data.target}",
                              then=tracking.epoch_logger(config.tracking, mlflow_run_id))
    return RunStages(config).finetune(pretrained, run_dir, on_epoch)

"""Evaluation task."""

from __future__ import annotations

from pathlib import Path

from prefect import task

from adaptflow import env
from adaptflow.config import RunConfig
from adaptflow.finetune import TrainedModel
from adaptflow.orchestration.tasks.common import NO_RESULT_CACHE
from adaptflow.weights import PretrainedRef
from adaptflow.stages import RunStages


@task(name="evaluate", task_run_name="evaluate on {config.data.target}", **NO_RESULT_CACHE)
def evaluate_task(config: RunConfig, model: TrainedModel, pretrained: PretrainedRef, run_dir: Path) -> dict[str, float]:
    """Target and source test metrics, and the source-only baseline."""
    env.apply_threads(config.threads)
    return RunStages(config).evaluate(model.path, pretrained, run_dir)

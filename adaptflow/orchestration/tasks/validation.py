"""Validation task: runs first, so bad data or config stop the flow before any compute."""

from __future__ import annotations

from prefect import task

from adaptflow.config import RunConfig
from adaptflow.orchestration.tasks.common import NO_RESULT_CACHE
from adaptflow.validate import validate


@task(name="validate", task_run_name="validate {stage} inputs", **NO_RESULT_CACHE)
def validate_task(config: RunConfig, stage: str = "transfer") -> dict:
    """Check the splits `stage` reads and the config; raises with each problem, its file and its fix."""
    return validate(config, stage).to_dict()

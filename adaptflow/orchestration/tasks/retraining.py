"""Tasks of the retraining flow: decide whether to train, and record a decision not to."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_markdown_artifact

from adaptflow.config import RunConfig
from adaptflow.orchestration.tasks.common import NETWORK_RETRIES, NO_RESULT_CACHE
from adaptflow.pipeline import record_skip, retrain_decision
from adaptflow.versioning import DataVersion


@task(name="decide-retrain", task_run_name="decide whether to retrain", **NETWORK_RETRIES, **NO_RESULT_CACHE)
def retrain_decision_task(config: RunConfig, data: DataVersion) -> tuple[bool, str]:
    """Train only when the data or the config differ from what the champion was made from."""
    return retrain_decision(config, data)


@task(name="record-skip", task_run_name="record skipped retraining", **NETWORK_RETRIES, **NO_RESULT_CACHE)
def record_skip_task(config: RunConfig, data: DataVersion, reason: str, origin: str) -> str:
    """Record the decision not to retrain in MLflow and as a Prefect artifact."""
    run_id = record_skip(config, data, reason, origin)
    create_markdown_artifact(
        f"# Retraining skipped\n\n{reason}\n\nData version `{data.md5}`, MLflow run `{run_id}`.",
        key="retrain-decision", description="Retraining decision",
    )
    return run_id

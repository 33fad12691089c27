"""Tracking and registration tasks (they talk to the MLflow server: retried)."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from adaptflow import tracking
from adaptflow.config import RunConfig
from adaptflow.orchestration.tasks.common import NETWORK_RETRIES, NO_RESULT_CACHE
from adaptflow.pipeline import open_run, register_run
from adaptflow.weights import PretrainedRef
from adaptflow.tracking.packaging import Registration
from adaptflow.versioning import DataVersion


@task(name="open-mlflow-run", task_run_name="open MLflow run {run_name}", **NETWORK_RETRIES, **NO_RESULT_CACHE)
def open_run_task(config: RunConfig, data: DataVersion, pretrained: PretrainedRef, run_dir: Path, origin: str, run_name: str) -> str:
    """Open the pipeline's MLflow run with its lineage tags; returns the run id."""
    return open_run(config, data, pretrained, run_dir, origin, run_name)


@task(name="register", task_run_name="register {config.registry.model_name}", **NETWORK_RETRIES, **NO_RESULT_CACHE)
def register_task(config: RunConfig, run_dir: Path) -> Registration:
    """Log and register the model; the champion gate decides its alias. Safe to retry."""
    return register_run(config, run_dir)


@task(name="summarize", task_run_name="summarize for the UI", **NO_RESULT_CACHE)
def summarize_task(config: RunConfig, metrics: dict[str, float], registration: Registration, data: DataVersion) -> str:
    """Artifacts in the Prefect UI: the metrics as a table, links to the MLflow run and model version, and a
    markdown summary with the gate's decision."""
    rows = "\n".join(f"| {name} | {value:.4f} |" for name, value in metrics.items())
    url = tracking.run_url(config.tracking, registration.run_id)
    version_url = tracking.model_version_url(config.tracking, registration.name, registration.version)
    create_table_artifact([{"metric": name, "value": round(float(value), 4)} for name, value in metrics.items()],
                          key="transfer-metrics", description=f"Metrics of {registration.name} v{registration.version} ({registration.decision})")
    create_link_artifact(url, link_text=f"MLflow run {registration.run_id}", key="mlflow-run", description="The run's MLflow page")
    create_link_artifact(version_url, link_text=f"{registration.name} v{registration.version} ({registration.alias})",
                         key="mlflow-model-version", description="The model version: lineage tags and model card")
    markdown = (
        f"# {config.task}: {config.finetune.arch} on {config.data.target}\n\n"
        f"| metric | value |\n|---|---|\n{rows}\n\n"
        f"**Model** `{registration.model_uri}` alias `{registration.alias}`: {registration.decision} ({registration.reason})\n\n"
        f"**Data version** `{data.md5}`  \n**MLflow run** [{registration.run_id}]({url})  \n"
        f"**Model version** [{registration.name} v{registration.version}]({version_url})\n"
    )
    create_markdown_artifact(markdown, key="transfer-summary", description="Transfer run summary")
    return markdown

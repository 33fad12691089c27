"""Dataset versioning task."""

from __future__ import annotations

from prefect import task

from adaptflow.config import DataConfig
from adaptflow.orchestration.tasks.common import NETWORK_RETRIES, NO_RESULT_CACHE
from adaptflow.versioning import DataVersion, version_data


@task(name="version-data", task_run_name="version {cfg.root}", **NETWORK_RETRIES, **NO_RESULT_CACHE)
def version_data_task(cfg: DataConfig) -> DataVersion:
    """`dvc add` + `dvc push` the data folder; returns its md5 (retried: pushes cross the network)."""
    return version_data(cfg)

"""The pretrain flow: version data -> train the source model -> publish it with its sha256."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from adaptflow.config import RunConfig
from adaptflow.orchestration.flows.naming import pretrain_run_name, run_dir
from adaptflow.orchestration.tasks.data import version_data_task
from adaptflow.orchestration.tasks.notify import on_failure
from adaptflow.orchestration.tasks.training import pretrain_task
from adaptflow.orchestration.tasks.validation import validate_task


@flow(name="pretrain", flow_run_name=pretrain_run_name, on_failure=[on_failure])
def pretrain(config: RunConfig = RunConfig()) -> dict:
    """Train a source model on the source domain; transfer runs then fetch it like any pretrained model."""
    validate_task(config, "pretrain")
    data = version_data_task(config.data)
    published = pretrain_task(config, run_dir(), data, str(flow_run.id))
    return {"published": published.to_dict(), "data_version": data.md5}

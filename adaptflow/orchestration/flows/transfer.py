"""The transfer flow: validate -> version data -> fetch pretrained -> fine-tune -> evaluate -> register
(-> a webhook when the model is promoted, or when the run fails)."""

from __future__ import annotations

from prefect import flow
from prefect.runtime import flow_run

from adaptflow.config import RunConfig
from adaptflow.orchestration.flows.naming import add_data_version, run_dir, transfer_run_name
from adaptflow.orchestration.tasks.data import version_data_task
from adaptflow.orchestration.tasks.evaluation import evaluate_task
from adaptflow.orchestration.tasks.notify import notify_promotion_task, on_failure
from adaptflow.orchestration.tasks.pretrained import check_pretrained_task, fetch_pretrained_task
from adaptflow.orchestration.tasks.registry import open_run_task, register_task, summarize_task
from adaptflow.orchestration.tasks.training import finetune_task
from adaptflow.orchestration.tasks.validation import validate_task
from adaptflow.tracking.runs import ended_on_failure


@flow(name="transfer", flow_run_name=transfer_run_name, on_failure=[on_failure])
def transfer(config: RunConfig = RunConfig()) -> dict:
    """Adapt a pretrained model to the target domain and register it if it beats the champion."""
    folder = run_dir()
    validate_task(config)
    data_future = version_data_task.submit(config.data)
    pretrained_future = fetch_pretrained_task.submit(config)
    data, pretrained = data_future.result(), pretrained_future.result()
    add_data_version(data.md5)
    check_pretrained_task(config, pretrained)
    mlflow_run_id = open_run_task(config, data, pretrained, folder, str(flow_run.id), flow_run.name)
    with ended_on_failure(config.tracking, mlflow_run_id):
        model = finetune_task(config, pretrained, folder, mlflow_run_id)
        metrics = evaluate_task(config, model, pretrained, folder)
        registration = register_task(config, folder)
    summarize_task(config, metrics, registration, data)
    if registration.decision == "promoted":
        notify_promotion_task(registration, flow_run.name, str(flow_run.id))
    return {"metrics": metrics, "registration": registration.to_dict(), "data_version": data.md5, "run_dir": str(folder)}

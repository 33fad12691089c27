"""The retraining flow: version the data, retrain only if data or config changed, then let the
registry gate decide whether the challenger replaces the champion."""

from __future__ import annotations

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from adaptflow.config import RunConfig
from adaptflow.orchestration.flows.naming import retrain_run_name
from adaptflow.orchestration.flows.transfer import transfer
from adaptflow.orchestration.tasks.data import version_data_task
from adaptflow.orchestration.tasks.notify import on_failure
from adaptflow.orchestration.tasks.retraining import record_skip_task, retrain_decision_task
from adaptflow.orchestration.tasks.validation import validate_task


@flow(name="retrain", flow_run_name=retrain_run_name, on_failure=[on_failure])
def retrain(config: RunConfig = RunConfig(), force: bool = False) -> dict:
    """Scheduled or triggered retraining. `force` trains even when nothing changed."""
    validate_task(config)
    data = version_data_task(config.data)
    train, reason = retrain_decision_task(config, data)
    if not (train or force):
        record_skip_task(config, data, reason, str(flow_run.id))
        return {"decision": "skipped", "reason": reason, "data_version": data.md5}
    result = transfer(config=config)
    registration = result["registration"]
    create_markdown_artifact(
        f"# Retrained: {registration['decision']}\n\nWhy retrain: {reason if train else 'forced'}\n\n"
        f"Gate: {registration['reason']}\n\n`{registration['model_uri']}` alias `{registration['alias']}`",
        key="retrain-decision", description="Retraining decision",
    )
    return {"decision": registration["decision"], "reason": registration["reason"], "why": reason, **result}

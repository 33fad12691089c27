"""Notifications: a POST to a webhook when a flow run fails or a model is promoted to champion.

The webhook is a Prefect `Webhook` block the user saves once, named `adaptflow-notify` (or the name in
`$ADAPTFLOW_NOTIFY_BLOCK`): its URL and headers are kept by the Prefect server as secrets, so they stay
out of configs and of git, and every worker that runs a flow finds them. Without that block nothing is
sent. A webhook that cannot be reached is logged as a warning; it never fails a run.

    from prefect.blocks.webhook import Webhook
    Webhook(url="https://hooks.slack.com/services/...").save("adaptflow-notify")

The body is JSON: `{"event": "failed" | "promoted", "text": "<one line a person reads>", ...details}`
(`text` is what Slack and Mattermost incoming webhooks show).
"""

from __future__ import annotations

import logging
import os
from typing import Any

import httpx
from prefect import task
from prefect.blocks.webhook import Webhook
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import ObjectNotFound
from prefect.settings import PREFECT_UI_URL
from prefect.states import State

from adaptflow.orchestration.tasks.common import NO_RESULT_CACHE
from adaptflow.tracking.packaging import Registration

log = logging.getLogger(f"adaptflow.{__name__}")  # under adaptflow: its lines reach the flow run's log
BLOCK_VAR = "ADAPTFLOW_NOTIFY_BLOCK"
DEFAULT_BLOCK = "adaptflow-notify"
TIMEOUT_SECONDS = 10.0


def webhook() -> Webhook | None:
    """The Webhook block notifications go to, or None when the user saved none."""
    name = os.environ.get(BLOCK_VAR) or DEFAULT_BLOCK
    try:
        return Webhook.load(name)
    except (ValueError, ObjectNotFound):
        return None


def send(event: str, text: str, **details: Any) -> bool:
    """POST `{"event", "text", **details}` to the webhook; True if it answered 2xx."""
    hook = webhook()
    if hook is None:
        return False
    try:
        response = httpx.request(hook.method, hook.url.get_secret_value(), headers=hook.headers.get_secret_value(),
                                 json={"event": event, "text": text, **details}, timeout=TIMEOUT_SECONDS, verify=hook.verify)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        log.warning("could not notify the %s webhook of %s: %s", os.environ.get(BLOCK_VAR) or DEFAULT_BLOCK, event, exc)
        return False
    return True


def flow_run_url(flow_run_id: object) -> str:
    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}/runs/flow-run/{flow_run_id}" if base else ""


def on_failure(flow: object, flow_run: FlowRun, state: State) -> None:
    """Flow hook: report a failed run. A subflow's failure is reported by the run that started it."""
    if flow_run.parent_task_run_id is not None:
        return
    send("failed", f"{flow_run.name} failed: {state.message}", flow=getattr(flow, "name", ""), flow_run=flow_run.name,
         flow_run_id=str(flow_run.id), state=state.name, message=state.message or "", url=flow_run_url(flow_run.id))


@task(name="notify-promotion", task_run_name="notify promotion of {registration.name} v{registration.version}", **NO_RESULT_CACHE)
def notify_promotion_task(registration: Registration, flow_run_name: str, flow_run_id: str) -> bool:
    """Report a version that became the champion; True if the webhook took it."""
    return send("promoted", f"{registration.name} v{registration.version} is the new champion: {registration.reason}",
                model=registration.name, version=registration.version, model_uri=registration.model_uri,
                reason=registration.reason, mlflow_run_id=registration.run_id, flow_run=flow_run_name,
                flow_run_id=flow_run_id, url=flow_run_url(flow_run_id))

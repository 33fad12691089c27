"""Pretrained-model fetch task."""

from __future__ import annotations

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from adaptflow.config import PretrainedConfig, TrackingConfig
from adaptflow.pretrained import PretrainedRef, TransientFetchError, fetch_pretrained
from adaptflow.tracking import tracking_uri
from tasks.common import NETWORK_RETRIES, NO_RESULT_CACHE


def _transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry only failures that may pass (timeouts, resets, 5xx); a 404 or a bad hash fails at once."""
    try:
        state.result()
    except TransientFetchError:
        return True
    except Exception:  # noqa: BLE001 - any other failure is permanent
        return False
    return False


@task(name="fetch-pretrained", task_run_name="fetch {cfg.uri}", retry_condition_fn=_transient, **NETWORK_RETRIES, **NO_RESULT_CACHE)
def fetch_pretrained_task(cfg: PretrainedConfig, tracking: TrackingConfig) -> PretrainedRef:
    """Resolve the pretrained URI to a verified local file."""
    return fetch_pretrained(cfg.uri, cfg.sha256, tracking_uri=tracking_uri(tracking))

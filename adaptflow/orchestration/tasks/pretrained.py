"""Pretrained-model fetch task."""

from __future__ import annotations

from prefect import Task, task
from prefect.client.schemas.objects import TaskRun
from prefect.states import State

from adaptflow.config import RunConfig
from adaptflow.orchestration.tasks.common import NETWORK_RETRIES, NO_RESULT_CACHE, failure
from adaptflow.weights import PretrainedRef, TransientFetchError
from adaptflow.stages import RunStages


def _transient(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry only failures that may pass (timeouts, resets, 5xx); a 404 or a bad hash fails at once."""
    return isinstance(failure(state), TransientFetchError)


@task(name="fetch-pretrained", task_run_name="fetch {config.pretrained.uri}", **(NETWORK_RETRIES | {"retry_condition_fn": _transient}),
      **NO_RESULT_CACHE)
def fetch_pretrained_task(config: RunConfig) -> PretrainedRef:
    """Resolve the pretrained URI to a verified local file."""
    return RunStages(config).fetch_pretrained()


@task(name="check-pretrained", task_run_name="check {config.finetune.arch} for {config.data.target}", **NO_RESULT_CACHE)
def check_pretrained_task(config: RunConfig, pretrained: PretrainedRef) -> None:
    """Load the pretrained model and fit it a head for the target classes, before any compute is spent.

    Called in the flow's own thread, not submitted: torch work on a second thread keeps a second
    OpenMP pool alive, which slowed the rest of the flow by about 15%.
    """
    RunStages(config).check_pretrained(pretrained)

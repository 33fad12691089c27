"""What every task shares: no result caching (stages cache by content themselves) and backoff."""

from __future__ import annotations

from prefect import Task
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff

from adaptflow.config import ConfigError
from adaptflow.tracking.registry import RegistryError
from adaptflow.validate import DataValidationError

#: Failures of the input itself: the same input fails the same way, so a retry only delays the message.
INPUT_ERRORS = (ConfigError, DataValidationError, RegistryError)


def failure(state: State) -> Exception | None:
    """The exception a failed task run's state holds."""
    try:
        state.result()
    except Exception as exc:  # noqa: BLE001 - whatever the task raised
        return exc
    return None


def worth_retrying(task: Task, task_run: TaskRun, state: State) -> bool:
    """Retry what may pass on its own (a server, store or remote away, a crash); never an input error."""
    exc = failure(state)
    return exc is not None and not isinstance(exc, INPUT_ERRORS)


#: Defaults for tasks that talk to the network or a server: three retries with jittered backoff.
NETWORK_RETRIES = {"retries": 3, "retry_delay_seconds": exponential_backoff(backoff_factor=2), "retry_jitter_factor": 0.5,
                   "retry_condition_fn": worth_retrying}
#: Training tasks: one more attempt after a crash (it resumes from the last checkpoint).
TRAINING_RETRY = {"retries": 1, "retry_condition_fn": worth_retrying}
NO_RESULT_CACHE = {"cache_policy": NO_CACHE}

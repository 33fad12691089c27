"""The connection to the MLflow tracking store: its URI, a client whose calls retry transient failures, the
experiment, and the checks that a server answers. Every call names its tracking URI explicitly, so concurrent
runs never share hidden state. The run and registry modules build on this one."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator

from adaptflow import env
from adaptflow.config import TrackingConfig
from adaptflow.errors import ServiceUnavailable
from adaptflow.env import sqlite_file
from adaptflow.io import unreachable, with_retries

#: The prefix of every tag adaptflow writes on runs and model versions.
TAG = "adaptflow."
#: The registered YOLO model's weights as Ultralytics saves them, beside adaptflow's own file (`artifacts/ULTRALYTICS_FILE`):
#: written by `packaging.model_artifacts`, passed over by whoever reads adaptflow's file back from the registry.
ULTRALYTICS_FILE = "ultralytics.pt"


def tracking_uri(cfg: TrackingConfig) -> str:
    return cfg.uri or env.default_tracking_uri()


def server_problem(cfg: TrackingConfig) -> tuple[str, str] | None:
    """(what is wrong, the fix) when the tracking URI is a server that does not answer at all (not
    started, or a typo), checked once before any work; None for a file store or a server that answers.
    A server that goes away later is retried as usual."""
    uri = tracking_uri(cfg)
    if not uri.startswith(("http://", "https://")):
        return None
    reason = unreachable(f"{uri.rstrip('/')}/health")
    if reason is None:
        return None
    return (f"no MLflow server answers at {uri} ({reason})",
            "start it (`make ui`, or `make stack`), or point tracking.uri or MLFLOW_TRACKING_URI at one that answers "
            "(unset both to track in mlflow.db in the project)")


def require_server(cfg: TrackingConfig) -> None:
    """Raise TrackingUnavailable at once when `server_problem` finds one."""
    problem = server_problem(cfg)
    if problem:
        raise TrackingUnavailable("; ".join(problem))


#: Failures of the tracking store that pass: a busy SQLite file, a server restarting.
TRANSIENT_MARKERS = ("database is locked", "Connection refused", "Max retries exceeded", "ConnectionError",
                     "RemoteDisconnected", "Read timed out", "503", "502", "504")


class TrackingUnavailable(ServiceUnavailable):
    """The tracking store stayed unreachable through every retry."""


def _transient(exc: Exception) -> bool:
    text = f"{type(exc).__name__}: {exc}"
    return any(marker in text for marker in TRANSIENT_MARKERS)


def retrying(call, *args, attempts: int = 6, base_delay: float = 0.5, what: str = "", **kwargs):  # noqa: ANN001, ANN201
    """Call `call`, retrying transient store failures with jittered exponential backoff."""
    what = what or getattr(call, "__name__", str(call))
    try:
        return with_retries(lambda: call(*args, **kwargs), _transient, f"tracking store ({what})", attempts,
                            base_delay=base_delay, max_delay=20.0, reason=lambda exc: type(exc).__name__)
    except Exception as exc:
        if _transient(exc):
            raise TrackingUnavailable(f"tracking store unreachable after {attempts} attempts ({what}): {exc}") from exc
        raise


class RetryingClient:
    """An MlflowClient whose every call retries transient store failures."""

    def __init__(self, inner) -> None:  # noqa: ANN001 - MlflowClient
        self._inner = inner

    def __getattr__(self, name: str):  # noqa: ANN204
        value = getattr(self._inner, name)
        if not callable(value):
            return value
        return functools.partial(retrying, value, what=name)


@contextlib.contextmanager
def scoped_tracking_uri(uri: str) -> Iterator[None]:
    """MLflow's fluent API for one block only: it sets a process-wide URI and exports it to the
    environment, which would send later runs (and child processes) to this store."""
    from mlflow.tracking._tracking_service import utils

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with utils._use_tracking_uri(uri):
            yield
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def client(cfg: TrackingConfig) -> RetryingClient:
    """A client for the configured store (SQLite stores are prepared for concurrent writers)."""
    from mlflow import MlflowClient

    uri = tracking_uri(cfg)
    if sqlite_file(uri):
        _prepare_sqlite(uri)
    return RetryingClient(MlflowClient(uri))


@functools.cache
def _prepare_sqlite(uri: str) -> None:
    """Create the schema under a file lock (concurrent first runs race on it) and switch to WAL,
    so that readers never block the writer and several runs can share one file."""
    import sqlite3

    from filelock import FileLock
    from mlflow import MlflowClient

    path = sqlite_file(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        MlflowClient(uri).search_experiments(max_results=1)  # creates or upgrades the schema
        with contextlib.closing(sqlite3.connect(path, timeout=60)) as db:
            db.execute("PRAGMA journal_mode=WAL")


def _local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:", "/")) or "://" not in uri


def experiment_id(cfg: TrackingConfig) -> str:
    """The experiment's id, creating it (with artifacts inside the project for local stores)."""
    c = client(cfg)
    found = c.get_experiment_by_name(cfg.experiment)
    if found is not None:
        return found.experiment_id
    location = env.default_artifact_location() if _local_store(tracking_uri(cfg)) else None
    try:
        return c.create_experiment(cfg.experiment, artifact_location=location)
    except Exception:  # another run created it first
        found = c.get_experiment_by_name(cfg.experiment)
        if found is None:
            raise
        return found.experiment_id


"""The pipeline's MLflow runs: open one (with lineage tags and the config as params), resume it, close the ones a
killed process left RUNNING, log metrics, epochs and artifacts as they come, and finish or fail it.

One MLflow run per pipeline run: it is opened first (so epochs are logged live), and later receives the
evaluation and the model (`adaptflow.tracking.packaging.register_model`).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from adaptflow.config import TrackingConfig
from adaptflow.tracking.lineage import flatten, redact
from adaptflow.tracking.store import TAG, TrackingUnavailable, client, experiment_id, tracking_uri

log = logging.getLogger(__name__)


def start_run(cfg: TrackingConfig, run_name: str, tags: dict[str, str], params: dict[str, Any], parent_run_id: str | None = None,
              work_key: str | None = None) -> str:
    """Open the pipeline's MLflow run, with its lineage tags and flattened config as params (secrets masked).

    With `parent_run_id` the run is nested under that run (the MLflow UI shows it as a child).
    `work_key` names the work the run does (a hash of what it is made from): runs of the same work
    left RUNNING by a process that no longer exists (killed with SIGKILL, a lost machine) are
    marked FAILED and linked to this one (`adaptflow.continued_in` on them, `adaptflow.continues`
    on this one); see `close_orphans`.
    """
    from mlflow.entities import Param, RunTag

    c = client(cfg)
    run_tags = {f"{TAG}{k}": redact(k, v) for k, v in tags.items()} | {f"{TAG}owner": owner()}
    if work_key:
        run_tags[f"{TAG}work_key"] = work_key
    if parent_run_id:
        run_tags["mlflow.parentRunId"] = parent_run_id
    experiment = experiment_id(cfg)
    run = c.create_run(experiment, run_name=run_name, tags=run_tags)
    items = [Param(k, redact(k, v)[:6000]) for k, v in flatten(params).items()]
    for start in range(0, len(items), 100):
        c.log_batch(run.info.run_id, params=items[start : start + 100])
    c.log_batch(run.info.run_id, tags=[RunTag("mlflow.source.name", "adaptflow")])
    if work_key:
        close_orphans(cfg, experiment, work_key, run.info.run_id)
    return run.info.run_id


def owner() -> str:
    """This process as `host:pid:start` (its start time tells a reused pid apart)."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}:{_start_ticks(os.getpid())}"


def _start_ticks(pid: int) -> str:
    """When `pid` started (clock ticks after boot, Linux /proc); '' when it is gone or unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def owner_gone(recorded: str) -> bool:
    """Whether the process an `owner()` string names has ended. Only a process on this machine can
    be checked: one elsewhere counts as alive."""
    import socket

    try:
        host, pid, started = recorded.rsplit(":", 2)
        pid_number = int(pid)
    except ValueError:
        return False
    if host != socket.gethostname():
        return False
    if started:
        return _start_ticks(pid_number) != started
    try:
        os.kill(pid_number, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def close_orphans(cfg: TrackingConfig, experiment: str, work_key: str, successor: str) -> list[str]:
    """Mark FAILED the runs of `work_key` still RUNNING whose process is gone, linking each to
    `successor` (the run that does the work again) and back; returns their ids."""
    from mlflow.entities import RunTag

    c = client(cfg)
    found = c.search_runs([experiment], filter_string=f"tags.`{TAG}work_key` = '{work_key}' and attributes.status = 'RUNNING'")
    orphans = [r.info.run_id for r in found if r.info.run_id != successor and owner_gone(r.data.tags.get(f"{TAG}owner", ""))]
    for run_id in orphans:
        c.log_batch(run_id, tags=[RunTag(f"{TAG}continued_in", successor),
                                  RunTag(f"{TAG}end_reason", "its process ended without closing the run (killed)")])
        c.set_terminated(run_id, status="FAILED")
        log.warning("MLflow run %s was left RUNNING by a process that is gone: marked FAILED, continued in %s", run_id, successor)
    if orphans:
        c.log_batch(successor, tags=[RunTag(f"{TAG}continues", ",".join(orphans))])
    return orphans


def run_status(cfg: TrackingConfig, run_id: str) -> str | None:
    """The status of an MLflow run (RUNNING, FINISHED, FAILED, KILLED), or None when the store has no such run."""
    from mlflow.exceptions import MlflowException

    try:
        return client(cfg).get_run(run_id).info.status
    except MlflowException:
        return None


def resume_run(cfg: TrackingConfig, run_id: str) -> bool:
    """Continue an MLflow run that an earlier process of the same work left open (or that was
    marked FAILED or KILLED when it stopped): RUNNING again, owned by this process. False when the
    run is not in the store (another store, or deleted)."""
    from mlflow.entities import RunTag

    if run_status(cfg, run_id) is None:
        return False
    c = client(cfg)
    c.update_run(run_id, status="RUNNING")
    c.log_batch(run_id, tags=[RunTag(f"{TAG}owner", owner())])
    return True


def work_key(*parts: object) -> str:
    """A short hash naming a piece of work by what it is made from."""
    import json

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def set_tags(cfg: TrackingConfig, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    client(cfg).log_batch(run_id, tags=[RunTag(f"{TAG}{k}", str(v)) for k, v in tags.items()])


def log_metrics(cfg: TrackingConfig, run_id: str, metrics: dict[str, float], step: int = 0, prefix: str = "") -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    client(cfg).log_batch(run_id, metrics=[Metric(f"{prefix}{k}", float(v), now, step) for k, v in metrics.items() if isinstance(v, int | float)])


def epoch_logger(cfg: TrackingConfig, run_id: str, prefix: str = ""):  # noqa: ANN201 - EpochCallback
    """A training callback that logs each epoch's metrics to the run as it finishes."""

    down = False

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        nonlocal down
        try:
            log_metrics(cfg, run_id, {k: v for k, v in record.items() if k != "epoch"}, step=epoch, prefix=prefix)
            down = False
        except TrackingUnavailable as exc:
            # Training goes on: the epochs are in history.json and registration replays the missing ones.
            if not down:
                log.warning("could not log epoch %d: %s; training continues", epoch, exc)
            down = True

    return on_epoch


def log_history(cfg: TrackingConfig, run_id: str, history: Iterable[dict[str, float]], prefix: str = "") -> None:
    """Log recorded epochs the run does not have yet (the DVC path, and epochs missed while the store was down)."""
    logged = {m.step for m in client(cfg).get_metric_history(run_id, f"{prefix}epoch_seconds")}
    for record in history:
        if int(record["epoch"]) not in logged:
            log_metrics(cfg, run_id, {k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]), prefix=prefix)


def log_artifacts(cfg: TrackingConfig, run_id: str, paths: Iterable[str | Path]) -> None:
    """Attach files to a run."""
    c = client(cfg)
    for path in paths:
        c.log_artifact(run_id, str(path))


def finish_run(cfg: TrackingConfig, run_id: str, status: str = "FINISHED") -> None:
    client(cfg).set_terminated(run_id, status=status)


#: How long a failing run waits for its MLflow run to be marked before it goes on failing.
MARK_TIMEOUT_SECONDS = 10.0


@contextlib.contextmanager
def ended_on_failure(cfg: TrackingConfig, run_id: str) -> Iterator[None]:
    """Mark the MLflow run FAILED if the block raises, KILLED if it is interrupted or terminated
    (Ctrl-C, a cancelled or stopped flow run); the error itself goes on. Otherwise a run whose
    process failed shows as RUNNING for ever. One attempt, given MARK_TIMEOUT_SECONDS, so that a
    store that is down does not hold up a process being stopped. A resumed run (`open_run`)
    continues the same MLflow run and finishes it as usual."""
    import threading

    from mlflow import MlflowClient

    try:
        yield
    except BaseException as exc:
        status = "FAILED" if isinstance(exc, Exception) else "KILLED"

        def mark() -> None:
            try:
                MlflowClient(tracking_uri(cfg)).set_terminated(run_id, status=status)
            except Exception as mark_exc:  # noqa: BLE001 - the block's own error is the one to see
                log.warning("could not mark MLflow run %s %s: %s", run_id, status, mark_exc)

        marker = threading.Thread(target=mark, name="mark-mlflow-run", daemon=True)
        marker.start()
        marker.join(MARK_TIMEOUT_SECONDS)
        raise


def _ui_base(cfg: TrackingConfig) -> str:
    """The MLflow UI of the store: the server itself, or `mlflow ui`'s default address (`adaptflow ui`) locally."""
    uri = tracking_uri(cfg)
    return (uri if uri.startswith("http") else "http://127.0.0.1:5000").rstrip("/")


def run_url(cfg: TrackingConfig, run_id: str) -> str:
    """Where a person opens the run."""
    exp = client(cfg).get_run(run_id).info.experiment_id
    return f"{_ui_base(cfg)}/#/experiments/{exp}/runs/{run_id}"


def model_version_url(cfg: TrackingConfig, name: str, version: str) -> str:
    """Where a person opens a registered model's version (its lineage tags and model card)."""
    return f"{_ui_base(cfg)}/#/models/{name}/versions/{version}"



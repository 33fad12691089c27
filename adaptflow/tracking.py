"""MLflow: the only module that talks to the tracking server and the model registry.

One MLflow run per pipeline run: it is opened first (so epochs are logged live), receives the
evaluation and the model, and the model version it registers passes a champion/challenger gate.
Every call names its tracking URI explicitly, so concurrent runs never share hidden state.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import subprocess
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adaptflow import env
from adaptflow.config import RegistryConfig, TrackingConfig
from adaptflow.errors import ServiceUnavailable, UserError
from adaptflow.io import mask_secrets, unreachable, with_retries

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG = "adaptflow."


@dataclass(frozen=True)
class Registration:
    """What the registry gate decided for one model version."""

    name: str
    version: str
    alias: str
    decision: str
    reason: str
    run_id: str
    model_uri: str

    def to_dict(self) -> dict:
        return asdict(self)


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


class RegistryError(UserError, ValueError):
    """A registry operation that cannot be done as asked; the message says why."""


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


def sqlite_file(uri: str) -> Path | None:
    """The database file of a SQLite store (`sqlite:///<path>`), or None for any other store."""
    return Path(uri.removeprefix("sqlite:///").split("?")[0]) if uri.startswith("sqlite:///") else None


def store_not_made(uri: str) -> Path | None:
    """The file of a SQLite store that does not exist yet: nothing was ever tracked there, and a
    lookup should say so rather than create it."""
    path = sqlite_file(uri)
    return path if path is not None and not path.exists() else None


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


def git_commit(root: Path | None = None) -> str:
    """The project's commit, with `-dirty` when tracked files have changed; `unknown` outside git.

    DVC's pointer files (`*.dvc`, `dvc.lock`) do not count: every run rewrites `data.dvc` when data
    lands, and the data version is recorded on its own (`data_version`, per-domain digests)."""
    root = root or env.project_root()
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude,glob)**/*.dvc",
                                ":(exclude)dvc.lock"], cwd=root, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return f"{sha}-dirty" if dirty else sha


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


_SECRET_KEY = re.compile(r"(password|passwd|secret|token|api_key|access_key|credential)", re.IGNORECASE)


def redact(key: str, value: object) -> str:
    """A value safe to log: secrets by key name are masked, and so are passwords and credential query values inside URLs."""
    if value is not None and _SECRET_KEY.search(key):
        return "***"
    return mask_secrets(str(value))


def redacted(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict with secrets masked as `redact` does (for configs logged as artifacts)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out[key] = redacted(value, f"{name}.")
        elif value is not None and (isinstance(value, str) or _SECRET_KEY.search(name)):
            out[key] = redact(name, value)
        else:
            out[key] = value
    return out


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


def register_model(
    cfg: RegistryConfig,
    tracking: TrackingConfig,
    run_id: str,
    checkpoint: str | Path,
    metrics: dict[str, float],
    lineage: dict[str, str],
    artifacts: Iterable[str | Path] = (),
    champion_metrics: dict[str, float] | None = None,
) -> Registration:
    """Log the model to the run, register it, and move aliases through the champion gate.

    Keyed by (run, model hash): calling it again for the same run and model returns the
    version registered the first time, and moves no alias.
    """
    import mlflow
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    from adaptflow.io import sha256_file

    if cfg.metric not in metrics:
        raise KeyError(f"registry.metric '{cfg.metric}' is not among the evaluated metrics {sorted(metrics)}; fix registry.metric")
    c = client(tracking)
    model_sha = sha256_file(checkpoint)
    run_key = hashlib.sha256(f"{run_id}:{model_sha}".encode()).hexdigest()[:24]
    existing = c.search_model_versions(f"name='{cfg.model_name}' and tags.`{TAG}run_key`='{run_key}'")
    if existing:
        mv = existing[0]
        log.info("model already registered as %s version %s", cfg.model_name, mv.version)
        return Registration(cfg.model_name, str(mv.version), mv.tags.get(f"{TAG}alias", ""), mv.tags.get(f"{TAG}decision", ""),
                            mv.tags.get(f"{TAG}reason", ""), run_id, f"models:/{cfg.model_name}/{mv.version}")

    log_metrics(tracking, run_id, metrics)
    for path in artifacts:
        c.log_artifact(run_id, str(path))
    serving = _serving(lineage.get("task", "classification"))
    example, spec = _model_input(checkpoint)  # a batch of 2: the batch dimension stays free
    params = getattr(serving, "PARAMS", None)  # inference options a caller may pass, with their defaults
    # Any batch size and any image size: the model resizes to the size it was trained at. The output
    # table's columns are declared (a detector's has no rows for a blank image to infer them from).
    signature = ModelSignature(inputs=Schema([spec]),
                               outputs=Schema([ColSpec(kind, name) for name, kind in serving.COLUMNS.items()]),
                               params=infer_signature(example, params=params).params)

    def log_model(artifacts: dict[str, str]):  # noqa: ANN202
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(serving.__file__)),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=requirements(checkpoint),
            )

    with model_artifacts(checkpoint) as artifacts, scoped_tracking_uri(tracking_uri(tracking)):
        info = retrying(log_model, artifacts, what="log_model")
    tags = {f"{TAG}{k}": str(v) for k, v in lineage.items()}
    tags |= {f"{TAG}run_key": run_key, f"{TAG}model_sha256": model_sha}
    tags |= {f"{TAG}metric.{k}": repr(float(v)) for k, v in metrics.items()}
    with scoped_tracking_uri(tracking_uri(tracking)):
        version = retrying(mlflow.register_model, info.model_uri, cfg.model_name, tags=tags, what="register_model").version
    before = champion(cfg, tracking)
    alias, decision, reason = gate_version(cfg, tracking, str(version), metrics, champion_metrics, lineage.get("validation_digest", ""))
    compared = (str(before.version), champion_metrics or recorded_metrics(before)) if before is not None else None
    card = model_card(cfg.model_name, str(version), metrics, lineage, compared, decision, reason)
    retrying(c.update_model_version, cfg.model_name, str(version), description=card, what="update_model_version")
    set_tags(tracking, run_id, {"registered_model": f"{cfg.model_name}/{version}", "decision": decision, "reason": reason})
    log.info("%s version %s: %s (%s)", cfg.model_name, version, decision, reason)
    return Registration(cfg.model_name, str(version), alias, decision, reason, run_id, f"models:/{cfg.model_name}/{version}")


def model_card(
    name: str,
    version: str,
    metrics: dict[str, float],
    lineage: dict[str, str],
    champion_before: tuple[str, dict[str, float]] | None,
    decision: str,
    reason: str,
) -> str:
    """A model version's description (markdown, shown on its MLflow page): what it was made from, its metrics
    against the champion it was gated against, and how to load, export and serve it."""
    uri = f"models:/{name}/{version}"
    header = "| metric | this version |" + (f" champion v{champion_before[0]} |" if champion_before else "")
    rows = [header, "|---|---|" + ("---|" if champion_before else "")]
    for key, value in sorted(metrics.items()):
        if isinstance(value, int | float):
            other = champion_before[1].get(key) if champion_before else None
            rows.append(f"| {key} | {value:.4f} |" + ((f" {other:.4f} |" if other is not None else " |") if champion_before else ""))
    source = lineage.get("source_domain") or "none"
    weights = lineage.get("pretrained_uri", "")
    package = f" (package {lineage['pretrained_package']})" if lineage.get("pretrained_package") else ""
    return "\n".join([
        f"**{lineage.get('task', 'classification')}**: `{lineage.get('arch', '')}` adapted to `{lineage.get('target_domain', '')}` "
        f"(source domain: {source}). Gate: **{decision}**: {reason}.",
        "",
        "**Made from**",
        "",
        f"- data: DVC version `{lineage.get('data_version', '')}` of `{lineage.get('data_path', '')}`",
        f"- pretrained weights: `{weights}`{package}, sha256 `{lineage.get('pretrained_sha256', '')}`",
        f"- code: git commit `{lineage.get('git_commit', '')}`, config digest `{lineage.get('config_digest', '')}` "
        f"(the run's config.yaml artifact), started by `{lineage.get('origin', '')}`",
        "",
        "**Metrics**" + (" (the champion's as the gate compared them)" if champion_before else " (no champion before it)"),
        "",
        *rows,
        "",
        "**Use it**",
        "",
        f"- load: `mlflow.pyfunc.load_model(\"{uri}\").predict(images)`: a batch of images of any size, as the model's "
        "signature and input example say; a table of predictions comes back",
        f"- predict a folder: `adaptflow predict FOLDER --model {uri}`",
        f"- export: `adaptflow export {uri} --format onnx`",
        f"- serve: `mlflow models serve -m {uri}`; the current champion, whichever version it is: "
        f"`mlflow models serve -m models:/{name}@champion`",
    ])


def _serving(task: str):  # noqa: ANN202 - a module
    """The pyfunc code file for a task's models (its `COLUMNS` and `PARAMS` shape the signature)."""
    if task == "detection":
        from adaptflow.detection import serving
    elif task == "text_classification":
        from adaptflow.text import serving
    else:
        from adaptflow import serving
    return serving


def _model_input(checkpoint: str | Path):  # noqa: ANN202 - (example, TensorSpec)
    """(an input example, its spec) for an adaptflow model file (classifier or detector), read without building the
    model (MLflow's check of the example loads the model itself): any batch and image size of uint8 RGB images, or
    for a model trained with `data.window`, float32 raw values of single-channel images."""
    import numpy as np
    import torch
    from mlflow.types import TensorSpec

    from adaptflow.data.pixels import recorded_window

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if "tokenizer" in meta:  # a text model: a column of strings
        from adaptflow.text.serving import model_input

        return model_input()
    size = int(meta["image_size"])
    if recorded_window(meta) is not None:
        return np.zeros((2, size, size), dtype=np.float32), TensorSpec(np.dtype(np.float32), (-1, -1, -1))
    return np.zeros((2, size, size, 3), dtype=np.uint8), TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))


def gate_version(
    cfg: RegistryConfig,
    tracking: TrackingConfig,
    version: str,
    metrics: dict[str, float],
    champion_metrics: dict[str, float] | None = None,
    validation_digest: str = "",
) -> tuple[str, str, str]:
    """`gate` one version, taking turns with every other run gating the same model, and record the
    decision on the version's tags. Returns (alias, decision, reason)."""
    with _gate_lock(tracking, cfg.model_name):
        alias, decision, reason = gate(cfg, tracking, version, metrics, champion_metrics, validation_digest)
        c = client(tracking)
        for key, value in {"alias": alias, "decision": decision, "reason": reason}.items():
            c.set_model_version_tag(cfg.model_name, version, f"{TAG}{key}", value)
    return alias, decision, reason


def _gate_lock(tracking: TrackingConfig, model_name: str):  # noqa: ANN202 - a context manager
    """Runs sharing a store take turns at the gate (read champion, compare, move alias): a file lock
    beside a SQLite store, a lease held in the registry itself for a tracking server (`registry_lease`)."""
    from filelock import FileLock

    path = sqlite_file(tracking_uri(tracking))
    return FileLock(f"{path}.gate.lock") if path else registry_lease(tracking, model_name)


#: How long a gate lease lasts: a holder that died (kill -9) blocks the gate at most this long.
LEASE_SECONDS = 120.0
#: How long a run waits for the gate before giving up.
LEASE_WAIT_SECONDS = 900.0
LEASE_SUFFIX = ".gate-lease"


@contextlib.contextmanager
def registry_lease(tracking: TrackingConfig, model_name: str, *, seconds: float = LEASE_SECONDS,
                   wait: float = LEASE_WAIT_SECONDS) -> Iterator[None]:
    """Hold the gate of `model_name` on a tracking server: a registered model named
    `<model_name>.gate-lease` exists while someone holds it. Creating a registered model is atomic
    on the server (its name is a primary key: a second create fails with RESOURCE_ALREADY_EXISTS),
    so exactly one run at a time holds it, whichever machine it runs on. The lease carries its
    holder's token and expiry (tags); a lease past its expiry (its holder was killed) is deleted by
    the next run that waits for it. Waiters retry with jittered backoff. Limit: the holder must
    finish the gate within `seconds` (a few registry calls; the model upload happens before)."""
    import random
    import uuid

    from mlflow.exceptions import MlflowException

    c = client(tracking)
    name = f"{model_name}{LEASE_SUFFIX}"
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            c.create_registered_model(name, tags={f"{TAG}lease_token": token, f"{TAG}lease_expires": f"{time.time() + seconds:.3f}"},
                                      description=f"held while one run moves the aliases of {model_name}; deleted after")
            break
        except MlflowException as exc:
            # RESOURCE_DOES_NOT_EXIST: the create raced the holder's delete (the server writes the model and its
            # tags in two steps); a lease left without tags reads as expired below and is cleared.
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        holder = _lease_holder(c, name)
        if holder is not None and holder[0] == token:  # our create went through, then a retry saw it
            break
        if holder is not None and holder[1] < time.time():
            log.warning("gate lease of %s expired (its holder stopped without releasing it): taking it over", model_name)
            _release(c, name, holder[0])
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"waited {wait:.0f}s for the gate of {model_name}, held by another run; if no run is "
                                f"registering, delete the registered model '{name}'")
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)
    try:
        yield
    finally:
        _release(c, name, token)


def _lease_holder(c: RetryingClient, name: str) -> tuple[str, float] | None:
    """(token, expiry) of the lease `name`, or None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        tags = c.get_registered_model(name).tags
    except MlflowException:
        return None
    try:
        return tags.get(f"{TAG}lease_token", ""), float(tags.get(f"{TAG}lease_expires", "0"))
    except ValueError:
        return tags.get(f"{TAG}lease_token", ""), 0.0


def _release(c: RetryingClient, name: str, token: str) -> None:
    """Delete the lease `name` if `token` still holds it."""
    from mlflow.exceptions import MlflowException

    holder = _lease_holder(c, name)
    if holder is None or holder[0] != token:
        return
    try:
        c.delete_registered_model(name)
    except MlflowException as exc:  # gone already
        log.debug("lease %s: %s", name, exc)


def champion(cfg: RegistryConfig, tracking: TrackingConfig):  # noqa: ANN201 - ModelVersion | None
    """The version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    if store_not_made(tracking_uri(tracking)):
        return None
    try:
        return client(tracking).get_model_version_by_alias(cfg.model_name, CHAMPION)
    except TrackingUnavailable:
        raise
    except MlflowException:
        return None


def recorded_metrics(version) -> dict[str, float]:  # noqa: ANN001 - ModelVersion
    """The metrics a version was registered with (its `adaptflow.metric.*` tags)."""
    prefix = f"{TAG}metric."
    return {k.removeprefix(prefix): float(v) for k, v in version.tags.items() if k.startswith(prefix)}


def gate(
    cfg: RegistryConfig,
    tracking: TrackingConfig,
    version: str,
    metrics: dict[str, float],
    champion_metrics: dict[str, float] | None = None,
    validation_digest: str = "",
) -> tuple[str, str, str]:
    """Give `version` the champion alias if it beats the champion by `min_delta` on `metric` and
    loses at most `guard_tolerance` on `guard_metric`; otherwise the challenger alias.

    `champion_metrics` are the champion's metrics measured again on the same test sets; without
    them the champion's recorded metrics are used. Metrics of the target's validation set compare
    the two only when the champion held out the same images (its `validation_digest` tag is
    `validation_digest`): a champion that trained on them would win unfairly. Returns (alias, decision, reason).
    """
    current = champion(cfg, tracking)
    c = client(tracking)
    if current is None:
        c.set_registered_model_alias(cfg.model_name, CHAMPION, version)
        return CHAMPION, "promoted", "no champion yet"
    old = champion_metrics or recorded_metrics(current)
    new, ref = float(metrics[cfg.metric]), old.get(cfg.metric, float("-inf"))
    name = f"champion v{current.version}"
    guard = cfg.guard_metric
    on_validation = [m for m in (cfg.metric, guard) if m and m.startswith("target_val_")]
    if on_validation and (not validation_digest or current.tags.get(f"{TAG}validation_digest") != validation_digest):
        reason = (f"{name} did not hold out this validation set (it may have trained on its images), so {' and '.join(on_validation)} "
                  f"cannot compare the two: gate this run on target_accuracy, or promote it by hand (adaptflow registry promote {version})")
    elif not new > ref + cfg.min_delta:
        reason = f"{cfg.metric} {new:.4f} does not beat {name} ({ref:.4f}) by more than {cfg.min_delta}"
    elif guard and guard in metrics and guard in old and metrics[guard] < old[guard] - cfg.guard_tolerance:
        reason = (f"{cfg.metric} {new:.4f} beats {name} ({ref:.4f}) but {guard} fell from {old[guard]:.4f} to "
                  f"{metrics[guard]:.4f}, more than the tolerated {cfg.guard_tolerance}")
    else:
        reason = f"{cfg.metric} {new:.4f} beats {name} ({ref:.4f}) by more than {cfg.min_delta}"
        if guard and guard in metrics and guard in old:
            reason += f"; {guard} {metrics[guard]:.4f} (champion {old[guard]:.4f}, tolerance {cfg.guard_tolerance})"
        _move_champion(c, cfg, version, current.version)
        c.set_model_version_tag(cfg.model_name, version, f"{TAG}previous_champion", str(current.version))
        return CHAMPION, "promoted", reason
    before = c.get_registered_model(cfg.model_name).aliases.get(CHALLENGER)
    c.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    if before is not None and str(before) != str(version):
        c.set_model_version_tag(cfg.model_name, str(before), f"{TAG}alias", "former challenger")
    return CHALLENGER, "kept champion", reason


def _move_champion(c: RetryingClient, cfg: RegistryConfig, version: str, loser: str | int | None, lost: str = "former champion") -> None:
    """Give `version` the champion alias, and keep each version's `alias` tag true to it: the version that
    held the alias (`loser`) no longer says champion."""
    c.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    c.set_model_version_tag(cfg.model_name, str(version), f"{TAG}alias", CHAMPION)
    if loser is not None and str(loser) != str(version):
        c.set_model_version_tag(cfg.model_name, str(loser), f"{TAG}alias", lost)


def promote(cfg: RegistryConfig, tracking: TrackingConfig, version: str, reason: str) -> str:
    """Make `version` the champion by hand, remembering the one it replaces; returns that one.

    Promoting the champion itself changes nothing (its record of what it replaced stays, for rollback)."""
    if store := store_not_made(tracking_uri(tracking)):
        raise RegistryError(f"{cfg.model_name} has no version {version}: nothing is registered yet (no store at {store})")
    current = champion(cfg, tracking)
    c = client(tracking)
    try:
        c.get_model_version(cfg.model_name, version)
    except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        raise RegistryError(f"{cfg.model_name} has no version {version}") from exc
    previous = str(current.version) if current is not None else ""
    if previous == str(version):
        return previous
    _move_champion(c, cfg, version, previous or None)
    if str(c.get_registered_model(cfg.model_name).aliases.get(CHALLENGER, "")) == str(version):
        c.delete_registered_model_alias(cfg.model_name, CHALLENGER)
    for key, value in {"previous_champion": previous, "decision": "promoted by hand", "reason": reason}.items():
        c.set_model_version_tag(cfg.model_name, version, f"{TAG}{key}", value)
    return previous


def rollback(cfg: RegistryConfig, tracking: TrackingConfig, reason: str) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from, to)."""
    current = champion(cfg, tracking)
    if current is None:
        raise RegistryError(f"{cfg.model_name} has no champion to roll back")
    previous = current.tags.get(f"{TAG}previous_champion")
    if not previous:
        raise RegistryError(f"{cfg.model_name} v{current.version} replaced no earlier champion: nothing to roll back to")
    c = client(tracking)
    _move_champion(c, cfg, previous, current.version, lost="rolled back")
    c.set_model_version_tag(cfg.model_name, str(current.version), f"{TAG}rolled_back", reason)
    c.set_model_version_tag(cfg.model_name, previous, f"{TAG}reason", f"restored by rollback: {reason}")
    return str(current.version), previous


def versions(cfg: RegistryConfig, tracking: TrackingConfig) -> list[dict[str, Any]]:
    """Every version of the model, newest first, with its aliases, metrics, data version and decision."""
    if store_not_made(tracking_uri(tracking)):
        return []
    c = client(tracking)
    found = c.search_model_versions(f"name='{cfg.model_name}'")
    aliases: dict[str, list[str]] = {}
    if found:
        for alias, version in c.get_registered_model(cfg.model_name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in found:
        metrics = recorded_metrics(mv)
        rows.append({
            "version": int(mv.version),
            "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
            cfg.metric: metrics.get(cfg.metric),
            **({cfg.guard_metric: metrics.get(cfg.guard_metric)} if cfg.guard_metric else {}),
            "data_version": mv.tags.get(f"{TAG}data_version", "")[:12],
            "decision": mv.tags.get(f"{TAG}decision", ""),
            "reason": mv.tags.get(f"{TAG}rolled_back") and f"rolled back: {mv.tags[f'{TAG}rolled_back']}" or mv.tags.get(f"{TAG}reason", ""),
        })
    return sorted(rows, key=lambda r: -r["version"])


#: The registered YOLO model's weights as Ultralytics saves them, beside adaptflow's own file (`artifacts/ULTRALYTICS_FILE`).
ULTRALYTICS_FILE = "ultralytics.pt"


@contextlib.contextmanager
def model_artifacts(checkpoint: str | Path) -> Iterator[dict[str, str]]:
    """The files a registered model carries: adaptflow's checkpoint, and for a YOLO detector the same weights as Ultralytics
    saves them (`yolo.save_ultralytics`), so that `YOLO(path)` and the `yolo` command open the registered model."""
    import tempfile

    import torch

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if meta.get("family") != "yolo":
        yield {"checkpoint": str(checkpoint)}
        return
    from adaptflow.detection import yolo
    from adaptflow.detection.models import load_detector

    model, meta = load_detector(checkpoint)
    with tempfile.TemporaryDirectory(prefix="adaptflow-ultralytics-") as tmp:
        native = yolo.save_ultralytics(Path(tmp) / ULTRALYTICS_FILE, model, arch=meta["arch"], classes=meta["classes"],
                                       image_size=int(meta["image_size"]))
        yield {"checkpoint": str(checkpoint), "ultralytics": str(native)}


#: What every registered model's pyfunc imports besides adaptflow, pinned to the versions it was trained and checked with.
SERVING_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pillow", "mlflow")
#: What a model of a family needs on top (EfficientNet-Lite is timm's; YOLO is Ultralytics'; the text encoders are
#: transformers models with a fast tokenizer).
FAMILY_PACKAGES = {"efficientnet_lite": ("timm",), "yolo": ("ultralytics",), "minilm": ("transformers", "tokenizers")}


def requirements(checkpoint: str | Path) -> list[str]:
    """The pip requirements of a registered model: adaptflow at this exact version (a wheel of the project:
    `pip wheel --no-deps .`, from your package index or `--find-links`), and pinned, the packages its serving code
    imports and the ones its architecture needs (timm for EfficientNet-Lite, ultralytics for YOLO, transformers for text)."""
    import importlib.metadata as md

    import torch

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    arch = str(meta.get("arch", ""))
    family = meta.get("family") or next((key for key in FAMILY_PACKAGES if arch.startswith(key)), "")
    names = (*SERVING_PACKAGES, *FAMILY_PACKAGES.get(family, ()))
    return [f"adaptflow=={md.version('adaptflow')}", *(f"{name}=={md.version(name).split('+')[0]}" for name in names)]

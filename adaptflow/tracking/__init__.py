"""MLflow: the only package that talks to the tracking server and the model registry.

Its modules, lowest first (each imports only those above it in this list):

- `lineage`: the git commit, the config flattened into params, secrets masked (no MLflow).
- `gate`: the champion/challenger decision as pure policy (no MLflow).
- `store`: the tracking URI, a client that retries transient failures, the experiment, server checks.
- `runs`: one MLflow run per pipeline run: open, resume, close orphans, log, finish or fail.
- `registry`: the gate applied to a version (under a lock or lease), promote, rollback, the versions table.
- `packaging`: the model as an MLflow pyfunc (serving code, artifacts, requirements, model card), registered and gated.

The names below are re-exported so that callers can write `from adaptflow import tracking; tracking.start_run(...)`;
each one lives in the module it is imported from here.
"""

from adaptflow.tracking.gate import CHALLENGER, CHAMPION, Champion, Decision, decide
from adaptflow.tracking.lineage import flatten, git_commit, redact, redacted
from adaptflow.tracking.packaging import ULTRALYTICS_FILE, Registration, model_artifacts, model_card, register_model, requirements
from adaptflow.tracking.registry import (
    LEASE_SUFFIX,
    RegistryError,
    champion,
    gate_version,
    promote,
    recorded_metrics,
    registry_lease,
    rollback,
    versions,
)
from adaptflow.tracking.runs import (
    close_orphans,
    ended_on_failure,
    epoch_logger,
    finish_run,
    log_artifacts,
    log_history,
    log_metrics,
    model_version_url,
    resume_run,
    run_status,
    run_url,
    set_tags,
    start_run,
    work_key,
)
from adaptflow.tracking.store import (
    TAG,
    TrackingUnavailable,
    client,
    require_server,
    retrying,
    server_problem,
    sqlite_file,
    store_not_made,
    tracking_uri,
)

__all__ = [
    "CHALLENGER", "CHAMPION", "LEASE_SUFFIX", "TAG", "ULTRALYTICS_FILE", "Champion", "Decision", "Registration",
    "RegistryError", "TrackingUnavailable", "champion", "client", "close_orphans", "decide", "ended_on_failure",
    "epoch_logger", "finish_run", "flatten", "gate_version", "git_commit", "log_artifacts", "log_history", "log_metrics",
    "model_artifacts", "model_card", "model_version_url", "promote", "recorded_metrics", "redact", "redacted",
    "register_model", "registry_lease", "require_server", "requirements", "resume_run", "retrying", "rollback",
    "run_status", "run_url", "server_problem", "set_tags", "sqlite_file", "start_run", "store_not_made",
    "tracking_uri", "versions", "work_key",
]

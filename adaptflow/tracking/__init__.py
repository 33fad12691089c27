"""MLflow: the only package that talks to the tracking server and the model registry.

Its modules, lowest first (each imports only those above it in this list, never one below):

- `lineage`: the git commit, the config flattened into params, secrets masked (no MLflow).
- `gate`: the champion/challenger decision as pure policy (no MLflow).
- `store`: the tracking URI, a client that retries transient failures, the experiment, server checks.
- `runs`: one MLflow run per pipeline run: open, resume, close orphans, log, finish or fail.
- `registry`: the gate applied to a version (under a lock or lease), promote, rollback, the versions table.
- `packaging`: the model as an MLflow pyfunc (serving code, artifacts, requirements, model card), registered and
  gated; the only module that imports the serving code.

The public names of those modules can also be read from here (`from adaptflow import tracking;
tracking.start_run(...)`): each is looked up in its home module on first use, so importing one module (say
`adaptflow.tracking.store`) does not import the others.
"""

from __future__ import annotations

import importlib

#: Each public name, and the module it lives in.
HOMES = {
    "gate": ("CHALLENGER", "CHAMPION", "KEPT", "PROMOTED", "Champion", "Decision", "decide", "require_metric"),
    "lineage": ("flatten", "git_commit", "redact", "redacted"),
    "store": ("TAG", "ULTRALYTICS_FILE", "TRANSIENT_MARKERS", "RetryingClient", "TrackingUnavailable", "client",
              "experiment_id", "require_server", "retrying", "scoped_tracking_uri", "server_problem", "tracking_uri"),
    "runs": ("MARK_TIMEOUT_SECONDS", "close_orphans", "ended_on_failure", "epoch_logger", "finish_run", "log_artifacts",
             "log_history", "log_metrics", "model_version_url", "owner", "owner_gone", "resume_run", "run_status", "run_url",
             "set_tags", "start_run", "work_key"),
    "registry": ("LEASE_SECONDS", "LEASE_SUFFIX", "LEASE_WAIT_SECONDS", "RegistryError", "champion", "gate_version",
                 "promote", "recorded_metrics", "registry_lease", "rollback", "versions"),
    "packaging": ("FAMILY_PACKAGES", "SERVING_PACKAGES", "Registration", "model_artifacts", "model_card", "register_model",
                  "requirements"),
}
_HOME = {name: module for module, names in HOMES.items() for name in names}

__all__ = sorted(_HOME)


def __getattr__(name: str) -> object:
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})

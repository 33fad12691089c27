"""The one place that decides where local state lives and that keeps every tool offline.

Each tool in the stack reaches for the network on its own (telemetry, update checks, font
downloads). `apply()` switches all of that off through environment variables, before the
tools are imported. It only sets what the user has not set, so a shared stack (a Prefect
server, an MLflow server, S3) is chosen by exporting its variables as usual.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Variables that stop telemetry and update checks. Values are the "off" settings.
OFFLINE_DEFAULTS: dict[str, str] = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "YOLO_OFFLINE": "1",
    "DO_NOT_TRACK": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    # transformers and the Hugging Face hub client: local files only (the text encoder ships in a package).
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # The ephemeral Prefect API needs more than the default 20 s on a loaded 2-core machine.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}

#: Variables that keep the tools' output fit for log files: MLflow otherwise draws a progress bar
#: for every artifact it copies, into Prefect's logs and the demo's output too.
LOG_DEFAULTS: dict[str, str] = {"MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

#: The environment of the MLflow servers adaptflow starts (`adaptflow ui`, the local stack, the tests'):
#: MLflow 3 otherwise starts a job runner with seven huey consumers (about 2 GB, and a folder in /dev/shm
#: that it never removes) for GenAI jobs adaptflow does not use. `infra/compose.yaml` sets the same.
MLFLOW_SERVER_DEFAULTS: dict[str, str] = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


#: Set to 1 by the operator of a machine (in a worker's environment) to let runs on it load pickled
#: model files. Unpickling runs code: a config value, which whoever starts a flow run chooses, cannot.
ALLOW_PICKLE_VAR = "ADAPTFLOW_ALLOW_PICKLE"


def pickle_refused(requested: bool) -> str | None:
    """Why `pretrained.allow_pickle=true` does not take effect on this machine, or None."""
    if requested and os.environ.get(ALLOW_PICKLE_VAR) != "1":
        return (f"pretrained.allow_pickle=true is refused here: loading pickled weights runs code, so only the operator can "
                f"allow it, by setting {ALLOW_PICKLE_VAR}=1 in the environment of the worker or shell that runs the pipeline")
    return None


def inside_project(path: str | Path, field: str) -> Path:
    """`path` (relative to the project folder) resolved, if it stays inside the project folder or its cache
    (`cache_dir()`, where the benchmark keeps its models); otherwise a ValueError naming `field`: a run
    writes only into its own project."""
    root = project_root()
    resolved = project_path(path).resolve()
    if not (resolved.is_relative_to(root) or resolved.is_relative_to(cache_dir().resolve())):
        raise ValueError(f"{field}={path} resolves to {resolved}, outside the project folder {root}; "
                         f"give a folder inside it, e.g. {field}=models/source")
    return resolved


def project_root() -> Path:
    """The project folder: `$ADAPTFLOW_ROOT`, else the current directory."""
    return Path(os.environ.get("ADAPTFLOW_ROOT") or Path.cwd()).resolve()


def project_path(path: str | Path) -> Path:
    """A relative `path` taken from the project folder; an absolute one as it is."""
    return project_root() / path


def cache_dir() -> Path:
    """Content-addressed cache for downloads and decoded datasets."""
    return Path(os.environ.get("ADAPTFLOW_CACHE") or project_root() / ".cache").resolve()


def default_tracking_uri() -> str:
    """MLflow's store when none is configured: SQLite inside the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project_root() / 'mlflow.db'}"


def default_artifact_location() -> str:
    """Where local runs keep their artifacts when the store does not say."""
    return (project_root() / "mlartifacts").as_uri()


def apply() -> None:
    """Set the offline defaults and local homes for every tool; values the user set win."""
    for key, value in {**OFFLINE_DEFAULTS, **LOG_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    root = project_root()
    os.environ.setdefault("PREFECT_HOME", str(root / ".prefect"))
    os.environ.setdefault("TORCH_HOME", str(cache_dir() / "torch"))
    os.environ.setdefault("YOLO_CONFIG_DIR", str(cache_dir() / "ultralytics"))
    os.environ.setdefault("MPLBACKEND", "Agg")

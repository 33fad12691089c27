"""What a run records about where it came from: the code's git commit, the config flattened into params, and
secrets masked on the way (no MLflow here: the other tracking modules build on these)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

from adaptflow import env
from adaptflow.io import mask_secrets


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

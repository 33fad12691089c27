"""Dataset versioning with DVC: the only module that runs DVC.

`version_data` records the data folder in its `.dvc` file (`dvc add`), pushes it to the remote
(`dvc push`) and returns its md5: the data version every model records.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from filelock import FileLock

from adaptflow import env
from adaptflow.config import ConfigError, DataConfig
from adaptflow.errors import UserError
from adaptflow.io import read_yaml

log = logging.getLogger(__name__)


class VersioningError(UserError, RuntimeError):
    """DVC refused; the message carries its output and the fix."""


@dataclass(frozen=True)
class DataVersion:
    """The data folder, its DVC md5, and how big it is."""

    path: str
    md5: str
    files: int
    size: int
    pushed_to: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def dvc(*args: str, cwd: Path | None = None) -> str:
    """Run a DVC command in the project and return its output; raise with DVC's message on failure."""
    cwd = cwd or env.project_root()
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise VersioningError(f"`dvc {' '.join(args)}` failed in {cwd}:\n{(result.stderr or result.stdout).strip()}")
    return result.stdout


def _dvc_file(cfg: DataConfig) -> Path:
    """`dvc add <root>` records the folder in `<root>.dvc` beside it."""
    root = env.project_path(cfg.root)
    return root.with_name(root.name + ".dvc")


def read_version(cfg: DataConfig) -> DataVersion:
    """The data version recorded in the `.dvc` file, without touching the data."""
    path = _dvc_file(cfg)
    if not path.exists():
        raise VersioningError(f"{path}: missing; version the data first with `dvc add {cfg.root}`")
    spec = read_yaml(path) or {}
    outs = spec.get("outs") if isinstance(spec, dict) else None
    out = outs[0] if isinstance(outs, list) and outs and isinstance(outs[0], dict) else {}
    if "md5" not in out:
        raise VersioningError(f"{path}: no md5 in its outs; re-create it with `dvc add {cfg.root}`")
    return DataVersion(path=out.get("path", str(cfg.root)), md5=out["md5"], files=int(out.get("nfiles", 0)), size=int(out.get("size", 0)))


def _push_remote(cfg: DataConfig, root: Path) -> str:
    """The DVC remote `dvc push` would use: `data.remote`, else the project's default; a ConfigError
    naming the remotes there are when there is none, or `data.remote` is not one of them."""
    remotes, default = {}, None
    for line in dvc("config", "--list", cwd=root).splitlines():  # every level merged: "remote.<name>.url=<url>", "core.remote=<name>"
        key, _, value = line.partition("=")
        if key.startswith("remote.") and key.endswith(".url"):
            remotes[key.removeprefix("remote.").removesuffix(".url")] = value
        elif key == "core.remote":
            default = value
    known = ", ".join(f"{name} ({url})" for name, url in remotes.items()) or "none"
    chosen = cfg.remote or default
    if chosen is None:
        raise ConfigError(f"data.remote: not set, and {root} has no default DVC remote to push the data version to "
                          f"(remotes: {known}); set data.remote, or add one: dvc remote add -d NAME URL")
    if chosen not in remotes:
        named = "data.remote" if cfg.remote else "data.remote: not set, and the default (dvc remote default)"
        raise ConfigError(f"{named}: '{chosen}' is not a DVC remote of {root} (remotes: {known}); "
                          f"set data.remote to one of them, or add it: dvc remote add {chosen} URL")
    return chosen


def version_data(cfg: DataConfig, push: bool = True) -> DataVersion:
    """`dvc add` the data folder, `dvc push` it, and return its version."""
    root = env.project_root()
    if not (root / ".dvc").is_dir():
        raise VersioningError(f"{root}: not a DVC project (no .dvc folder); run `dvc init` there or set ADAPTFLOW_ROOT")
    data_path = cfg.root if cfg.root.is_absolute() else root / cfg.root
    if not data_path.is_dir():
        raise VersioningError(f"{data_path}: no data folder; build it (`adaptflow data build`) or `dvc pull`")
    remote = _push_remote(cfg, root) if push else None  # before `dvc add`, which takes a while on large data
    # DVC holds a repository lock and fails when it is taken: runs of this project queue here instead.
    with FileLock(str(root / ".dvc" / "tmp" / "adaptflow-version.lock")):
        dvc("add", str(cfg.root), cwd=root)
        version = read_version(cfg)
        if push:
            dvc("push", str(_dvc_file(cfg)), "--remote", remote, cwd=root)
            version = DataVersion(**{**version.to_dict(), "pushed_to": remote})
    log.info("data %s at version %s (%d files)", cfg.root, version.md5, version.files)
    return version

"""A local file (`file://` allowed): its `<path>.sha256` sidecar, when present, is checked."""

from __future__ import annotations

from pathlib import Path

from adaptflow import env
from adaptflow.io import sha256_file
from adaptflow.weights.assets import ASSET_NAME
from adaptflow.weights.common import FetchError, PretrainedRef, sidecar_digest


def path_of(uri: str) -> Path:
    """The file a local URI names (`file://` and `#...` dropped, `~` expanded, relative to the project)."""
    return env.project_path(Path(uri.removeprefix("file://").partition("#")[0]).expanduser())


def check(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a local path, or None when the file is there."""
    path = path_of(uri)
    if path.is_file():
        return None
    if ASSET_NAME.match(uri) and uri.lower().startswith(("yolo", "rtdetr", "sam")):
        return f"'{uri}': no such file ({path})", f"for the Ultralytics asset write ultralytics:{uri}"
    return f"'{uri}': no such file ({path})", "run the pretrain step or fix the path"


def fetch(location: str, expected: str | None) -> PretrainedRef:
    """The file at `location` (no fragment), verified against `expected` or its sidecar."""
    path = path_of(location)
    sidecar = path.with_name(path.name + ".sha256")
    if expected is None and sidecar.exists():
        expected = sidecar_digest(sidecar)
    actual = sha256_file(path)
    if expected is not None and actual != expected:
        raise FetchError(f"{path}: sha256 is {actual}, expected {expected}; the file changed since it was published")
    return PretrainedRef(location, str(path), actual)

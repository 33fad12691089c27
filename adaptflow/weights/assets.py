"""`ultralytics:<asset>.pt`: an Ultralytics release asset (e.g. `yolo11n.pt`), downloaded from its GitHub release
and cached like any URL. These files are pickles: they load later with only the torch and Ultralytics model
classes allowed (`adaptflow.detection.yolo`), so no code in them runs."""

from __future__ import annotations

import os
import re
from pathlib import Path

from adaptflow.io import sha256_file
from adaptflow.weights.common import PretrainedRef
from adaptflow.weights.download import fetch_url

#: Where `ultralytics:NAME` assets are published; `$ADAPTFLOW_ULTRALYTICS_ASSETS_URL` replaces it (e.g. a mirror).
ASSETS_URL = "https://github.com/ultralytics/assets/releases/download/v8.4.0"
ASSET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.pt$")


def asset_url(name: str) -> str:
    """The download URL of an Ultralytics release asset such as `yolo11n.pt`."""
    base = os.environ.get("ADAPTFLOW_ULTRALYTICS_ASSETS_URL", ASSETS_URL).rstrip("/")
    return f"{base}/{name}"


def check(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for an `ultralytics:` URI, or None."""
    name = uri.removeprefix("ultralytics:").partition("#")[0]
    return None if ASSET_NAME.match(name) else (f"'{uri}': not an Ultralytics asset name", "write ultralytics:<name>.pt, e.g. ultralytics:yolo11n.pt")


def fetch(uri: str, expected: str | None, attempts: int, timeout: float) -> PretrainedRef:
    """The asset `uri` names, downloaded (or found in the cache) and verified against `expected` when given."""
    name = uri.partition("#")[0].removeprefix("ultralytics:")
    path = fetch_url(asset_url(name), expected, attempts, timeout)
    return PretrainedRef(uri, str(path), sha256_file(path), arch=Path(name).stem)

"""Resolve a `pretrained` URI to a verified local file.

Supported forms:
- `package:<name>` - ImageNet weights that ship inside a Python package (`PACKAGED`, e.g.
  `package:efficientnet_lite0`): found in the installed package without importing it, checked
  against the digest pinned here, recorded with the package's name and version. Offline by nature.
- `torchvision:<arch>[:<weights>]` - torchvision's published weights (default `DEFAULT`), kept in
  torchvision's own cache (`$TORCH_HOME/hub/checkpoints`) and checked against the hash prefix
  in their file name, since torchvision itself checks only fresh downloads. Offline, the error
  names the file to place there, or `adaptflow fetch torchvision:<arch> --from FILE` imports one
  (`$ADAPTFLOW_TORCHVISION_URL` overrides torchvision's download address, e.g. for a mirror).
- `https://...` / `http://...` - streamed to a temporary file, verified against `sha256` (or a
  `#sha256=<hex>` fragment) when given, renamed into a content-addressed cache. Without a hash the
  file is cached by URL with the hash it arrived with beside it (`<file>.sha256`), and reused only
  while it still matches. Plain http is refused without a hash: nothing would vouch for the bytes.
- `ultralytics:<asset>.pt` - an Ultralytics release asset (e.g. `yolo11n.pt`), downloaded from its
  GitHub release (`$ADAPTFLOW_ULTRALYTICS_ASSETS_URL` overrides the address, e.g. for a mirror) and
  cached like any URL. These files are pickles: they load with `weights_only=True` and only the
  torch and Ultralytics model classes allowed (`adaptflow.detection.yolo`), so no code in them runs.
- `models:/<name>@<alias>` or `models:/<name>/<version>` - a model in the MLflow registry.
- a local path (`file://` allowed); a `<path>.sha256` file beside it is checked when present.
- `scratch` - no weights: the architecture freshly initialised, to measure what pretraining buys.

A `.zip` / `.tar(.gz)` archive is extracted once (safely) and the model file inside it is used;
`<uri>#<path inside>` names it when the archive holds several.

A resolved file is reused without touching the network, so a warm cache works offline.

One module per source (`packaged`, `torchvision_hub`, `download` for URLs, `assets` for Ultralytics, `registry`,
`local`), each with a `check` (no network) and a fetch; archives in `archive`, what they share in `common`.
`fetch_pretrained` is the one entry point.
"""

from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

from filelock import FileLock

from adaptflow import env
from adaptflow.io import atomic_write, mask_secrets, sha256_file
from adaptflow.weights import assets, download, local, packaged, registry, torchvision_hub
from adaptflow.weights.archive import ARCHIVE_SUFFIXES, MODEL_SUFFIXES, from_archive, safe_extract
from adaptflow.weights.common import (SCRATCH, FetchError, PickleRefused, PretrainedRef, TransientFetchError, fragment_digest,
                                         sidecar_digest)
from adaptflow.weights.packaged import PACKAGED, PackagedWeights
from adaptflow.weights.torchvision_hub import TORCHVISION_URL, TorchvisionWeights

FORMS = ("package:<name>, torchvision:<arch>[:<weights>], ultralytics:<asset>.pt, https://..., models:/<name>@<alias>, a "
         "local path, or scratch")


def check_uri(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a pretrained URI, checked without the network; None if usable."""
    uri = uri.strip()
    if not uri:
        return "is empty", f"name a model: {FORMS}"
    problem = _check_uri(uri)
    return (mask_secrets(problem[0]), problem[1]) if problem else None


def _check_uri(uri: str) -> tuple[str, str] | None:
    if uri == SCRATCH:
        return None
    pinned = fragment_digest(uri)
    if pinned is not None and not re.fullmatch(r"[0-9a-f]{64}", pinned):
        return (f"'{uri}': the #sha256= fragment '{pinned}' is not a sha256 digest",
                "give the file's 64 hexadecimal digits after #sha256= (`sha256sum FILE`), or drop the fragment")
    if uri.startswith("torchvision:"):
        return torchvision_hub.check(uri)
    if uri.startswith("package:"):
        return packaged.check(uri)
    if uri.startswith("ultralytics:"):
        return assets.check(uri)
    if uri.startswith(("http://", "https://")):
        return download.check(uri)
    if uri.startswith("models:/"):
        return registry.check(uri)
    if "://" in uri and not uri.startswith("file://"):
        return f"'{uri}': unknown scheme", f"use {FORMS}"
    return local.check(uri)


def fetch_pretrained(
    uri: str,
    sha256: str | None = None,
    *,
    allow_pickle: bool = False,
    tracking_uri: str | None = None,
    attempts: int = 4,
    timeout: float = 30.0,
    field: str = "pretrained.uri",
) -> PretrainedRef:
    """Resolve `uri` to a local, verified file (see the module docstring for the forms); errors name the
    URI as `field`, where the user gave it."""
    if refused := env.pickle_refused(allow_pickle):
        raise PickleRefused(refused)
    uri = uri.strip()
    problem = check_uri(uri)
    if problem is not None:
        raise FetchError(f"{field} {problem[0]}; {problem[1]}")
    location, _, member = uri.partition("#")
    if uri == SCRATCH:
        return PretrainedRef(SCRATCH, "", "")
    pinned = fragment_digest(uri)
    if pinned is not None:
        if sha256 is not None and sha256 != pinned:
            raise FetchError(f"{field} '{mask_secrets(uri)}' pins sha256 {pinned} but pretrained.sha256 is {sha256}; keep one of them")
        sha256, member = pinned, ""
    if uri.startswith("torchvision:"):
        ref = torchvision_hub.fetch(uri, sha256, attempts, timeout)
    elif uri.startswith("package:"):
        ref = packaged.fetch(uri, sha256, field)
    elif uri.startswith("ultralytics:"):
        ref = assets.fetch(uri, sha256, attempts, timeout)
    elif uri.startswith(("http://", "https://")):
        path = download.fetch_url(location, sha256, attempts, timeout)
        ref = PretrainedRef(uri, str(path), sha256_file(path))
    elif uri.startswith("models:/"):
        ref = registry.fetch(uri, sha256, tracking_uri, field)
    else:
        ref = replace(local.fetch(location, sha256), uri=uri)
    if Path(ref.path).name.endswith(ARCHIVE_SUFFIXES):
        ref = replace(ref, path=str(from_archive(Path(ref.path), ref.sha256, member, uri)))
    return replace(ref, uri=mask_secrets(ref.uri), allow_pickle=allow_pickle)


def import_torchvision(uri: str, source: Path) -> PretrainedRef:
    """Copy a file the user brought (`adaptflow fetch torchvision:<arch> --from FILE`) into torchvision's
    cache, where `fetch_pretrained` finds it offline: only after it matches the published hash prefix."""
    problem = check_uri(uri)
    if problem is None and not uri.startswith("torchvision:"):
        problem = (f"'{uri}': --from imports torchvision weights", "name them as torchvision:<arch>[:<weights>]")
    if problem is not None:
        raise FetchError(f"{uri}: {problem[0]}; {problem[1]}")
    if not source.is_file():
        raise FetchError(f"--from {source}: no such file")
    weights = TorchvisionWeights.of(uri)
    actual = weights.check(source, None)
    with FileLock(str(weights.dest) + ".lock"), atomic_write(weights.dest) as tmp:
        shutil.copyfile(source, tmp)
    return PretrainedRef(uri, str(weights.dest), actual, arch=weights.arch)


__all__ = ["ARCHIVE_SUFFIXES", "FORMS", "MODEL_SUFFIXES", "PACKAGED", "SCRATCH", "TORCHVISION_URL", "FetchError", "PackagedWeights",
           "PickleRefused", "PretrainedRef", "TorchvisionWeights", "TransientFetchError", "check_uri", "fetch_pretrained",
           "fragment_digest", "import_torchvision", "safe_extract", "sidecar_digest"]

"""`torchvision:<arch>[:<weights>]`: torchvision's published weights (default `DEFAULT`).

They are kept in torchvision's own cache (`$TORCH_HOME/hub/checkpoints`) and checked against the hash
prefix in their file name, since torchvision itself checks only fresh downloads. Offline, the error names
the file to place there, or `adaptflow fetch torchvision:<arch> --from FILE` imports one
(`$ADAPTFLOW_TORCHVISION_URL` overrides torchvision's download address, e.g. for a mirror).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from adaptflow import env
from adaptflow.io import sha256_file
from adaptflow.weights.common import FetchError, PretrainedRef
from adaptflow.weights.download import download

#: torchvision's download address; `$ADAPTFLOW_TORCHVISION_URL` replaces it (a mirror laid out the same way).
TORCHVISION_URL = "https://download.pytorch.org/models"
_TORCH_HUB_HASH = re.compile(r"-([a-f0-9]{8,64})\.")


def check(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for a `torchvision:` URI, or None."""
    import difflib

    import torchvision

    _, arch, *rest = uri.split(":")
    weights = rest[0] if rest else "DEFAULT"
    if not arch or "/" in arch or len(rest) > 1:
        return f"'{uri}': not a torchvision address", "write torchvision:<arch> or torchvision:<arch>:<weights>, e.g. torchvision:resnet18:IMAGENET1K_V1"
    try:
        enum = torchvision.models.get_model_weights(arch)
    except ValueError:
        close = difflib.get_close_matches(arch, torchvision.models.list_models(), n=1)
        return f"'{uri}': torchvision has no model '{arch}'", f"did you mean '{close[0]}'?" if close else "see torchvision.models.list_models()"
    if weights != "DEFAULT" and weights not in enum.__members__:
        return f"'{uri}': torchvision has no weights '{weights}' for '{arch}'", f"use one of DEFAULT, {', '.join(w.name for w in enum)}"
    return None


@dataclass(frozen=True)
class TorchvisionWeights:
    """Where torchvision publishes one set of weights, where its cache keeps them, and their hash prefix."""

    uri: str
    arch: str
    url: str
    dest: Path
    prefix: str | None

    @classmethod
    def of(cls, uri: str) -> TorchvisionWeights:
        import torchvision

        _, arch, *rest = uri.split(":")
        weights_name = rest[0] if rest else "DEFAULT"
        enum = torchvision.models.get_model_weights(arch)
        weights = enum[weights_name] if weights_name != "DEFAULT" else enum.DEFAULT
        url = weights.url
        mirror = os.environ.get("ADAPTFLOW_TORCHVISION_URL")
        if mirror and url.startswith(TORCHVISION_URL + "/"):
            url = mirror.rstrip("/") + url.removeprefix(TORCHVISION_URL)
        filename = Path(urlparse(weights.url).path).name
        dest = Path(os.environ.get("TORCH_HOME") or env.cache_dir() / "torch") / "hub" / "checkpoints" / filename
        match = _TORCH_HUB_HASH.search(filename)
        return cls(uri, arch, url, dest, match.group(1) if match else None)

    def check(self, path: Path, expected: str | None) -> str:
        """The sha256 of `path`, which must match `expected` and the published prefix."""
        actual = sha256_file(path)
        if (expected and actual != expected) or (self.prefix and not actual.startswith(self.prefix)):
            raise FetchError(f"{path}: sha256 {actual} does not match {expected or self.prefix + '...'} published for {self.uri}; "
                             f"not those weights: delete the file and fetch again, or import the right one with "
                             f"adaptflow fetch {self.uri} --from FILE")
        return actual


def fetch(uri: str, expected: str | None, attempts: int, timeout: float) -> PretrainedRef:
    """The weights `uri` names, from torchvision's cache or downloaded into it, checked against the published hash."""
    weights = TorchvisionWeights.of(uri)
    dest = weights.dest
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            actual = weights.check(dest, expected)
        else:
            try:
                download(weights.url, dest, expected, attempts, timeout)
            except FetchError as exc:
                failure = str(exc).partition("; offline?")[0]
                raise FetchError(f"{failure}; offline? place the weights at {dest}, or import a copy: "
                                 f"adaptflow fetch {uri} --from FILE") from None
            try:
                actual = weights.check(dest, expected)
            except FetchError:
                dest.unlink(missing_ok=True)  # a download that is not the published file is not kept
                raise
    return PretrainedRef(uri, str(dest), actual, arch=weights.arch)


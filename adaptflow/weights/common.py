"""What every weights source shares: the resolved reference, the errors, and reading pinned digests."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptflow.errors import ExitCode, UserError

#: No pretrained weights: the architecture freshly initialised (the baseline transfer learning is measured against).
SCRATCH = "scratch"


class FetchError(UserError, RuntimeError):
    """A pretrained model could not be resolved, downloaded or verified; the message says what to do."""

    exit_code = ExitCode.FETCH_FAILED


class TransientFetchError(FetchError):
    """A failure that may pass on its own (timeouts, resets, 5xx): worth retrying."""


class PickleRefused(UserError, PermissionError):
    """`pretrained.allow_pickle=true` on a machine whose operator has not allowed pickled weights."""

    exit_code = ExitCode.FETCH_FAILED


@dataclass(frozen=True)
class PretrainedRef:
    """A resolved pretrained model: where it came from, where it is, and what it is."""

    uri: str
    path: str
    sha256: str
    arch: str | None = None
    allow_pickle: bool = False
    package: str | None = None  # `name==version` of the package the weights ship in (package: URIs)

    def to_dict(self) -> dict[str, str | None]:
        return asdict(self)


def fragment_digest(uri: str) -> str | None:
    """The sha256 a `<uri>#sha256=<hex>` fragment pins (lower case), or None without one."""
    fragment = uri.partition("#")[2]
    return fragment[len("sha256="):].lower() if fragment.lower().startswith("sha256=") else None


def sidecar_digest(sidecar: Path) -> str:
    """The digest a `<file>.sha256` sidecar records: `sha256sum`'s line, the hex digest first."""
    fields = sidecar.read_bytes().decode("ascii", errors="replace").split()
    if not fields or not re.fullmatch(r"[0-9a-fA-F]{64}", fields[0]):
        model = sidecar.name.removesuffix(".sha256")
        raise FetchError(f"{sidecar}: not a sha256 sidecar (it must start with the file's 64-hex-digit sha256); "
                         f"write it again in its folder with `sha256sum {model} > {sidecar.name}`, or delete it")
    return fields[0].lower()

"""`https://` and `http://` weights: streamed into a cache, verified, retried when the failure may pass.

A download with a known sha256 is cached by that digest; one without is cached by its URL with the
digest it arrived with beside it (`<file>.sha256`), and reused only while it still matches.
"""

from __future__ import annotations

import http.client
import logging
import socket
import urllib.error
import urllib.request
from hashlib import sha256 as sha256_hasher
from pathlib import Path
from urllib.parse import urlparse

from filelock import FileLock

from adaptflow import env
from adaptflow.console import progress
from adaptflow.io import CHUNK, atomic_write, mask_secrets, sha256_file, with_retries
from adaptflow.weights.common import FetchError, TransientFetchError, sidecar_digest

log = logging.getLogger(__name__)


def check(uri: str) -> tuple[str, str] | None:
    """(what is wrong, how to fix it) for an `http(s)://` address, or None."""
    return None if urlparse(uri).netloc else (f"'{uri}': no host in the address", "write https://<host>/<path>")


def fetch_url(url: str, expected: str | None, attempts: int, timeout: float) -> Path:
    """Download `url` into the cache, or reuse the cached file once it matches the digest it was stored under
    (`<file>.sha256` beside it, written with the download) and `expected`; plain http needs `expected`."""
    if expected is None and urlparse(url).scheme == "http":
        raise FetchError(f"{mask_secrets(url)}: plain http with no sha256 to check the file against, so anyone on the way could "
                         "swap it; use https, or pin the file's digest with pretrained.sha256 (or <url>#sha256=<64 hex digits>)")
    root = env.cache_dir() / "downloads"
    name = Path(urlparse(url).path).name or "download"
    key = f"sha256-{expected}" if expected else f"url-{sha256_hasher(url.encode()).hexdigest()[:24]}"
    dest = root / key / name
    sidecar = dest.with_name(dest.name + ".sha256")
    with FileLock(str(dest) + ".lock"):
        if dest.exists():
            try:
                stored = sidecar_digest(sidecar) if sidecar.exists() else None
            except FetchError:  # a damaged record verifies nothing
                stored = None
            if stored is not None and sha256_file(dest) == stored and expected in (None, stored):
                return dest
            log.warning("%s: the cached file does not match the sha256 it was stored under; downloading it again", dest)
        digest = download(url, dest, expected, attempts, timeout)
        with atomic_write(sidecar) as tmp:
            tmp.write_text(f"{digest}  {name}\n")
    return dest


def download(url: str, dest: Path, expected: str | None, attempts: int, timeout: float) -> str:
    """Stream `url` to `dest` (atomically) and return its sha256; retry transient failures. Messages name the
    URL with its credentials masked."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    shown = mask_secrets(url)
    try:
        digest = with_retries(lambda: _download_once(url, dest, expected, timeout), lambda exc: isinstance(exc, TransientFetchError),
                              f"download of {shown}", attempts)
    except TransientFetchError as exc:
        raise FetchError(f"{shown}: download failed after {attempts} attempts: {exc}") from exc
    log.info("downloaded %s (sha256 %s)", shown, digest)
    return digest


def _download_once(url: str, dest: Path, expected: str | None, timeout: float) -> str:
    request = urllib.request.Request(url, headers={"User-Agent": "adaptflow"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, atomic_write(dest) as tmp:
            size = response.headers.get("Content-Length")
            digest = sha256_hasher()
            received = 0
            with open(tmp, "wb") as out, progress(int(size) if size else None, f"download {dest.name}", unit="bytes") as advance:
                while chunk := response.read(CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                    received += len(chunk)
                    advance(len(chunk))
            if size is not None and received != int(size):
                raise TransientFetchError(f"truncated: received {received} of {size} bytes")
            actual = digest.hexdigest()
            if expected is not None and actual != expected:
                raise TransientFetchError(f"sha256 mismatch: got {actual}, expected {expected}")
            return actual  # leaving the block renames tmp onto dest
    except urllib.error.HTTPError as exc:
        if exc.code >= 500 or exc.code in (408, 429):
            raise TransientFetchError(f"HTTP {exc.code} {exc.reason}") from None
        raise FetchError(f"{mask_secrets(url)}: HTTP {exc.code} {exc.reason}; check the address") from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, socket.gaierror):
            raise FetchError(
                f"{mask_secrets(url)}: cannot resolve the host ({exc.reason}); offline? place the file in the cache or use a local path"
            ) from None
        raise TransientFetchError(f"connection failed: {exc.reason}") from None
    except (TimeoutError, ConnectionError, http.client.HTTPException) as exc:
        raise TransientFetchError(f"{type(exc).__name__}: {exc}") from None

"""Small I/O helpers: atomic writes, content hashes, and retries of transient failures.
Nothing here is ever half-written."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import random
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from adaptflow.errors import ConfigError

CHUNK = 1 << 20
T = TypeVar("T")
log = logging.getLogger(__name__)


#: Query parameters that carry credentials: API tokens, passwords, and the signatures of presigned URLs (S3, GCS,
#: Azure SAS). A name containing token, secret, password, signature or credential counts too.
SECRET_QUERY_PARAMS = frozenset({
    "token", "access_token", "id_token", "refresh_token", "auth", "authorization", "api_key", "apikey", "key", "password",
    "passwd", "pwd", "secret", "client_secret", "sig", "signature", "x-amz-signature", "x-amz-credential",
    "x-amz-security-token", "x-goog-signature", "x-goog-credential", "awsaccesskeyid", "googleaccessid", "policy",
})
_SECRET_QUERY_WORD = re.compile(r"token|secret|passw|signature|credential|api[_-]?key|access[_-]?key", re.IGNORECASE)
_QUERY_PAIR = re.compile(r"(?P<lead>[?&;](?P<name>[^=&;#\s?]+)=)(?P<value>[^&;#\s'\"]*)")
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^/:@\s]*):[^@/\s]+@", re.IGNORECASE)


def mask_secrets(text: str) -> str:
    """`text` safe to print or log: in any URL it holds, the password of `user:password@` and the values of query
    parameters that carry credentials (`?token=`, `X-Amz-Signature=`, `sig=`, ...) become `***`."""
    text = _URL_USERINFO.sub(r"\g<scheme>:***@", text)

    def mask(match: re.Match) -> str:
        name = match["name"].lower()
        secret = name in SECRET_QUERY_PARAMS or _SECRET_QUERY_WORD.search(name)
        return f"{match['lead']}***" if secret and match["value"] else match[0]

    return _QUERY_PAIR.sub(mask, text)


def with_retries(call: Callable[[], T], transient: Callable[[Exception], bool], what: str, attempts: int,
                 base_delay: float = 0.5, max_delay: float = 30.0, reason: Callable[[Exception], str] = str) -> T:
    """`call()`, called again after a transient failure, `attempts` times at most, with jittered
    exponential backoff between. A failure that is not transient, or the last one, is raised as is."""
    for attempt in range(1, attempts + 1):
        try:
            return call()
        except Exception as exc:
            if attempt == attempts or not transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random())
            log.warning("%s failed (%s); retry %d/%d in %.1fs", what, reason(exc), attempt, attempts - 1, delay)
            time.sleep(delay)
    raise ValueError(f"attempts must be >= 1, got {attempts}")


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: str | Path, data: Any) -> Path:
    """Write JSON atomically (sorted keys, so equal data gives equal bytes)."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(path)


def write_yaml(path: str | Path, data: Any) -> Path:
    """Write YAML atomically, keys in their given order."""
    import yaml

    with atomic_write(path) as tmp:
        tmp.write_text(yaml.safe_dump(data, sort_keys=False))
    return Path(path)


def unreachable(url: str, timeout: float = 10.0) -> str | None:
    """Why nothing answers HTTP at `url` (connection refused, no such host, timed out), or None when
    something does, whatever its status: a server that wants credentials answers 401."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return None
    except urllib.error.HTTPError:
        return None
    except (OSError, ValueError) as exc:
        return str(getattr(exc, "reason", None) or exc)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def parse_yaml(text: str, where: str) -> Any:
    """`text` read as YAML; when it is not YAML, a ConfigError naming `where`, the line and column,
    and what the parser expected (a bracket or quote left open, a tab, a colon in a plain value)."""
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML{at}: {problem}; fix it, or quote a value meant as text") from None


def read_text(path: str | Path) -> str:
    """A text file's content; a ConfigError naming the file where it is a folder, cannot be read, or is
    not UTF-8 text. A missing file raises FileNotFoundError, for callers that treat absence themselves."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except IsADirectoryError:
        raise ConfigError(f"{path}: a folder, not a file; name the file inside it") from None
    except PermissionError:
        raise ConfigError(f"{path}: permission denied; make it readable") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); save it as UTF-8") from None


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content; a ConfigError naming the file where it is not readable text or not YAML."""
    return parse_yaml(read_text(path), str(path))


def content_digest(data: Any, length: int = 16) -> str:
    """A short sha256 of JSON data (keys sorted): the same content, the same digest, for cache keys and lineage."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:length]


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def replace_dir(staging: str | Path, final: str | Path) -> Path:
    """Move a fully written folder into place, replacing what was there (two renames)."""
    import shutil

    staging, final = Path(staging), Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


@contextlib.contextmanager
def staged_dir(final: str | Path) -> Iterator[Path]:
    """Yield an empty folder beside `final`; when the block succeeds it replaces `final` whole,
    and when it fails `final` is left as it was."""
    import shutil

    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        yield staging
        replace_dir(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

"""Downloads through a loopback server that misbehaves on purpose: truncated bodies, 500s, slow
responses, wrong bytes, dropped connections. No corrupt cache entry ever; retries where they
help; a clear error where they cannot."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from adaptflow.weights import FetchError, fetch_pretrained
from conftest import QuietHandler, serve_on_loopback

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class FaultyServer:
    """Serves PAYLOAD at /model.pt; `faults` is a list of fault names used up one per request."""

    def __init__(self) -> None:
        self.faults: list[str] = []
        self.requests = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                with outer.lock:
                    outer.requests += 1
                    fault = outer.faults.pop(0) if outer.faults else "ok"
                if fault == "500":
                    self.send_error(500, "boom")
                elif fault == "truncate":
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(PAYLOAD)))
                    self.end_headers()
                    self.wfile.write(PAYLOAD[: len(PAYLOAD) // 3])
                    self.close_connection = True
                elif fault == "drop":
                    self.close_connection = True
                    self.connection.shutdown(2)
                elif fault == "slow":
                    time.sleep(3)
                    self.send_body(PAYLOAD)
                elif fault == "wrong":
                    self.send_body(PAYLOAD[::-1])
                else:
                    time.sleep(0.2)  # long enough for concurrent clients to overlap
                    self.send_body(PAYLOAD)

        self.httpd = serve_on_loopback(Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/model.pt"


@pytest.fixture
def server() -> Iterator[FaultyServer]:
    s = FaultyServer()
    yield s
    s.httpd.shutdown()


def _cache_files(project: Path) -> list[Path]:
    root = project.parent / "cache" / "downloads"
    return [p for p in root.rglob("*") if p.is_file() and not p.name.endswith((".lock", ".sha256"))] if root.exists() else []


def _assert_cache_is_clean(project: Path) -> None:
    for path in _cache_files(project):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == SHA, f"corrupt cache entry {path}"


@pytest.mark.parametrize("fault", ["500", "truncate", "drop", "slow", "wrong"])
def test_a_passing_fault_is_retried_away(project: Path, server: FaultyServer, faults, fault: str) -> None:
    with faults.attempt():
        server.faults = [fault, fault]
        ref = fetch_pretrained(server.url, SHA, attempts=4, timeout=1.0)
        assert ref.sha256 == SHA and Path(ref.path).read_bytes() == PAYLOAD
        assert server.requests == 3
        _assert_cache_is_clean(project)


@pytest.mark.parametrize(("fault", "message"), [
    ("500", "HTTP 500"),
    ("truncate", "truncated"),
    ("drop", "RemoteDisconnected"),
    ("wrong", "sha256 mismatch"),
])
def test_a_persistent_fault_fails_clearly_and_caches_nothing(project: Path, server: FaultyServer, faults, fault: str, message: str) -> None:
    with faults.attempt():
        server.faults = [fault] * 3
        with pytest.raises(FetchError, match=f"after 3 attempts.*{message}"):
            fetch_pretrained(server.url, SHA, attempts=3, timeout=1.0)
        assert _cache_files(project) == []


def test_concurrent_fetches_download_once_and_share_the_file(project: Path, server: FaultyServer, faults) -> None:
    with faults.attempt():
        with ThreadPoolExecutor(4) as pool:
            refs = list(pool.map(lambda _: fetch_pretrained(server.url, SHA), range(4)))
        assert {r.path for r in refs} == {refs[0].path}
        assert server.requests == 1
        _assert_cache_is_clean(project)


def test_an_interrupted_cache_entry_is_never_used(project: Path, server: FaultyServer, faults) -> None:
    """A stale partial file (from a killed process) sits where the download goes: it is replaced."""
    with faults.attempt():
        first = Path(fetch_pretrained(server.url, SHA).path)
        first.write_bytes(PAYLOAD[:100])  # what a crash mid-write would have left without atomic renames
        again = fetch_pretrained(server.url, SHA)
        assert Path(again.path).read_bytes() == PAYLOAD and server.requests == 2


def _tar(path: Path, members: dict[str, bytes], link: tuple[str, str] | None = None) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        if link:
            info = tarfile.TarInfo(link[0])
            info.type, info.linkname = tarfile.SYMTYPE, link[1]
            tf.addfile(info)
    return path


def test_archive_is_extracted_and_its_model_used(project: Path) -> None:
    _tar(project / "bundle.tar.gz", {"weights/model.pt": b"inside", "README": b"docs"})
    ref = fetch_pretrained("bundle.tar.gz")
    assert Path(ref.path).read_bytes() == b"inside" and ref.path.endswith("weights/model.pt")
    assert fetch_pretrained("bundle.tar.gz#README").path.endswith("README")


@pytest.mark.parametrize(("members", "link"), [
    ({"../../escaped.pt": b"x"}, None),
    ({"/abs/escaped.pt": b"x"}, None),
    ({"model.pt": b"x"}, ("evil", "/etc/passwd")),
], ids=["dot-dot", "absolute", "symlink-out"])
def test_archive_members_escaping_the_folder_are_refused(project: Path, bad_inputs, members: dict, link) -> None:
    import zipfile

    with bad_inputs.attempt():
        _tar(project / "evil.tar.gz", members, link)
        with pytest.raises(FetchError, match="would escape the extraction folder"):
            fetch_pretrained("evil.tar.gz")
        assert not list((project.parent / "cache").rglob("escaped.pt"))
        assert not (project.parent / "cache" / "extracted").exists() or not any(
            p.is_dir() and not p.name.startswith(".") for p in (project.parent / "cache" / "extracted").iterdir())
    with bad_inputs.attempt():
        with zipfile.ZipFile(project / "evil.zip", "w") as zf:
            zf.writestr("../outside.pt", b"x")
        with pytest.raises(FetchError, match="'../outside.pt' would escape"):
            fetch_pretrained("evil.zip")

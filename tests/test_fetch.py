"""The pretrained resolver, driven against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from adaptflow.weights import FetchError, fetch_pretrained
from conftest import QuietHandler, serve_on_loopback


class Server:
    """Serves files from a folder; `fail_first[path] = n` answers n requests with HTTP 500 first."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.hits: dict[str, int] = {}
        self.fail_first: dict[str, int] = {}
        server = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                if server.fail_first.get(self.path, 0) > 0:
                    server.fail_first[self.path] -= 1
                    self.send_error(500, "flaky")
                    return
                file = server.root / self.path.lstrip("/")
                if not file.is_file():
                    self.send_error(404, "not here")
                    return
                self.send_body(file.read_bytes())

        self.httpd = serve_on_loopback(Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    s = Server(root)
    yield s
    s.httpd.shutdown()


def _publish(server: Server, name: str, payload: bytes) -> str:
    (server.root / name).write_bytes(payload)
    return hashlib.sha256(payload).hexdigest()


def test_download_is_verified_cached_and_reused_offline(project: Path, server: Server) -> None:
    sha = _publish(server, "weights.pt", b"weights" * 1000)
    ref = fetch_pretrained(f"{server.url}/weights.pt", sha)
    assert ref.sha256 == sha and Path(ref.path).read_bytes() == b"weights" * 1000
    assert sha in ref.path  # content-addressed
    server.httpd.shutdown()  # offline now: the cache answers
    again = fetch_pretrained(f"{server.url}/weights.pt", sha)
    assert again.path == ref.path and server.hits["/weights.pt"] == 1


def test_plain_http_needs_a_hash_and_takes_it_from_the_address_too(project: Path, server: Server, bad_inputs) -> None:
    sha = _publish(server, "free.pt", b"free")
    with bad_inputs.attempt():
        with pytest.raises(FetchError, match=r"free.pt: plain http with no sha256 .* pin the file's digest with pretrained.sha256"):
            fetch_pretrained(f"{server.url}/free.pt")
        assert server.hits == {}, "nothing is downloaded that nothing could check"
    assert fetch_pretrained(f"{server.url}/free.pt#sha256={sha.upper()}").sha256 == sha
    with bad_inputs.attempt(), pytest.raises(FetchError, match="pins sha256 .* but pretrained.sha256 is 0000"):
        fetch_pretrained(f"{server.url}/free.pt#sha256={sha}", "0" * 64)


def test_wrong_checksum_fails_and_leaves_no_cache_entry(project: Path, server: Server) -> None:
    _publish(server, "weights.pt", b"real bytes")
    wrong = "0" * 64
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch_pretrained(f"{server.url}/weights.pt", wrong, attempts=2)
    cache = project.parent / "cache" / "downloads"
    assert not [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]


def test_404_fails_at_once_with_the_address(project: Path, server: Server) -> None:
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_pretrained(f"{server.url}/missing.pt", "0" * 64, attempts=4)
    assert server.hits["/missing.pt"] == 1


def test_server_errors_are_retried(project: Path, server: Server) -> None:
    sha = _publish(server, "flaky.pt", b"eventually")
    server.fail_first["/flaky.pt"] = 2
    assert fetch_pretrained(f"{server.url}/flaky.pt", sha, attempts=3).sha256 == sha
    assert server.hits["/flaky.pt"] == 3


def test_a_download_that_keeps_failing_stops_after_its_attempts(project: Path, server: Server, caplog: pytest.LogCaptureFixture) -> None:
    sha = _publish(server, "down.pt", b"never served")
    server.fail_first["/down.pt"] = 10
    with caplog.at_level(logging.WARNING, logger="adaptflow.io"), pytest.raises(FetchError, match="download failed after 3 attempts: HTTP 500"):
        fetch_pretrained(f"{server.url}/down.pt", sha, attempts=3)
    assert server.hits["/down.pt"] == 3
    assert [r.getMessage().split("; ")[1][:9] for r in caplog.records] == ["retry 1/2", "retry 2/2"]


def test_local_file_is_checked_against_its_sidecar(project: Path) -> None:
    model = project / "model.pt"
    model.write_bytes(b"model")
    (project / "model.pt.sha256").write_text(hashlib.sha256(b"model").hexdigest() + "  model.pt\n")
    assert fetch_pretrained("model.pt").path == str(model)
    model.write_bytes(b"tampered")
    with pytest.raises(FetchError, match="the file changed since it was published"):
        fetch_pretrained("model.pt")
    with pytest.raises(FetchError, match="no such file"):
        fetch_pretrained("nothing/here.pt")
    for sidecar in (b"", b"\xff\xfe", b"zzz  model.pt\n"):  # empty, not text, not a digest: never a "changed file"
        (project / "model.pt.sha256").write_bytes(sidecar)
        with pytest.raises(FetchError, match=r"model.pt.sha256: not a sha256 sidecar .*`sha256sum model.pt > model.pt.sha256`, or delete it$"):
            fetch_pretrained("model.pt")


def test_torchvision_cache_entry_with_a_wrong_hash_is_refused(project: Path) -> None:
    checkpoints = project.parent / "cache" / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "resnet18-f37072fd.pth").write_bytes(b"not the published weights")
    with pytest.raises(FetchError, match="delete the file and fetch again"):
        fetch_pretrained("torchvision:resnet18:IMAGENET1K_V1")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("torchvision:resnet18:NO_SUCH_WEIGHTS", "torchvision has no weights 'NO_SUCH_WEIGHTS' for 'resnet18'; use one of DEFAULT, IMAGENET1K_V1"),
        ("torchvision:resnt18", "torchvision has no model 'resnt18'; did you mean 'resnet18'"),
        ("torchvision://resnet18", "not a torchvision address; write torchvision:<arch>"),
        ("yolov8n.pt", "no such file .*; for the Ultralytics asset write ultralytics:yolov8n.pt"),
        ("s3://bucket/model.pt", "unknown scheme"),
        ("", "pretrained.uri is empty"),
    ],
)
def test_bad_uris_say_what_is_wrong(project: Path, uri: str, message: str) -> None:
    with pytest.raises(FetchError, match=message):
        fetch_pretrained(uri)

"""Findings of the security review (#38): each attack, tried for real, is refused with one line
naming the file or field and the fix, and leaves no trace of having run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from conftest import REPO, TINY, use_project


def _cli(*args: str, cwd: Path = REPO, **env: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])  # this checkout's adaptflow, from any folder
    return subprocess.run([sys.executable, "-m", "adaptflow", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "COLUMNS": "250", "PYTHONPATH": path, **env}, timeout=600)


def _one_line_refusal(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-3000:])
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    error = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert error, out.stderr[-3000:]
    for fragment in fragments:
        assert fragment in out.stderr, f"'{fragment}' not in:\n{out.stderr[-3000:]}"


# --- domain names stay under data.root ------------------------------------------------------------


def test_data_add_to_a_domain_named_with_dot_dot_writes_nothing_outside_data_root(tmp_path: Path, bad_inputs) -> None:
    with bad_inputs.attempt():
        (tmp_path / "inbox" / "0").mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "inbox" / "0" / "new.png")
        out = _cli("data", "add", str(tmp_path / "inbox"), f"data.root={tmp_path / 'data'}", "data.target=../escape")
        _one_line_refusal(out, "data.target", "'../escape' is not a plain folder name", "name a folder directly under data.root")
        assert not (tmp_path / "escape").exists() and not (tmp_path / "data").exists()


# --- pickled code in model files never runs ---------------------------------------------------------


class _Payload:
    """What a malicious checkpoint holds: unpickling it runs `exec`, which writes the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return exec, (f"open({str(self.marker)!r}, 'w').write('the payload ran')",)


def _malicious_checkpoint(path: Path, marker: Path) -> str:
    """A file shaped like an Ultralytics checkpoint whose model, once unpickled, runs code; returns its sha256."""
    import hashlib

    import torch

    torch.save({"model": _Payload(marker), "ema": None, "date": "2026-01-01", "version": "8.4.0"}, path)
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def scenes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny detection domains in a bare project folder (no git, DVC or trained model needed)."""
    from adaptflow.data.scenes import build_scene_data
    from test_detection import TINY_SCENES

    root = use_project(tmp_path / "project", tmp_path / "cache", monkeypatch)
    build_scene_data(root / "data", sizes=TINY_SCENES)
    (root / "data.dvc").write_text("outs:\n- md5: 0123456789abcdef0123456789abcdef.dir\n  path: data\n")  # as `dvc add data` records it
    return root


DETECTION = ["-c", str(REPO / "configs" / "detection.yaml"), "data.image_size=64", "finetune.epochs=1", "finetune.batch_size=4"]


def test_a_malicious_ultralytics_asset_is_refused_and_never_runs_its_payload(scenes: Path, tmp_path: Path, monkeypatch, bad_inputs) -> None:
    from test_fetch import Server

    served, marker = tmp_path / "assets", tmp_path / "MARKER"
    served.mkdir()
    sha = _malicious_checkpoint(served / "yolov8n.pt", marker)
    server = Server(served)
    monkeypatch.setenv("ADAPTFLOW_ULTRALYTICS_ASSETS_URL", server.url)  # a mirror on plain http
    with bad_inputs.attempt():  # without a digest nothing vouches for the bytes: not even downloaded
        out = _cli("fetch", "ultralytics:yolov8n.pt", cwd=scenes)
        _one_line_refusal(out, f"{server.url}/yolov8n.pt: plain http with no sha256", "pin the file's digest with pretrained.sha256")
        assert server.hits == {}
    with bad_inputs.attempt():  # its digest pinned, it downloads, and loading it refuses what it refers to
        out = _cli("finetune", *DETECTION, "pretrained.uri=ultralytics:yolov8n.pt", f"pretrained.sha256={sha}", "--run-dir", "runs/evil",
                   cwd=scenes)
        _one_line_refusal(out, "yolov8n.pt: refers to builtins.exec, which no Ultralytics model holds, and loading it could run code; "
                               "refused. Use the file Ultralytics publishes")
        assert server.hits == {"/yolov8n.pt": 1}
        assert not list((scenes / "runs").rglob("model.pt"))
    assert not marker.exists(), "the checkpoint's payload ran"


def test_a_pickled_detector_file_is_refused_by_validate_before_anything_runs(scenes: Path, tmp_path: Path, bad_inputs) -> None:
    from adaptflow.detection import yolo

    marker = tmp_path / "MARKER"
    _malicious_checkpoint(scenes / "evil.pt", marker)
    yolo.ultralytics()
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(scenes / "real.pt")  # a genuine Ultralytics checkpoint: its model classes are allowed
    for command in ("validate", "finetune"):
        with bad_inputs.attempt():
            out = _cli(command, *DETECTION, "pretrained.uri=evil.pt", cwd=scenes)
            _one_line_refusal(out, f"pretrained.uri: {scenes / 'evil.pt'} holds pickled Python objects (builtins.exec), which can run code "
                                   "when loaded; Use the file Ultralytics publishes")
    out = _cli("validate", *DETECTION, "pretrained.uri=real.pt", cwd=scenes)
    assert out.returncode == 0, out.stderr[-3000:]
    assert not marker.exists(), "the checkpoint's payload ran"


def test_predict_with_a_pickled_model_file_is_one_line(tmp_path: Path, bad_inputs) -> None:
    import torch

    marker = tmp_path / "MARKER"
    (tmp_path / "images").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "images" / "a.png")
    torch.save(_Payload(marker), tmp_path / "evil.pt")
    (tmp_path / "garbage.pt").write_bytes(b"not a model at all")
    for name, message in (("evil.pt", "holds pickled Python objects, which can run code when loaded; refused"),
                          ("garbage.pt", "not a PyTorch model file")):
        with bad_inputs.attempt():
            out = _cli("predict", str(tmp_path / "images"), "--model", str(tmp_path / name), "--no-check", "-o", str(tmp_path / "p.csv"),
                       cwd=tmp_path)
            _one_line_refusal(out, f"{tmp_path / name}: {message}")
            assert not (tmp_path / "p.csv").exists()
    assert not marker.exists(), "the model file's payload ran"


def test_a_pickled_classifier_is_refused_by_validate_and_finetune_in_one_line(project: Path, tmp_path: Path, bad_inputs) -> None:
    import torch

    marker = tmp_path / "MARKER"
    torch.save({"state_dict": _Payload(marker)}, project / "evil.pt")
    for command in ("validate", "finetune"):
        with bad_inputs.attempt():
            out = _cli(command, *TINY, "pretrained.uri=evil.pt", cwd=project)
            _one_line_refusal(out, f"pretrained.uri: {project / 'evil.pt'} holds pickled Python objects (builtins.exec)",
                              "set pretrained.allow_pickle=true if you trust its source")
    assert not marker.exists(), "the model file's payload ran"


# --- downloads: credentials in addresses stay out of logs, cached files are checked on reuse ---------------


def test_credentials_in_a_download_address_are_masked_in_output_logs_and_mlflow(tmp_path: Path, monkeypatch, bad_inputs) -> None:
    import hashlib

    from urllib.parse import urlparse

    from adaptflow import tracking
    from conftest import QuietHandler, serve_on_loopback, tiny_config

    use_project(tmp_path / "project", tmp_path / "cache", monkeypatch)
    answers = [500]  # the first request fails: the retry's warning names the address too

    class Presigned(QuietHandler):  # serves w.pt whatever the query, as a presigned-URL store does
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            status = answers.pop(0) if answers else 200 if urlparse(self.path).path == "/w.pt" else 404
            if status == 200:
                self.send_body(b"weights")
            else:
                self.send_error(status)

    httpd = serve_on_loopback(Presigned)
    sha = hashlib.sha256(b"weights").hexdigest()
    server_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    secrets = "token=TOKEN123&X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=SIG456&sig=AZSIG789"
    url = f"{server_url}/w.pt?{secrets}&size=1"
    out = _cli("fetch", url, "--sha256", sha, cwd=tmp_path / "project")
    assert out.returncode == 0, out.stderr[-3000:]
    shown = out.stdout + out.stderr
    assert "retry 1/" in shown and "downloaded" in shown
    assert "token=***&X-Amz-Credential=***&X-Amz-Signature=***&sig=***&size=1" in shown
    with bad_inputs.attempt():
        out = _cli("fetch", f"{server_url}/missing.pt?{secrets}", "--sha256", sha, cwd=tmp_path / "project")
        _one_line_refusal(out, "missing.pt?token=***", "HTTP 404")
        shown += out.stdout + out.stderr
    for secret in ("TOKEN123", "AKIAEXAMPLE", "SIG456", "AZSIG789"):
        assert secret not in shown

    cfg = tiny_config(f"pretrained.uri={url}")
    run_id = tracking.start_run(cfg.tracking, "masked", {"pretrained_uri": url}, cfg.model_dump(mode="json"))
    run = tracking.client(cfg.tracking).get_run(run_id)
    assert run.data.params["pretrained.uri"] == f"{server_url}/w.pt?token=***&X-Amz-Credential=***&X-Amz-Signature=***&sig=***&size=1"
    assert "SIG456" not in str(run.data.params) + str(run.data.tags)
    httpd.shutdown()


@pytest.fixture
def https_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A loopback HTTPS server with a throwaway certificate the client trusts (SSL_CERT_FILE); serves tmp_path/https."""
    import http.server
    import ssl
    import threading

    from conftest import QuietHandler

    cert, key, root = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "https"
    root.mkdir()
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True)
    hits: list[str] = []

    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            hits.append(self.path)
            self.send_body((root / self.path.lstrip("/")).read_bytes())

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    yield f"https://127.0.0.1:{httpd.server_address[1]}", root, hits
    httpd.shutdown()


def test_a_cached_download_that_changed_is_fetched_again(tmp_path: Path, monkeypatch, https_server, faults) -> None:
    import hashlib

    from adaptflow.pretrained import fetch_pretrained

    use_project(tmp_path / "project", tmp_path / "cache", monkeypatch)
    url, root, hits = https_server
    (root / "w.pt").write_bytes(b"published weights")
    ref = fetch_pretrained(f"{url}/w.pt")  # https, no digest given: the digest it arrived with is stored beside it
    sidecar = Path(ref.path + ".sha256")
    assert sidecar.read_text().split()[0] == ref.sha256 == hashlib.sha256(b"published weights").hexdigest()
    assert fetch_pretrained(f"{url}/w.pt").path == ref.path and len(hits) == 1  # unchanged: reused
    with faults.attempt():
        Path(ref.path).write_bytes(b"swapped on disk")  # someone with write access to the cache
        again = fetch_pretrained(f"{url}/w.pt")
        assert Path(again.path).read_bytes() == b"published weights" and again.sha256 == ref.sha256 and len(hits) == 2

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


def _one_line_refusal(out: subprocess.CompletedProcess, *fragments: str, code: int = 3) -> None:
    """Refused with one `error:` line holding `fragments`, no traceback, and exit status `code` (3: invalid input, 5: a fetch refused)."""
    assert out.returncode == code, (out.returncode, out.stderr[-3000:])
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
        _one_line_refusal(out, f"{server.url}/yolov8n.pt: plain http with no sha256", "pin the file's digest with pretrained.sha256", code=5)
        assert server.hits == {}
    out = _cli("fetch", f"ultralytics:yolov8n.pt#sha256={sha}", cwd=scenes)  # pinned in the address: fetched (not loaded)
    assert out.returncode == 0 and server.hits == {"/yolov8n.pt": 1}, out.stderr[-3000:]
    with bad_inputs.attempt():  # its digest pinned, the verified cache answers, and loading it refuses what it refers to
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


def test_allow_pickle_in_a_config_is_refused_unless_the_operator_allowed_it(project: Path, tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch, bad_inputs) -> None:
    """Trust is the operator's decision, not a flow parameter: `pretrained.allow_pickle=true` takes
    effect only where the environment sets ADAPTFLOW_ALLOW_PICKLE=1. Without it, the CLI refuses in
    one line naming the variable, and so do the core loaders a forged run record could reach."""
    import torch

    from adaptflow.errors import ModelFileError
    from adaptflow.models import load_source_model
    from adaptflow.weights import PickleRefused, fetch_pretrained

    monkeypatch.delenv("ADAPTFLOW_ALLOW_PICKLE", raising=False)
    marker = tmp_path / "MARKER"
    torch.save({"state_dict": _Payload(marker)}, project / "evil.pt")
    for command in ("validate", "finetune"):
        with bad_inputs.attempt():
            out = _cli(command, *TINY, "pretrained.uri=evil.pt", "pretrained.allow_pickle=true", cwd=project)
            _one_line_refusal(out, "pretrained.allow_pickle: pretrained.allow_pickle=true is refused here", "ADAPTFLOW_ALLOW_PICKLE=1")
    with bad_inputs.attempt(), pytest.raises(PickleRefused, match="set(ting)? ADAPTFLOW_ALLOW_PICKLE=1"):
        fetch_pretrained("evil.pt", allow_pickle=True)
    with bad_inputs.attempt(), pytest.raises(ModelFileError, match="ADAPTFLOW_ALLOW_PICKLE=1"):
        load_source_model(project / "evil.pt", "small_cnn", allow_pickle=True)
    assert not marker.exists(), "the model file's payload ran"

    monkeypatch.setenv("ADAPTFLOW_ALLOW_PICKLE", "1")  # the operator's decision, on this machine
    assert fetch_pretrained("evil.pt", allow_pickle=True).allow_pickle


def test_pretrain_output_outside_the_project_is_refused_before_anything_is_written(project: Path, tmp_path: Path,
                                                                                     bad_inputs) -> None:
    """A flow run writes only inside its project: `pretrain.output` that resolves elsewhere (an
    absolute path, `..`) is refused in one line, by validation and by the stage itself."""
    from adaptflow.config import PretrainConfig
    from adaptflow.errors import ConfigError
    from adaptflow.pretrain import published_dir

    for output in (str(tmp_path / "elsewhere"), "../elsewhere"):
        with bad_inputs.attempt():
            out = _cli("pretrain", *TINY, f"pretrain.output={output}", cwd=project)
            _one_line_refusal(out, "pretrain.output", "outside the project folder")
        with bad_inputs.attempt(), pytest.raises(ConfigError, match="outside the project folder"):
            published_dir(PretrainConfig(output=Path(output)))
    assert not (tmp_path / "elsewhere").exists()
    assert published_dir(PretrainConfig(output=Path("models/other"))) == project / "models" / "other"


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
        _one_line_refusal(out, "missing.pt?token=***", "HTTP 404", code=5)
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

    from adaptflow.weights import fetch_pretrained

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


# --- symbolic links out of a data folder are not followed --------------------------------------------


def _image(path: Path, value: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (8, 8), value).save(path)
    return path


def test_data_add_refuses_an_image_linked_from_outside_the_folder(tmp_path: Path, bad_inputs) -> None:
    secret = _image(tmp_path / "private" / "secret.png", 200)
    _image(tmp_path / "inbox" / "0" / "new.png")
    (tmp_path / "inbox" / "0" / "linked.png").symlink_to(secret)
    with bad_inputs.attempt():
        out = _cli("data", "add", str(tmp_path / "inbox"), f"data.root={tmp_path / 'data'}", "data.target=dom")
        _one_line_refusal(out, f"{tmp_path / 'inbox' / '0' / 'linked.png'}: a symbolic link to {secret}, outside {tmp_path / 'inbox'}",
                          "copy the file into the folder, or remove the link")
        assert not (tmp_path / "data").exists()


def test_a_class_folder_linked_from_outside_is_refused_by_validation_and_the_loader(tmp_path: Path, bad_inputs) -> None:
    from adaptflow.data.folders import LinkOutsideError, load_image_folder
    from adaptflow.validate import Report, check_image_split

    split = tmp_path / "data" / "dom" / "train"
    _image(split / "0" / "a.png")
    _image(split / "0" / "b.png", 30)
    _image(tmp_path / "elsewhere" / "c.png", 90)
    (split / "1").symlink_to(tmp_path / "elsewhere")
    with bad_inputs.attempt():
        report = Report()
        check_image_split(split, report)
        assert [str(p) for p in report.errors] == [f"{split / '1'}: a symbolic link to {tmp_path / 'elsewhere'}, outside {split}; "
                                                   "copy the file into the folder, or remove the link"]
    with bad_inputs.attempt(), pytest.raises(LinkOutsideError, match=f"{split / '1' / 'c.png'}: a symbolic link to .*elsewhere/c.png"):
        load_image_folder(split, 8, ("0", "1"))
    (split / "0" / "inside.png").symlink_to(split / "0" / "a.png")  # a link that stays inside is a file like any other
    (split / "1").unlink()
    report = Report()
    check_image_split(split, report)
    assert report.ok, [str(p) for p in report.errors]


# --- detection data: labels without images, Ultralytics' own layout -----------------------------------


def test_a_yolo_label_without_its_image_is_named_by_validate_and_data_add(scenes: Path, tmp_path: Path, bad_inputs) -> None:
    from adaptflow.detection.ingest import add_detection_images
    from adaptflow.data.scenes import build_scene_data
    from adaptflow.validate import DataValidationError

    train = scenes / "data" / "photo_scenes" / "train"
    (train / "labels" / "9.txt").write_text("3 0.5 0.5 0.2 0.2\n")
    with bad_inputs.attempt():
        out = _cli("validate", *DETECTION, cwd=scenes)
        _one_line_refusal(out, f"{train / 'labels' / '9.txt'}: label file without an image (no images/9.*", "add its image, fix its name")
    (train / "labels" / "9.txt").unlink()
    build_scene_data(tmp_path / "new", sizes={"photo_scenes": {"fresh": 2}})
    fresh = tmp_path / "new" / "photo_scenes" / "fresh"
    (fresh / "images" / "00001.jpg").unlink()
    before = sorted((train / "labels").iterdir())
    with bad_inputs.attempt(), pytest.raises(DataValidationError, match="00001.txt: label file without an image"):
        add_detection_images(fresh, train, 10)
    assert sorted((train / "labels").iterdir()) == before, "nothing was added"


def test_a_detection_image_linked_from_outside_is_refused(scenes: Path, tmp_path: Path, bad_inputs) -> None:
    from adaptflow.data.folders import LinkOutsideError
    from adaptflow.detection.data import image_files

    test = scenes / "data" / "photo_scenes" / "test"
    outside = _image(tmp_path / "elsewhere" / "photo.jpg")
    (test / "images" / "photo.jpg").symlink_to(outside)
    (test / "labels" / "photo.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    with bad_inputs.attempt():
        out = _cli("validate", *DETECTION, cwd=scenes)
        _one_line_refusal(out, f"{test / 'images' / 'photo.jpg'}: a symbolic link to {outside}, outside {test / 'images'}")
    with bad_inputs.attempt(), pytest.raises(LinkOutsideError, match="photo.jpg: a symbolic link to"):
        image_files(test)


def _as_ultralytics_layout(domain: Path, splits: dict[str, str]) -> None:
    """Lay a `<split>/images|labels` domain out as Ultralytics documents: `images/<key>`, `labels/<key>`, data.yaml naming them."""
    import shutil

    import yaml

    spec = yaml.safe_load((domain / "data.yaml").read_text())
    spec = {"path": "/where/it/was/made"} | {key: f"images/{key}" for key in splits.values()} | {"names": spec["names"]}
    for split, key in splits.items():
        for kind in ("images", "labels"):
            if (domain / split / kind).is_dir():
                (domain / kind).mkdir(exist_ok=True)
                shutil.move(domain / split / kind, domain / kind / key)
        shutil.rmtree(domain / split)
    (domain / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))


def test_ultralytics_own_dataset_layout_is_validated_loaded_added_to_and_trained_on(scenes: Path, tmp_path: Path, bad_inputs) -> None:
    from adaptflow.config import load_config
    from adaptflow.detection.ingest import add_detection_images
    from adaptflow.data.scenes import build_scene_data
    from adaptflow.detection import stages, yolo
    from adaptflow.detection.data import load_detection_split, read_names
    from adaptflow.detection.models import load_detector
    from adaptflow.weights import fetch_pretrained

    data = scenes / "data"
    classes = read_names(data / "photo_scenes")
    before = {split: load_detection_split(data / "photo_scenes" / split, 64, classes) for split in ("train", "test")}
    # the source as Ultralytics' docs show it (train and val; val is the held-out split), the target with a test split too
    _as_ultralytics_layout(data / "mnist_scenes", {"train": "train", "test": "val"})
    _as_ultralytics_layout(data / "photo_scenes", {"train": "train", "test": "test", "unlabeled": "unlabeled"})
    assert (data / "photo_scenes" / "images" / "train").is_dir() and not (data / "photo_scenes" / "train").exists()
    yolo.ultralytics()
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(scenes / "start.pt")  # an Ultralytics checkpoint to fine-tune from
    start = [*DETECTION, "pretrained.uri=start.pt"]

    out = _cli("validate", *start, cwd=scenes)
    assert out.returncode == 0 and out.stdout.startswith("ok: 52 images checked"), out.stdout + out.stderr[-3000:]
    for split, decoded in before.items():
        again = load_detection_split(data / "photo_scenes" / split, 64, classes)
        assert again.images.equal(decoded.images) and again.boxes.equal(decoded.boxes)

    build_scene_data(tmp_path / "new", sizes={"photo_scenes": {"fresh": 2}})
    assert add_detection_images(tmp_path / "new" / "photo_scenes" / "fresh", data / "photo_scenes" / "train", 10) == {"images": 2}
    assert len(list((data / "photo_scenes" / "images" / "train").iterdir())) == 14 == len(list((data / "photo_scenes" / "labels" / "train").iterdir()))
    (data / "photo_scenes" / "labels" / "train" / "stray.txt").write_text("1 0.5 0.5 0.2 0.2\n")
    with bad_inputs.attempt():  # checked alike: a label without its image is named in this layout too
        out = _cli("validate", *start, cwd=scenes)
        _one_line_refusal(out, f"{data / 'photo_scenes' / 'labels' / 'train' / 'stray.txt'}: label file without an image")
    (data / "photo_scenes" / "labels" / "train" / "stray.txt").unlink()

    cfg = load_config(REPO / "configs" / "detection.yaml", ["data.image_size=64", "finetune.epochs=1", "finetune.batch_size=4",
                                                            "finetune.device=cpu", "pretrained.uri=start.pt"])
    trained = stages.finetune(cfg.finetune, cfg.data, fetch_pretrained(cfg.pretrained.uri), scenes / "runs" / "finetune")
    assert load_detector(trained.path)[1]["classes"] == classes

    spec = (data / "photo_scenes" / "data.yaml").read_text()
    (data / "photo_scenes" / "data.yaml").write_text(spec.replace("test: images/test", "test: ../../../outside"))
    with bad_inputs.attempt():  # a data.yaml that points out of its domain folder is refused, like a domain name with '..'
        out = _cli("validate", *start, cwd=scenes)
        _one_line_refusal(out, "data.yaml: `test: ../../../outside` leads to", "outside the domain folder",
                          "keep the dataset's folders inside it (e.g. test: images/test)")

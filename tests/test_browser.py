"""A person starts a custom run from the Prefect UI's form in headless Chromium, changing one
parameter; the run completes with that parameter and registers a model, and its pages show what it did:
the run's artifacts and log lines in the Prefect UI, the model version's card and lineage in MLflow's.

The screenshots land in reports/browser/; with ADAPTFLOW_SCREENSHOTS_DIR=docs (`make screenshots`) they
replace the ones the documentation shows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from test_server import _free_port, _start, _stop, _wait, served  # noqa: F401 - served: a Prefect server with the deployments served

pytestmark = pytest.mark.browser
SCRIPT = REPO / "tests" / "browser" / "custom_run.mjs"
SCREENS = REPO / "tests" / "browser" / "screens.mjs"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


@pytest.fixture
def browser_ready() -> None:
    missing = [what for what, ok in [
        (f"Chromium at {CHROMIUM} (apt-get install chromium)", Path(CHROMIUM).exists()),
        ("node", shutil.which("node") is not None),
        ("tests/browser/node_modules (npm ci --prefix tests/browser)", (SCRIPT.parent / "node_modules" / "playwright-core").is_dir()),
    ] if not ok]
    if missing:
        if os.environ.get("ADAPTFLOW_REQUIRE_BROWSER"):
            pytest.fail(f"browser test required but missing: {missing}")
        pytest.skip(f"browser test needs {missing}")


def mlflow_ui(tmp_path: Path) -> tuple[str, object]:
    """The MLflow UI on the project's store, on a free loopback port: (its URL, its process)."""
    import httpx

    from adaptflow import env as adaptflow_env

    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", adaptflow_env.default_tracking_uri(),
           "--default-artifact-root", adaptflow_env.default_artifact_location(), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = _start(cmd, {**os.environ, **adaptflow_env.MLFLOW_SERVER_DEFAULTS}, tmp_path / "mlflow.log")
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(up, 180, "the MLflow server")
    except TimeoutError:
        _stop(proc)
        raise
    return url, proc


def test_custom_run_from_the_ui_form_completes_with_the_changed_parameter(browser_ready, served, project: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env as adaptflow_env

    server, _ = served
    shots = tmp_path / "screenshots"
    shots.mkdir()
    done = subprocess.run(["node", str(SCRIPT), server.ui, "transfer", "Finetune", "Epochs", "2", str(shots)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"deployment": "transfer", "section": "Finetune", "field": "Epochs", "before": "3", "after": "2"}
    assert (shots / "prefect-custom-run-form.png").stat().st_size > 10_000

    runs = server.runs_of("transfer")
    assert len(runs) == 1 and runs[0]["parameters"]["config"]["finetune"]["epochs"] == 2
    run = server.finish(runs[0]["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    champion = MlflowClient(adaptflow_env.default_tracking_uri()).get_model_version_by_alias("adaptflow-classifier", "champion")
    assert champion.tags["adaptflow.prefect_flow_run_id"] == run["id"]

    url, mlflow = mlflow_ui(tmp_path)
    try:
        shown = subprocess.run(["node", str(SCREENS), server.ui, run["id"], url, "adaptflow-classifier", str(champion.version), str(shots)],
                               capture_output=True, text=True, timeout=300)
    finally:
        _stop(mlflow)
    assert shown.returncode == 0, shown.stderr[-3000:]
    seen = json.loads(shown.stdout.strip().splitlines()[-1])
    assert "mlflow-model-version" in seen["artifacts"] and "validated " in seen["logs"], seen
    assert "adaptflow.pretrained_sha256" in seen["model_version"] and "mlflow models serve" in seen["model_version"], seen["model_version"]
    for name in ("prefect-flow-run.png", "prefect-flow-run-logs.png", "mlflow-model-version.png", "mlflow-model-version-lineage.png"):
        assert (shots / name).stat().st_size > 10_000, name
    shutil.copytree(shots, REPO / "reports" / "browser", dirs_exist_ok=True)  # the latest screenshots, for a look
    if os.environ.get("ADAPTFLOW_SCREENSHOTS_DIR"):  # `make screenshots`: the ones the docs show
        shutil.copytree(shots, REPO / os.environ["ADAPTFLOW_SCREENSHOTS_DIR"], dirs_exist_ok=True)

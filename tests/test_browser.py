"""A person starts a custom run from the Prefect UI's form in headless Chromium, changing one
parameter; the run completes with that parameter and registers a model."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from test_server import served  # noqa: F401 - the fixture: a Prefect server with the deployments served

pytestmark = pytest.mark.browser
SCRIPT = REPO / "tests" / "browser" / "custom_run.mjs"
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
    assert (shots / "custom-run-form.png").stat().st_size > 10_000

    runs = server.runs_of("transfer")
    assert len(runs) == 1 and runs[0]["parameters"]["config"]["finetune"]["epochs"] == 2
    run = server.finish(runs[0]["id"])
    assert run["state_type"] == "COMPLETED", run["state"]
    champion = MlflowClient(adaptflow_env.default_tracking_uri()).get_model_version_by_alias("adaptflow-classifier", "champion")
    assert champion.tags["adaptflow.prefect_flow_run_id"] == run["id"]
    shutil.copytree(shots, REPO / "reports" / "browser", dirs_exist_ok=True)  # the latest screenshots, for a look

"""`dvc repro` in a fresh clone reproduces the flow's model and metrics; a second repro does nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adaptflow.config import dump_params
from adaptflow.data.demo import build_demo_data
from adaptflow.io import read_json, sha256_file
from conftest import REPO, run, tiny_config


@pytest.fixture
def clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    dest = tmp_path / "clone"
    run(["git", "clone", "-q", str(REPO), str(dest)], tmp_path)
    dump_params(tiny_config(), dest / "params.yaml")
    build_demo_data(dest / "data", source_test_per_class=6, target_test_per_class=6, labeled_per_class=4, limit_per_class=16)
    run([sys.executable, "-m", "dvc", "add", "data"], dest)
    monkeypatch.setenv("ADAPTFLOW_ROOT", str(dest))
    monkeypatch.setenv("ADAPTFLOW_CACHE", str(tmp_path / "cache"))
    monkeypatch.chdir(dest)
    return dest


def _repro(root: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return run([sys.executable, "-m", "dvc", "repro"], root, env=env).stdout


def test_repro_reproduces_the_flow_and_second_repro_is_a_no_op(prefect_api, clone: Path) -> None:
    from flows.pretrain import pretrain
    from flows.transfer import transfer

    cfg = tiny_config()
    source = pretrain(config=cfg)["published"]
    flow_metrics = transfer(config=cfg)["metrics"]

    first = _repro(clone)
    assert "Running stage 'finetune'" in first and "Running stage 'register'" in first
    assert sha256_file(clone / "models" / "source" / "model.pt") == source["sha256"]
    assert read_json(clone / "outputs" / "evaluate" / "metrics.json") == flow_metrics
    registration = read_json(clone / "outputs" / "register" / "registration.json")
    assert registration["model_uri"].startswith("models:/adaptflow-classifier/")

    second = _repro(clone)
    assert "Running stage" not in second and "up to date" in second
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=clone, capture_output=True, text=True)
    assert json.dumps(flow_metrics["target_accuracy"]) in shown.stdout

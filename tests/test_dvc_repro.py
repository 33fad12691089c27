"""`dvc repro` in a fresh clone reproduces the flow's model and metrics; a second repro does nothing."""

from __future__ import annotations

import json
import os
import shutil
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


def _repro(root: Path, *targets: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return run([sys.executable, "-m", "dvc", "repro", *targets], root, env=env).stdout


def test_repro_reproduces_the_flow_and_second_repro_is_a_no_op(prefect_api, clone: Path) -> None:
    from flows.pretrain import pretrain
    from flows.transfer import transfer

    cfg = tiny_config()
    source = pretrain(config=cfg)["published"]
    flow_metrics = transfer(config=cfg)["metrics"]

    first = _repro(clone, "register@classifier")
    assert "Running stage 'finetune@classifier'" in first and "Running stage 'register@classifier'" in first
    assert sha256_file(clone / "models" / "source" / "model.pt") == source["sha256"]
    assert read_json(clone / "outputs" / "classifier" / "evaluate" / "metrics.json") == flow_metrics
    registration = read_json(clone / "outputs" / "classifier" / "register" / "registration.json")
    assert registration["model_uri"].startswith("models:/adaptflow-classifier/")

    second = _repro(clone, "register@classifier")
    assert "Running stage" not in second and "up to date" in second
    shown = subprocess.run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], cwd=clone, capture_output=True, text=True)
    assert json.dumps(flow_metrics["target_accuracy"]) in shown.stdout

    # a val folder added to the target (it scores fine-tune epochs) reruns fine-tuning, not pre-training
    shutil.copytree(clone / "data" / "uci_digits" / "train", clone / "data" / "uci_digits" / "val")
    third = _repro(clone, "register@classifier")
    assert "Running stage 'finetune@classifier'" in third and "Running stage 'pretrain@classifier'" not in third


def test_repro_reproduces_the_yolo_detection_flow(prefect_api, clone: Path) -> None:
    from adaptflow.config import load_config
    from adaptflow.data.scenes import build_scene_data
    from flows.pretrain import pretrain
    from flows.transfer import transfer
    from test_detection import TINY_SCENES, detection_config

    build_scene_data(clone / "data", sizes=TINY_SCENES)
    run([sys.executable, "-m", "dvc", "add", "data"], clone)
    cfg = detection_config("yolov8n", "pretrain.output=models/source-yolo", "pretrained.uri=models/source-yolo/model.pt")
    dump_params(cfg, clone / "configs" / "detection.yaml")
    assert load_config(clone / "configs" / "detection.yaml") == cfg
    source = pretrain(config=cfg)["published"]
    flow_metrics = transfer(config=cfg)["metrics"]

    out = _repro(clone, "evaluate@yolo")
    assert "Running stage 'pretrain@yolo'" in out and "Running stage 'evaluate@yolo'" in out
    assert sha256_file(clone / "models" / "source-yolo" / "model.pt") == source["sha256"]
    assert read_json(clone / "outputs" / "yolo" / "evaluate" / "metrics.json") == pytest.approx(flow_metrics)


def test_repro_runs_the_imagenet_pipeline_with_a_target_domain_only(clone: Path) -> None:
    """`register@imagenet`: ImageNet weights from a package, no source domain folder, no pretrain stage."""
    from adaptflow.config import load_config

    shutil.rmtree(clone / "data" / "mnist")
    run([sys.executable, "-m", "dvc", "add", "data"], clone)
    dump_params(load_config(clone / "configs" / "imagenet.yaml", ["data.image_size=32", "finetune.epochs=2", "finetune.batch_size=16",
                                                                 "evaluate.batch_size=64"]), clone / "configs" / "imagenet.yaml")
    out = _repro(clone, "register@imagenet")
    assert "Running stage 'finetune@imagenet'" in out and "pretrain" not in out
    metrics = read_json(clone / "outputs" / "imagenet" / "evaluate" / "metrics.json")
    assert 0 <= metrics["target_accuracy"] <= 1 and "source_accuracy" not in metrics
    registration = read_json(clone / "outputs" / "imagenet" / "register" / "registration.json")
    assert registration["model_uri"].startswith("models:/adaptflow-imagenet/") and registration["alias"] == "champion"
    assert "up to date" in _repro(clone, "register@imagenet")

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


CLASSIFIER_STAGES = ("pretrain@classifier", "finetune@classifier", "evaluate@classifier", "register@classifier")


def _stages_to_run(root: Path) -> set[str]:
    """The classifier pipeline's stages `dvc repro` would run now (a dry run: it names them and runs nothing)."""
    out = _repro(root, "--dry", "register@classifier")
    return {stage for stage in CLASSIFIER_STAGES if f"Running stage '{stage}'" in out}


def test_an_edit_to_a_file_a_stage_reads_reruns_that_stage_and_what_follows_only(clone: Path) -> None:
    """The pipeline's outputs recorded as they are (`dvc commit --force`), then one file edited at a time: the stages
    that read it rerun, the others do not (data files, a domain's test split, the code)."""
    outs = {"models/source/model.pt": "m", "outputs/classifier/run.json": "{}", "outputs/classifier/finetune/model.pt": "f",
            "outputs/classifier/evaluate/report.json": "{}", "outputs/classifier/evaluate/metrics.json": '{"target_accuracy": 0.5}',
            "outputs/classifier/evaluate/confusion_matrix.png": "p", "outputs/classifier/register/registration.json": "{}"}
    for name, text in outs.items():
        (clone / name).parent.mkdir(parents=True, exist_ok=True)
        (clone / name).write_text(text)
    run([sys.executable, "-m", "dvc", "commit", "--force", "-q", *CLASSIFIER_STAGES], clone)
    assert _stages_to_run(clone) == set()
    assert "up to date" in _repro(clone, "register@classifier")

    def edit(path: Path) -> None:
        path.write_bytes(path.read_bytes() + b"\0")

    edit(next((clone / "data" / "uci_digits" / "test").rglob("*.png")))  # the target's test split: evaluate reads it; fine-tuning
    assert _stages_to_run(clone) == {"finetune@classifier", "evaluate@classifier"}  # depends on the whole target folder
    edit(next((clone / "data" / "mnist" / "train").rglob("*.png")))  # the source's training split: pretrain, and finetune (dann, coral)
    assert _stages_to_run(clone) == {"pretrain@classifier", "finetune@classifier", "evaluate@classifier"}
    edit(clone / "adaptflow" / "training" / "loop.py")  # the loop every classifier training stage runs
    assert _stages_to_run(clone) == {"pretrain@classifier", "finetune@classifier", "evaluate@classifier"}
    edit(clone / "outputs" / "classifier" / "evaluate" / "metrics.json")  # what register reads
    assert "register@classifier" in _stages_to_run(clone)

"""Pre-emption: the training process is killed with SIGKILL at random points (across epochs and
mid-epoch); re-running the same command resumes from the last checkpoint and ends with exactly
the metrics of an uninterrupted run, and one registered version. A Prefect task retry resumes too."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adaptflow.config import dump_params, load_config
from adaptflow.data.demo import build_demo_data
from adaptflow.io import read_json
from conftest import REPO, TINY

SETTINGS = [*TINY, "finetune.epochs=4", "finetune.lp_epochs=1", "finetune.batch_size=16", "finetune.checkpoint_every_steps=3", "finetune.augment=true"]
STEPS_PER_EPOCH = 10  # 160 labeled images / batch 16


@pytest.fixture
def kill_project(project: Path) -> Path:
    build_demo_data(project / "data", source_test_per_class=6, target_test_per_class=6, labeled_per_class=16, limit_per_class=16)
    dump_params(load_config(None, SETTINGS), project / "params.yaml")
    return project


def _stage(root: Path, *args: str) -> subprocess.Popen:
    # This checkout's code, whatever adaptflow the interpreter has installed (cwd is the test project).
    pythonpath = os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "ADAPTFLOW_ROOT": str(root), "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath}
    return subprocess.Popen([sys.executable, "-m", "adaptflow", *args], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _progress(run_dir: Path) -> int:
    try:
        state = json.loads((run_dir / "finetune" / "train_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return -1
    return state["epoch"] * STEPS_PER_EPOCH + state["step"]


def _finish(root: Path, *args: str) -> None:
    proc = _stage(root, *args)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err


def test_sigkill_at_random_points_then_rerun_gives_identical_metrics(kill_project: Path, faults) -> None:
    from mlflow import MlflowClient

    from adaptflow import env

    root = kill_project
    _finish(root, "finetune", "--run-dir", "straight")
    _finish(root, "evaluate", "--run-dir", "straight")

    targets = sorted(random.Random(7).sample(range(2, 4 * STEPS_PER_EPOCH - 2, 6), 5))
    assert any(t % STEPS_PER_EPOCH for t in targets) and len({t // STEPS_PER_EPOCH for t in targets}) >= 2
    killed_at = []
    for target in targets:
        with faults.attempt():
            proc = _stage(root, "finetune", "--run-dir", "killed")
            deadline = time.monotonic() + 300
            while proc.poll() is None and _progress(root / "killed") < target and time.monotonic() < deadline:
                time.sleep(0.02)
            assert proc.poll() is None, f"training ended before step {target}: {proc.stderr.read()}"
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            assert proc.returncode == -signal.SIGKILL
            killed_at.append(_progress(root / "killed"))
    assert killed_at == sorted(killed_at) and killed_at[-1] > killed_at[0]

    with faults.attempt():
        _finish(root, "finetune", "--run-dir", "killed")
        _finish(root, "evaluate", "--run-dir", "killed")
        assert read_json(root / "killed" / "evaluate" / "metrics.json") == read_json(root / "straight" / "evaluate" / "metrics.json")
        assert read_json(root / "killed" / "finetune" / "history.json")[-1]["train_loss"] == \
            read_json(root / "straight" / "finetune" / "history.json")[-1]["train_loss"]
        assert not (root / "killed" / "finetune" / "train_state.pt").exists()

    for _ in range(2):  # a repeated register (a retry after a crash) never makes a second version
        _finish(root, "register", "--run-dir", "killed")
    versions = MlflowClient(env.default_tracking_uri()).search_model_versions("name='adaptflow-classifier'")
    assert len(versions) == 1


def test_a_prefect_retry_resumes_the_finetune_task(prefect_api, project: Path, monkeypatch: pytest.MonkeyPatch, faults) -> None:
    import adaptflow.training.loop as train_module
    from flows.transfer import transfer

    cfg = load_config(None, [*TINY, "finetune.epochs=4", "finetune.lp_epochs=1", "finetune.batch_size=8"])
    straight = transfer(config=cfg)["metrics"]

    real_step, calls = train_module.train_step, {"n": 0}
    steps_per_epoch = 5  # 40 labeled images / batch 8

    def fails_once_in_epoch_three(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * steps_per_epoch + 2:
            raise RuntimeError("device lost")  # what a pre-empted GPU looks like to the task
        return real_step(*args, **kwargs)

    monkeypatch.setattr(train_module, "train_step", fails_once_in_epoch_three)
    with faults.attempt():
        retried = transfer(config=cfg)["metrics"]
        assert retried == straight
        # resumed after two finished epochs: 12 steps before the failure, 10 after it, not 12 + 20
        assert calls["n"] == 2 * steps_per_epoch + 2 + 2 * steps_per_epoch


PRETRAIN = ["pretrain.epochs=5", "pretrain.batch_size=16", "pretrain.checkpoint_every_steps=2"]


def _kill_pretrain_at(root: Path, run_dir: str, target: int) -> None:
    """Start `adaptflow pretrain --run-dir RUN_DIR`, SIGKILL it once it has trained `target` steps."""
    proc = _stage(root, "pretrain", "--run-dir", run_dir, *PRETRAIN)
    deadline = time.monotonic() + 300
    while proc.poll() is None and _progress_of(root / run_dir / "pretrain") < target and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, f"pretraining ended before step {target}: {proc.stderr.read()}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def _progress_of(work_dir: Path) -> int:
    try:
        state = json.loads((work_dir / "train_state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return -1
    return state["epoch"] * STEPS_PER_EPOCH + state["step"]


def test_a_killed_run_s_mlflow_run_is_continued_or_closed_never_left_running(kill_project: Path, faults) -> None:
    """SIGKILL leaves no chance to close the MLflow run. A rerun in the same run folder resumes
    training and continues the same MLflow run; a rerun of the same work in another folder (a new
    flow run does that) opens a new run and marks the orphan FAILED, each linked to the other."""
    from mlflow import MlflowClient

    from adaptflow import env

    root = kill_project
    c = MlflowClient(env.default_tracking_uri())

    def pretrain_runs() -> dict:
        exp = c.get_experiment_by_name("adaptflow")
        runs = c.search_runs([exp.experiment_id], filter_string="tags.`adaptflow.stage` = 'pretrain'") if exp else []
        return {r.info.run_id: r for r in runs}

    with faults.attempt():
        _kill_pretrain_at(root, "first", 14)
        (first,) = pretrain_runs()
        assert pretrain_runs()[first].info.status == "RUNNING"  # nothing could close it

        _kill_pretrain_at(root, "second", 14)  # the same work in a new folder, killed too
        runs = pretrain_runs()
        (second,) = set(runs) - {first}
        assert runs[first].info.status == "FAILED"
        assert runs[first].data.tags["adaptflow.continued_in"] == second
        assert runs[second].data.tags["adaptflow.continues"] == first

        _finish(root, "pretrain", "--run-dir", "second", *PRETRAIN)  # resumes: the same MLflow run goes on
        runs = pretrain_runs()
        assert set(runs) == {first, second}
        assert runs[second].info.status == "FINISHED" and runs[first].info.status == "FAILED"
        steps = {m.step for m in c.get_metric_history(second, "train_loss")}
        assert len(steps) == 5, steps  # every epoch logged once to the one run, before and after the kill
        assert "source_accuracy" in runs[second].data.metrics

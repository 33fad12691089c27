"""Sweeps and distributed grids, on tiny real data under the temporary Prefect API: a sweep on a
2-worker Dask LocalCluster, a bad grid refused before anything runs, GPU-pool slots that keep two
trainings apart, and the benchmark on Dask."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import pytest
import yaml

from adaptflow.config import ConfigError
from conftest import REPO, tiny_config


@pytest.fixture(scope="module")
def sweep_project(template_project: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One project for the module: Dask workers inherit the environment they start in, so the
    module's cluster starts inside this project."""
    root = tmp_path_factory.mktemp("sweep") / "project"
    shutil.copytree(template_project, root, symlinks=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADAPTFLOW_ROOT", str(root))
        mp.setenv("ADAPTFLOW_CACHE", str(root.parent / "cache"))
        mp.setenv("TORCH_HOME", str(root.parent / "cache" / "torch"))
        mp.chdir(root)
        yield root


@pytest.fixture(scope="module")
def dask_address(sweep_project: Path) -> Iterator[str]:
    """A 2-process LocalCluster (the kwargs the dask runner uses), shared by the tests that connect by address."""
    from distributed import LocalCluster

    from adaptflow.orchestration.flows.runners import local_cluster_kwargs

    with LocalCluster(**local_cluster_kwargs(2)) as cluster:
        yield cluster.scheduler_address


def _children(parent_run_id: str) -> list:
    from mlflow import MlflowClient

    from adaptflow import env

    client = MlflowClient(env.default_tracking_uri())
    parent = client.get_run(parent_run_id)
    return client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'")


# --- fast: planning and runner choice -------------------------------------------------------


def test_grid_options_parse_and_expand_to_validated_trials() -> None:
    from adaptflow.sweep import parse_grid, plan_trials

    grid = parse_grid(["finetune.lr=1e-3,3e-3", "finetune.methods=[adabn],[coral,mcc]"])
    assert grid == {"finetune.lr": ["1e-3", "3e-3"], "finetune.methods": [["adabn"], ["coral", "mcc"]]}
    trials = plan_trials(tiny_config(), grid, "source_accuracy")
    assert [t.overrides for t in trials][:2] == [{"finetune.lr": 0.001, "finetune.methods": ["adabn"]},
                                                 {"finetune.lr": 0.001, "finetune.methods": ["coral", "mcc"]}]
    assert trials[3].config.finetune.lr == 0.003 and trials[3].label == "finetune.lr=0.003 finetune.methods=[coral, mcc]"


@pytest.mark.parametrize(("grid", "message"), [
    ({"finetune.lrr": [1e-3]}, r"grid key 'finetune.lrr': finetune has no field 'lrr' \(did you mean 'finetune.lr'\?\)"),
    ({"registry.metric": ["x"]}, r"registry does not change what a trial trains"),
    ({"finetune.lr": [1e-3, -1]}, r"grid finetune.lr=-1: finetune.lr: Input should be greater than 0 \(got -1\)\n    fix:"),
    ({"finetune.lp_epochs": [1, 3]}, r"grid finetune.lp_epochs=3: finetune: lp_ft needs 0 < lp_epochs < epochs"),
    ({"finetune.lr": [0.001, 1e-3]}, r"the same config as finetune.lr=0.001; drop the repeated value"),
])
def test_bad_grids_name_the_key_and_the_fix(grid: dict, message: str) -> None:
    from adaptflow.sweep import plan_trials

    with pytest.raises(ConfigError, match=message):
        plan_trials(tiny_config(), grid)


def test_selection_metric_matches_what_trials_measure() -> None:
    from adaptflow.adapt import VALIDATORS
    from adaptflow.benchmark.spec import BenchmarkSpec
    from adaptflow.sweep import plan_trials
    from adaptflow.sweep.plan import EVALUATED, VALIDATORS as NAMES, SelectionMetric

    from adaptflow.config import KeepEpoch

    assert set(NAMES) == set(VALIDATORS) == set(get_args(BenchmarkSpec.model_fields["validator"].annotation))
    assert set(get_args(KeepEpoch)) == {"last", "target_val_accuracy", *VALIDATORS}
    assert set(get_args(SelectionMetric)) == {*NAMES, *(m for names in EVALUATED.values() for m in names)}
    detection = ["task=detection", "pretrain.arch=yolov8n", "finetune.arch=yolov8n", "finetune.strategy=finetune", "data.image_size=32",
                 "registry.metric=target_map50", "registry.guard_metric=source_map50"]
    with pytest.raises(ConfigError, match="scores classifier outputs; with task detection pick the best by one of source_map50"):
        plan_trials(tiny_config(*detection), {"finetune.lr": [1e-3]}, "information_maximization")


def test_a_validation_metric_needs_one_labeled_validation_set_for_every_trial() -> None:
    from adaptflow.sweep import plan_trials

    with pytest.raises(ConfigError, match=r"labeled target images held out of training, and there are none: set data.val_fraction "
                                          r"\(e.g. 0.2\) or add .*uci_digits/val/<class>/\*.png"):
        plan_trials(tiny_config(), {"finetune.lr": [1e-3]}, "target_val_accuracy")
    with pytest.raises(ConfigError, match=r"the grid changes which images validate \(data.root, data.target or data.val_fraction\)"):
        plan_trials(tiny_config(), {"data.val_fraction": [0.2, 0.5]}, "target_val_macro_f1")
    assert len(plan_trials(tiny_config("data.val_fraction=0.2"), {"finetune.lr": [1e-3, 3e-3]}, "target_val_accuracy")) == 2


def test_the_best_trial_on_a_tied_validation_score_has_the_lower_validation_loss() -> None:
    from adaptflow.sweep.report import pick_best

    rows = [{"index": i, "name": f"trial-00{i}", "overrides": {"finetune.lr": lr}, "metrics": m} for i, (lr, m) in enumerate([
        (1e-3, {"target_val_accuracy": 0.9, "target_val_loss": 0.5, "source_accuracy": 0.7}),
        (3e-3, {"target_val_accuracy": 0.9, "target_val_loss": 0.3, "source_accuracy": 0.7}),
        (1e-2, {"target_val_accuracy": 0.8, "target_val_loss": 0.1, "source_accuracy": 0.6})])]
    assert pick_best(rows, "target_val_accuracy")["name"] == "trial-001"
    assert pick_best(rows, "source_accuracy")["name"] == "trial-000"  # no tie-breaker: the first trial


def test_runner_settings_build_the_task_runner() -> None:
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    from adaptflow.sweep import sweep_settings
    from adaptflow.orchestration.flows.runners import task_runner

    thread = task_runner(sweep_settings(workers=3))
    assert isinstance(thread, ThreadPoolTaskRunner) and thread._max_workers == 3
    local = task_runner(sweep_settings(runner="dask", workers=2))
    assert isinstance(local, DaskTaskRunner) and local.address is None
    assert local.cluster_kwargs == {"n_workers": 2, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": None}
    assert task_runner(sweep_settings(runner="dask", dask_address="tcp://10.0.0.5:8786")).address == "tcp://10.0.0.5:8786"
    with pytest.raises(ConfigError, match="dask_address is set but runner is thread"):
        sweep_settings(dask_address="tcp://10.0.0.5:8786")
    try:
        import prefect_ray  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match=r"pip install 'adaptflow\[ray\]'"):
            task_runner(sweep_settings(runner="ray"))


def test_cli_refuses_a_bad_grid_before_prefect_starts() -> None:
    result = subprocess.run([sys.executable, "-m", "adaptflow", "sweep", "--grid", "finetune.lrr=1e-3,3e-3"],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 3 and "grid key 'finetune.lrr'" in result.stderr and "did you mean 'finetune.lr'" in result.stderr
    assert "prefect" not in result.stderr.lower()


def test_the_sweep_deployment_is_declared_in_prefect_yaml() -> None:
    from flows.deployments import sweep_deployment

    declared = {d["name"]: d for d in yaml.safe_load((REPO / "prefect.yaml").read_text())["deployments"]}
    served = sweep_deployment(tiny_config())
    assert declared[served.name]["entrypoint"] == "flows/sweep.py:sweep"
    assert set(served.parameters) == {"config", "grid", "settings"}


# --- flows on the temporary Prefect API -------------------------------------------------------


def test_a_bad_grid_key_stops_the_flow_before_any_task(prefect_api, sweep_project: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from adaptflow.sweep import sweep_settings
    from flows.sweep import sweep

    runs_before = sorted((sweep_project / "runs").glob("sweep-*"))
    state = sweep(config=tiny_config(), grid={"finetune.lr": [1e-3], "finetune.lrr": [1]}, settings=sweep_settings(runner="dask"),
                  return_state=True)
    assert state.is_failed()
    with pytest.raises(ConfigError, match="grid key 'finetune.lrr'"):
        state.result()
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id])))
    assert tasks == [] and sorted((sweep_project / "runs").glob("sweep-*")) == runs_before


def test_sweep_on_a_local_dask_cluster_logs_child_runs_and_picks_without_target_labels(prefect_api, sweep_project: Path) -> None:
    from adaptflow.io import read_json
    from adaptflow.sweep import sweep_settings
    from flows.sweep import sweep

    result = sweep(config=tiny_config(), grid={"finetune.lr": [1e-3, 3e-3]}, settings=sweep_settings(runner="dask", workers=2))
    trials = result["trials"]
    assert [t["overrides"] for t in trials] == [{"finetune.lr": 0.001}, {"finetune.lr": 0.003}]
    for trial in trials:
        assert 0 <= trial["metrics"]["target_accuracy"] <= 1 and 0 <= trial["metrics"]["source_accuracy"] <= 1
        assert {"information_maximization", "entropy", "snd", "mixval"} <= set(trial["metrics"])
        assert trial["gpu_pool"] is None  # CPU, no pool: no slots taken
    assert len({t["worker"] for t in trials}) == 2, "the trials ran in the cluster's two worker processes"
    best = result["best"]
    assert result["metric"] == "information_maximization" and best["metric"] == "information_maximization"
    scores = {t["name"]: t["metrics"]["information_maximization"] for t in trials}
    assert best["score"] == max(scores.values()) and best["name"] in scores
    assert best["cli_overrides"] == [f"finetune.lr={best['overrides']['finetune.lr']}"]

    summary = Path(result["summary"]).read_text()
    assert "**best**" in summary and "unsupervised validator `information_maximization`" in summary
    from adaptflow.config import load_config

    assert f"adaptflow run transfer -c runs/{Path(result['run_dir']).name}/best.yaml" in summary
    winner = load_config(result["best_config"])  # the trial's whole config: the base's own overrides too
    assert winner.finetune.lr == best["overrides"]["finetune.lr"] and winner.finetune.epochs == tiny_config().finetune.epochs == 3
    assert read_json(Path(result["run_dir"]) / "trials.json")["best"] == best

    children = _children(result["mlflow_run_id"])
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    assert sorted(c.data.metrics["target_accuracy"] for c in children) == sorted(t["metrics"]["target_accuracy"] for t in trials)
    assert {c.data.params["finetune.lr"] for c in children} == {"0.001", "0.003"}
    from mlflow import MlflowClient

    from adaptflow import env

    parent = MlflowClient(env.default_tracking_uri()).get_run(result["mlflow_run_id"])
    assert parent.data.tags["adaptflow.best_trial"] == best["name"] and parent.info.status == "FINISHED"


def test_a_sweep_picks_by_labeled_target_images_held_out_of_training(prefect_api, sweep_project: Path) -> None:
    from adaptflow.data import target_validation
    from adaptflow.models import load_checkpoint
    from adaptflow.sweep import sweep_settings
    from adaptflow.training import predict
    from flows.sweep import sweep

    config = tiny_config("data.val_fraction=0.25")  # 1 of the 4 labeled images a class validates
    result = sweep(config=config, grid={"finetune.lr": [1e-3, 1e-2]}, settings=sweep_settings(metric="target_val_accuracy"))
    for trial in result["trials"]:
        model, meta = load_checkpoint(trial["model_path"])
        val = target_validation(config.data, meta["classes"])
        assert len(val) == 10
        assert trial["metrics"]["target_val_accuracy"] == pytest.approx((predict(model, val.images).argmax(1) == val.labels).float().mean().item())
        assert 0 <= trial["metrics"]["target_val_macro_f1"] <= 1 and "target_accuracy" in trial["metrics"]
    best = result["best"]
    assert best["score"] == max(t["metrics"]["target_val_accuracy"] for t in result["trials"])
    summary = Path(result["summary"]).read_text()
    assert "labeled target images held out of training" in summary and "optimistic" not in summary


def test_a_failed_trial_is_kept_as_a_row_and_never_picked(prefect_api, sweep_project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptflow.orchestration.tasks.sweep  # noqa: F401 - tasks.sweep, replaced below
    from adaptflow.orchestration import tasks
    from adaptflow.sweep import sweep_settings
    from flows.sweep import sweep

    def run_trial(trial, pretrained, work_dir, parent_run_id, threads):  # noqa: ANN001, ANN202 - stands in for training
        if trial.index == 1:
            raise FloatingPointError("loss is nan")
        return {"index": trial.index, "name": trial.name, "overrides": trial.overrides, "train_seconds": 0.1,
                "metrics": {"source_accuracy": 0.5, "target_accuracy": 0.4}}

    monkeypatch.setattr(tasks.sweep, "run_trial", run_trial)
    result = sweep(config=tiny_config(), grid={"finetune.lr": [1e-3, 3e-3]}, settings=sweep_settings(metric="source_accuracy"))
    assert result["best"]["name"] == "trial-000" and result["trials"][1]["error"] == "loss is nan"
    summary = Path(result["summary"]).read_text()
    assert "failed: loss is nan" in summary and "measured on the target test set" not in summary


def test_a_sweep_whose_trials_all_fail_leaves_its_mlflow_run_failed(prefect_api, sweep_project: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptflow.orchestration.tasks.sweep  # noqa: F401 - tasks.sweep, replaced below
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.orchestration import tasks
    from adaptflow.sweep import sweep_settings
    from flows.sweep import sweep

    def run_trial(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202 - stands in for training
        raise FloatingPointError("loss is nan")

    monkeypatch.setattr(tasks.sweep, "run_trial", run_trial)
    state = sweep(config=tiny_config(), grid={"finetune.lr": [1e-3, 3e-3]}, settings=sweep_settings(metric="source_accuracy"),
                  return_state=True)
    assert state.is_failed()
    with pytest.raises(RuntimeError, match="no trial finished"):
        state.result()
    client = MlflowClient(env.default_tracking_uri())
    (parent,) = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`adaptflow.stage` = 'sweep'",
                                   order_by=["attributes.start_time DESC"], max_results=1)
    assert parent.info.status == "FAILED"


def test_a_gpu_pool_of_one_slot_keeps_two_trainings_apart(prefect_api, sweep_project: Path, dask_address: str) -> None:
    from prefect.client.orchestration import get_client

    from adaptflow.sweep import sweep_settings
    from flows.sweep import sweep

    settings = sweep_settings(runner="dask", dask_address=dask_address, gpu_pool="cpu-test", metric="source_accuracy")
    result = sweep(config=tiny_config("finetune.epochs=2"), grid={"finetune.lr": [1e-3, 2e-3]}, settings=settings)
    with get_client(sync_client=True) as client:
        limit = client.read_global_concurrency_limit_by_name("gpu-cpu-test")
    assert limit.limit == 1 and limit.active_slots == 0  # created on first use: no GPU here, so one slot; all released
    first, second = sorted(result["trials"], key=lambda t: t["started_at"])
    assert first["gpu_pool"] == second["gpu_pool"] == "cpu-test"
    assert first["worker"] != second["worker"], "the two trials must have been free to run at once"
    assert first["finished_at"] <= second["started_at"], "two trainings held the one slot at the same time"


def test_an_existing_gpu_limit_is_kept_and_a_too_big_training_refused(prefect_api) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    from adaptflow.orchestration.tasks.gpu import ensure_gpu_limit, gpu_slot

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name="gpu-two-node", limit=3))
    assert ensure_gpu_limit("two-node") == 3  # the operator's total for a pool across machines stays
    with pytest.raises(RuntimeError, match="needs 4 GPUs but pool two-node has 3"), gpu_slot("two-node", gpus=4):
        pass


def test_benchmark_runs_its_grid_on_dask(prefect_api, sweep_project: Path, dask_address: str) -> None:
    from distributed import Client

    from adaptflow.benchmark import BenchmarkSpec, plan_cells
    from flows.benchmark import benchmark

    spec = BenchmarkSpec(
        name="tiny-dask", image_size=16, pairs=[{"source": "mnist", "target": "uci_digits"}], seeds=[0], shots=[1],
        strategies=[], methods=["adabn"], source={"epochs": 1}, adapt={"epochs": 1}, few_shot={"steps": 4, "batch_size": 8},
        eval_points=2, workers=2, runner="dask", dask_address=dask_address, output=sweep_project / "reports" / "benchmark",
    )
    result = benchmark(spec=spec, command="adaptflow benchmark --preset tiny-dask --runner dask")
    assert result["cells"] == len(plan_cells(spec)) == 3
    assert len(_children(result["mlflow_run_id"])) == 3
    with Client(dask_address) as client:
        ran_here = client.run(lambda: "adaptflow.benchmark.cells" in sys.modules)
    assert any(ran_here.values()), "no cell ran in the Dask workers"

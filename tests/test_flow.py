"""The whole DAG on tiny real data under a real (temporary) Prefect API, MLflow on SQLite, DVC."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import tiny_config


@pytest.fixture
def flows(prefect_api, project: Path):
    from flows.pretrain import pretrain
    from flows.transfer import transfer

    return pretrain, transfer


def test_pretrain_then_transfer_registers_a_champion_with_lineage(flows, project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.io import read_json

    pretrain, transfer = flows
    cfg = tiny_config()
    published = pretrain(config=cfg)["published"]
    assert Path(published["path"]) == project / "models" / "source" / "model.pt"
    assert 0.0 <= published["metrics"]["source_accuracy"] <= 1.0

    result = transfer(config=cfg)
    run_dir = Path(result["run_dir"])
    metrics = read_json(run_dir / "evaluate" / "metrics.json")
    assert metrics == result["metrics"]
    for key in ("target_accuracy", "target_macro_f1", "source_accuracy", "baseline_target_accuracy", "forgetting"):
        assert 0.0 <= abs(metrics[key]) <= 1.0, key
    assert (run_dir / "evaluate" / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"

    data_md5 = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]["md5"]
    assert result["data_version"] == data_md5
    assert list((project / "remote").rglob("*")), "dvc push left the remote empty"

    client = MlflowClient(env.default_tracking_uri())
    champion = client.get_model_version_by_alias("adaptflow-classifier", "champion")
    assert str(champion.version) == result["registration"]["version"]
    tags = champion.tags
    assert tags["adaptflow.data_version"] == data_md5
    assert tags["adaptflow.pretrained_sha256"] == published["sha256"]
    assert tags["adaptflow.origin"] == read_json(run_dir / "run.json")["origin"]
    run = client.get_run(champion.run_id)
    assert run.data.metrics["target_accuracy"] == pytest.approx(metrics["target_accuracy"])
    assert len(client.get_metric_history(champion.run_id, "train_loss")) == cfg.finetune.epochs
    assert run.data.params["finetune.strategy"] == "lp_ft"
    assert {a.path for a in client.list_artifacts(champion.run_id)} >= {"metrics.json", "confusion_matrix.png", "config.yaml", "report.json"}

    # A second run of the same config is no better: it stays challenger, champion unchanged.
    again = transfer(config=cfg)
    assert again["metrics"]["target_accuracy"] == pytest.approx(metrics["target_accuracy"])
    assert again["registration"]["alias"] == "challenger"
    assert client.get_model_version_by_alias("adaptflow-classifier", "champion").version == champion.version


def test_flow_fails_before_training_when_the_pretrained_model_is_missing(flows, project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env

    _, transfer = flows
    with pytest.raises(Exception, match="no such file"):
        transfer(config=tiny_config("pretrained.uri=models/none/model.pt"))
    assert not list((project / "runs").rglob("model.pt")) if (project / "runs").exists() else True
    assert MlflowClient(env.default_tracking_uri()).search_registered_models() == []


def test_bad_input_fails_the_task_once_and_logs_its_message_without_a_traceback(flows, project: Path, caplog) -> None:
    """A config error is not retried (the same input fails the same way), and the run's log gives the message
    that names the field and the fix: a traceback into adaptflow's code would only bury it."""
    from adaptflow.config import ConfigError

    _, transfer = flows
    with pytest.raises(ConfigError, match="data.remote: 'nope' is not a DVC remote"):
        transfer(config=tiny_config("data.remote=nope"))
    failed = [r for r in caplog.records if r.name.startswith("prefect.") and "ConfigError" in r.getMessage()]
    assert {r.name for r in failed} == {"prefect.task_runs", "prefect.flow_runs"}, [r.getMessage() for r in failed]
    assert all("data.remote: 'nope' is not a DVC remote" in r.getMessage() and r.exc_info is None for r in failed)
    assert not [r.getMessage() for r in caplog.records if "Retry" in r.getMessage()]
    assert "Traceback" not in caplog.text


def test_a_failed_or_interrupted_run_is_marked_so_in_mlflow(flows, project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not RUNNING for ever: a flow whose training fails leaves its MLflow run FAILED; Ctrl-C or a stopped run, KILLED."""
    import adaptflow.train as train_module
    from mlflow import MlflowClient

    from adaptflow import env, tracking
    from adaptflow.config import TrackingConfig
    from adaptflow.io import read_json

    def lost(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise RuntimeError("device lost")

    _, transfer = flows
    monkeypatch.setattr(train_module, "train_step", lost)
    with pytest.raises(RuntimeError, match="device lost"):
        transfer(config=tiny_config())
    (record,) = [read_json(p) for p in (project / "runs").glob("*/run.json")]
    client = MlflowClient(env.default_tracking_uri())
    assert client.get_run(record["mlflow_run_id"]).info.status == "FAILED"

    run_id = tracking.start_run(TrackingConfig(), "interrupted", {}, {})
    with pytest.raises(KeyboardInterrupt), tracking.ended_on_failure(TrackingConfig(), run_id):
        raise KeyboardInterrupt
    assert client.get_run(run_id).info.status == "KILLED"


def test_pretraining_again_on_the_same_inputs_keeps_the_published_model(project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.pipeline import run_pretrain
    from adaptflow.versioning import read_version
    from conftest import run

    def pretrain_runs() -> int:
        client = MlflowClient(env.default_tracking_uri())
        return len(client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`adaptflow.stage` = 'pretrain'"))

    (project / "notes.txt").write_text("v1\n")
    run(["git", "add", "notes.txt"], project)
    run(["git", "commit", "-qam", "a clean checkout"], project)
    cfg = tiny_config()
    data = read_version(cfg.data)
    first = run_pretrain(cfg, project / "runs" / "a", data)
    model = Path(first.path)
    made = model.stat().st_mtime_ns
    again = run_pretrain(cfg, project / "runs" / "b", data)
    assert (again.sha256, again.metrics, model.stat().st_mtime_ns, pretrain_runs()) == (first.sha256, first.metrics, made, 1)

    run_pretrain(tiny_config("pretrain.epochs=2"), project / "runs" / "c", data)  # other settings: trained again
    assert pretrain_runs() == 2
    (project / "notes.txt").write_text("v2\n")  # a checkout with changes: the code it runs cannot be named
    run_pretrain(tiny_config("pretrain.epochs=2"), project / "runs" / "d", data)
    assert pretrain_runs() == 3

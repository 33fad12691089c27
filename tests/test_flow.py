"""The whole DAG on tiny real data under a real (temporary) Prefect API, MLflow on SQLite, DVC."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from conftest import QuietHandler, serve_on_loopback, tiny_config


@pytest.fixture
def flows(prefect_api, project: Path):
    from adaptflow.orchestration.flows.pretrain import pretrain
    from adaptflow.orchestration.flows.transfer import transfer

    return pretrain, transfer


@pytest.fixture
def webhook(prefect_api) -> Iterator[list[dict]]:
    """A webhook on loopback, saved as the Webhook block flows notify; yields the bodies it receives."""
    from prefect.blocks.webhook import Webhook

    from adaptflow.orchestration.tasks.notify import DEFAULT_BLOCK

    received: list[dict] = []

    class Hook(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_body(b"ok")

    server = serve_on_loopback(Hook)
    Webhook(url=f"http://127.0.0.1:{server.server_port}/hook").save(DEFAULT_BLOCK, overwrite=True)
    try:
        yield received
    finally:
        Webhook.delete(DEFAULT_BLOCK)
        server.shutdown()


def flow_run_record(flow_run_id: str) -> dict:
    """What the Prefect UI shows of a flow run: its task runs' names, its log lines and its artifacts."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # the log lines still queued in this process
    with get_client(sync_client=True) as client:
        runs = FlowRunFilter(id={"any_": [flow_run_id]})
        return {
            "task_runs": sorted(r.name for r in client.read_task_runs(flow_run_filter=runs)),
            "logs": [log.message for log in client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))],
            "artifacts": {a.key or a.type: a.data for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))},
        }


def test_pretrain_then_transfer_registers_a_champion_with_lineage(flows, project: Path, webhook: list[dict]) -> None:
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

    # The model card: what the version was made from, and how to load, export and serve it.
    card = champion.description
    for text in (f"DVC version `{data_md5}`", published["sha256"], "no champion before it", f"| target_accuracy | {metrics['target_accuracy']:.4f} |",
                 "adaptflow export models:/adaptflow-classifier/1 --format onnx", "mlflow models serve -m models:/adaptflow-classifier@champion"):
        assert text in card, text

    # What the Prefect UI shows of the run: task runs named for what they do, adaptflow's own log lines
    # (validation, each epoch, the gate's decision), a metrics table, links to MLflow, training progress.
    flow_run_id = read_json(run_dir / "run.json")["origin"]
    shown = flow_run_record(flow_run_id)
    assert shown["task_runs"] == sorted([
        "validate transfer inputs", "version data", f"fetch {cfg.pretrained.uri}", "check resnet18 for uci_digits",
        f"open MLflow run {run_dir.name.split('-data-')[0]}", "finetune lp_ft", "evaluate on uci_digits", "register adaptflow-classifier",
        "summarize for the UI", "notify promotion of adaptflow-classifier v1"])
    logs = "\n".join(shown["logs"])
    for line in ("validated ", f"epoch {cfg.finetune.epochs}/{cfg.finetune.epochs}: train_loss ", "target accuracy ",
                 "adaptflow-classifier version 1: promoted (no champion yet)"):
        assert line in logs, line
    artifacts = shown["artifacts"]
    assert set(artifacts) == {"transfer-metrics", "mlflow-run", "mlflow-model-version", "transfer-summary", "progress"}
    table = json.loads(artifacts["transfer-metrics"])
    assert {row["metric"]: row["value"] for row in table}["target_accuracy"] == round(metrics["target_accuracy"], 4)
    assert artifacts["mlflow-run"].endswith(f"/#/experiments/{run.info.experiment_id}/runs/{champion.run_id})")  # [text](link)
    assert artifacts["mlflow-model-version"] == "[adaptflow-classifier v1 (champion)](http://127.0.0.1:5000/#/models/adaptflow-classifier/versions/1)"
    assert artifacts["progress"] == 100.0  # training finished: the progress artifact reached 100%
    assert [(h["event"], h["model_uri"]) for h in webhook] == [("promoted", "models:/adaptflow-classifier/1")]

    # A second run of the same config is no better: it stays challenger, champion unchanged.
    again = transfer(config=cfg)
    assert again["metrics"]["target_accuracy"] == pytest.approx(metrics["target_accuracy"])
    assert again["registration"]["alias"] == "challenger"
    assert client.get_model_version_by_alias("adaptflow-classifier", "champion").version == champion.version
    assert "| metric | this version | champion v1 |" in client.get_model_version("adaptflow-classifier", "2").description
    assert len(webhook) == 1, "a version that stays challenger is not announced"


def test_flow_fails_before_training_when_the_pretrained_model_is_missing(flows, project: Path, webhook: list[dict]) -> None:
    from mlflow import MlflowClient

    from adaptflow import env

    _, transfer = flows
    with pytest.raises(Exception, match="no such file"):
        transfer(config=tiny_config("pretrained.uri=models/none/model.pt"))
    assert not list((project / "runs").rglob("model.pt")) if (project / "runs").exists() else True
    assert MlflowClient(env.default_tracking_uri()).search_registered_models() == []
    (failed,) = webhook
    assert failed["event"] == "failed" and failed["flow"] == "transfer" and "no such file" in failed["text"], failed


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
    import adaptflow.training.loop as train_module
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

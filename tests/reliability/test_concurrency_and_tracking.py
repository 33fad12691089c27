"""Several flow runs at once on one MLflow store and one DVC cache; a tracking server that stops
mid-run and comes back; one that stays down until the registration is replayed."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from adaptflow import env
from adaptflow.config import TrackingConfig
from conftest import TINY

#: Keep MLflow's own HTTP retries short: adaptflow's retry layer is what is under test.
FAST_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TrackingServer:
    """`mlflow server` on loopback, with its own SQLite store and artifact folder."""

    def __init__(self, root: Path) -> None:
        self.root, self.port = root, _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}", "--artifacts-destination", str(self.root / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env.MLFLOW_SERVER_DEFAULTS | os.environ,
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError("mlflow server did not start")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def server(tmp_path: Path):
    srv = TrackingServer(tmp_path)
    srv.start()
    yield srv
    srv.stop()


def _adaptflow(root: Path, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "ADAPTFLOW_ROOT": str(root), "OMP_NUM_THREADS": "1", "PREFECT_API_URL": PREFECT_API_URL.value() or "", **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", "adaptflow", *args], cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_four_concurrent_flow_runs_register_four_versions(prefect_api, project: Path, faults) -> None:
    from mlflow import MlflowClient

    from adaptflow import env

    with faults.attempt():
        procs = [_adaptflow(project, "run", "transfer", *TINY, f"finetune.seed={i}") for i in range(4)]
        outputs = [p.communicate(timeout=900)[0] for p in procs]
        for p, out in zip(procs, outputs, strict=True):
            assert p.returncode == 0, out[-3000:]
        client = MlflowClient(env.default_tracking_uri())
        versions = client.search_model_versions("name='adaptflow-classifier'")
        assert sorted(int(v.version) for v in versions) == [1, 2, 3, 4]
        assert len({v.run_id for v in versions}) == 4
        champion = client.get_model_version_by_alias("adaptflow-classifier", "champion")
        assert champion.tags["adaptflow.decision"] == "promoted"
        assert all(v.tags["adaptflow.decision"] in {"promoted", "kept champion"} and v.tags["adaptflow.reason"] for v in versions)
        # The gates took turns: every promotion beat the champion it replaced.
        for v in versions:
            if v.tags["adaptflow.decision"] == "promoted" and v.tags.get("adaptflow.previous_champion"):
                previous = client.get_model_version("adaptflow-classifier", v.tags["adaptflow.previous_champion"])
                assert int(previous.version) < int(v.version)


def test_tracking_server_restarted_mid_run(prefect_api, project: Path, server: TrackingServer, faults) -> None:
    from mlflow import MlflowClient

    with faults.attempt():
        run = _adaptflow(project, "run", "transfer", *TINY, "finetune.epochs=6", f"tracking.uri={server.url}", extra_env=FAST_HTTP)
        deadline = time.monotonic() + 300
        while not list(project.glob("runs/*/run.json")) and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.05)
        server.stop()  # the run is open and training starts: the server goes away
        time.sleep(4)
        server.start()
        out = run.communicate(timeout=600)[0]
        assert run.returncode == 0, out[-3000:]
        client = MlflowClient(server.url)
        version = client.get_model_version_by_alias("adaptflow-classifier", "champion")
        history = client.get_metric_history(version.run_id, "train_loss")
        assert sorted(m.step for m in history) == [1, 2, 3, 4, 5, 6]  # epochs missed while down were replayed
        assert list((server.root / "artifacts").rglob("model.pt")), "model artifact not stored by the server"


def test_tracking_down_fails_clearly_keeps_the_run_and_replays_later(project: Path, server: TrackingServer, faults) -> None:
    from mlflow import MlflowClient

    with faults.attempt():
        overrides = [*TINY, f"tracking.uri={server.url}"]
        for stage in ("finetune", "evaluate"):
            proc = _adaptflow(project, stage, "--run-dir", "outputs", *overrides)
            assert proc.wait(timeout=600) == 0, proc.stdout.read()
        server.stop()
        failed = _adaptflow(project, "register", "--run-dir", "outputs", *overrides, extra_env=FAST_HTTP)
        out = failed.communicate(timeout=600)[0]
        assert failed.returncode == 4  # a service that does not answer
        assert "tracking store unreachable" in out and "adaptflow register --from-run-dir outputs" in out
        assert "Traceback" not in out
        assert (project / "outputs" / "finetune" / "model.pt").exists() and (project / "outputs" / "evaluate" / "metrics.json").exists()

        server.start()
        replay = _adaptflow(project, "register", "--from-run-dir", "outputs", *overrides)
        assert replay.wait(timeout=600) == 0, replay.stdout.read()
        versions = MlflowClient(server.url).search_model_versions("name='adaptflow-classifier'")
        assert len(versions) == 1 and versions[0].tags["adaptflow.origin"] == "cli"


def test_secrets_never_reach_logged_params(project: Path) -> None:
    from adaptflow import tracking

    cfg = TrackingConfig()
    run_id = tracking.start_run(cfg, "secret", {"store": "s3://key:topsecret@bucket"}, {"remote": {"url": "https://u:hunter2@h/x", "access_key": "AKIA123"}})
    run = tracking.client(cfg).get_run(run_id)
    logged = str(run.data.params) + str(run.data.tags)
    assert "hunter2" not in logged and "AKIA123" not in logged and "topsecret" not in logged
    assert run.data.params["remote.url"] == "https://u:***@h/x"


def test_concurrent_gates_on_a_tracking_server_leave_the_best_version_champion(server: TrackingServer, faults) -> None:
    """Four challengers finish together against one `mlflow server` (loopback, SQLite backend): the
    gate is a read-compare-move, so without a lease two can both read the same champion and the
    lower one can move the alias last. With the registry lease they take turns: in every round the
    best version ends champion, every version's alias tag tells the truth, and no lease is left."""
    import random
    import threading

    from mlflow import MlflowClient

    from adaptflow import tracking
    from adaptflow.config import RegistryConfig

    tcfg = TrackingConfig(uri=server.url)
    c = MlflowClient(server.url)
    run = c.create_run(c.create_experiment("gates"))
    for round_ in range(3):
        cfg = RegistryConfig(model_name=f"gated-{round_}", guard_metric=None)
        c.create_registered_model(cfg.model_name)
        scores = random.Random(round_).sample([0.5, 0.6, 0.7, 0.8], 4)
        if round_:  # a champion already holds the alias: the challengers race to replace it
            first = c.create_model_version(cfg.model_name, f"{run.info.artifact_uri}/m", run_id=run.info.run_id)
            c.set_model_version_tag(cfg.model_name, first.version, f"{tracking.TAG}metric.target_accuracy", "0.55")
            c.set_registered_model_alias(cfg.model_name, tracking.CHAMPION, first.version)
        versions = [c.create_model_version(cfg.model_name, f"{run.info.artifact_uri}/m", run_id=run.info.run_id).version
                    for _ in scores]
        for version, score in zip(versions, scores, strict=True):
            c.set_model_version_tag(cfg.model_name, version, f"{tracking.TAG}metric.target_accuracy", repr(score))
        start, errors = threading.Barrier(len(versions)), []

        def register(version: str, score: float) -> None:
            try:
                start.wait()
                tracking.gate_version(cfg, tcfg, version, {"target_accuracy": score})
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        with faults.attempt():
            threads = [threading.Thread(target=register, args=pair) for pair in zip(versions, scores, strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(300)
            assert not errors, errors
            best = versions[scores.index(max(scores))]
            assert str(c.get_model_version_by_alias(cfg.model_name, tracking.CHAMPION).version) == best, (round_, scores)
            says_champion = [v.version for v in c.search_model_versions(f"name='{cfg.model_name}'")
                             if v.tags.get(f"{tracking.TAG}alias") == tracking.CHAMPION]
            assert says_champion == [best]
            assert not c.search_registered_models(f"name='{cfg.model_name}{tracking.LEASE_SUFFIX}'")


def test_a_lease_left_by_a_killed_holder_expires(server: TrackingServer, faults) -> None:
    """A run killed while holding the gate leaves its lease; the next run takes it over once it expires."""
    from adaptflow import tracking

    tcfg = TrackingConfig(uri=server.url)
    with faults.attempt():
        held = tracking.registry_lease(tcfg, "orphaned", seconds=1.0)
        held.__enter__()  # never released: its holder "died"
        began = time.monotonic()
        with tracking.registry_lease(tcfg, "orphaned", wait=60):
            waited = time.monotonic() - began
        assert waited >= 0.5, waited
        from mlflow import MlflowClient

        assert not MlflowClient(server.url).search_registered_models(f"name='orphaned{tracking.LEASE_SUFFIX}'")

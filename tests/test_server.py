"""Operations against a real Prefect server on 127.0.0.1: deployments served, a run created from a
deployment with custom parameters (as the UI does), retraining that skips unchanged data, and
retraining triggered by new data landing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from adaptflow.config import dump_params, load_config
from conftest import BIN, TINY

pytestmark = pytest.mark.server
DEPLOYMENTS = {"pretrain", "transfer", "retrain"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(check, timeout: float, what: str, interval: float = 0.5):  # noqa: ANN001, ANN202
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"gave up after {timeout:.0f}s waiting for {what}")


class Server:
    def __init__(self, api: str) -> None:
        self.api = api
        self.ui = api.removesuffix("/api")
        self.http = httpx.Client(base_url=api, timeout=30)

    def call(self, method: str, path: str, json: dict | None = None) -> object:
        """One API call; 503 and 429 (a busy SQLite-backed server) are retried, as Prefect's own client does."""
        for attempt in range(6):
            response = self.http.request(method, path, json=json)
            if response.status_code not in (429, 503) or attempt == 5:
                response.raise_for_status()
                return response.json()
            time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def deployments(self) -> dict[str, dict]:
        return {d["name"]: d for d in self.call("POST", "/deployments/filter", {})}

    def create_run(self, deployment: str, parameters: dict | None = None) -> str:
        """POST /deployments/{id}/create_flow_run: what the UI's Run / Custom run buttons send."""
        body = {"state": {"type": "SCHEDULED"}, **({"parameters": parameters} if parameters is not None else {})}
        return self.call("POST", f"/deployments/{self.deployments()[deployment]['id']}/create_flow_run", body)["id"]

    def runs_of(self, deployment: str) -> list[dict]:
        body = {"deployments": {"id": {"any_": [self.deployments()[deployment]["id"]]}}}
        return self.call("POST", "/flow_runs/filter", body)

    def finish(self, run_id: str, timeout: float = 600) -> dict:
        def done() -> dict | None:
            run = self.call("GET", f"/flow_runs/{run_id}")
            return run if run["state_type"] in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

        return _wait(done, timeout, f"flow run {run_id}")


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture
def served(project: Path, tmp_path: Path) -> Iterator[tuple[Server, dict[str, str]]]:
    """`prefect server start` on a free loopback port with its own home, and `adaptflow serve` on it."""
    dump_params(load_config(None, TINY), project / "params.yaml")
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env |= {"PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": api, "ADAPTFLOW_ROOT": str(project), "OMP_NUM_THREADS": "1"}
    server = _start([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, tmp_path / "server.log")
    env["PREFECT_API_URL"] = api
    procs = [server]
    try:
        _wait(lambda: _healthy(api), 180, "the Prefect server")
        procs.append(_start([sys.executable, "-m", "adaptflow", "serve"], {**env, "PWD": str(project)}, tmp_path / "serve.log"))
        srv = Server(api)
        _wait(lambda: DEPLOYMENTS <= set(srv.deployments()), 180, "the served deployments")
        yield srv, env
    finally:
        for proc in reversed(procs):
            _stop(proc)
    assert all(p.poll() is not None for p in procs)


def _healthy(api: str) -> bool:
    try:
        return httpx.get(f"{api}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_deployments_run_from_the_api_and_retrain_only_on_change(served, project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env as adaptflow_env

    server, env = served
    deployments = server.deployments()
    schema = deployments["transfer"]["parameter_openapi_schema"]
    assert "config" in schema["properties"]
    retrain_schedules = deployments["retrain"]["schedules"]
    assert retrain_schedules and not retrain_schedules[0]["active"]  # nightly, off until enabled

    custom = load_config(None, [*TINY, "finetune.epochs=2", "finetune.lp_epochs=1"]).model_dump(mode="json")
    run = server.finish(server.create_run("transfer", {"config": custom}))
    assert run["state_type"] == "COMPLETED", run["state"]
    client = MlflowClient(adaptflow_env.default_tracking_uri())
    champion = client.get_model_version_by_alias("adaptflow-classifier", "champion")
    assert client.get_run(champion.run_id).data.params["finetune.epochs"] == "2"
    assert champion.tags["adaptflow.prefect_flow_run_id"] == run["id"]

    # Same data, same config: the retraining decides not to train, and says why.
    skipped = server.finish(server.create_run("retrain", {"config": custom}))
    assert skipped["state_type"] == "COMPLETED", skipped["state"]
    assert len(client.search_model_versions("name='adaptflow-classifier'")) == 1
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()], "tags.`adaptflow.decision` = 'skipped'")
    assert len(runs) == 1 and "unchanged since champion v1" in runs[0].data.tags["adaptflow.reason"]

    # New labeled data lands: `adaptflow data add` emits the event that triggers the retraining.
    before = {r["id"] for r in server.runs_of("retrain")}
    inbox = project / "inbox"
    source = project / "data" / "uci_digits" / "unlabeled"
    for cls in source.iterdir():
        (inbox / cls.name).mkdir(parents=True)
        for image in sorted(cls.iterdir())[:2]:
            shutil.copy(image, inbox / cls.name / image.name)
    added = subprocess.run([sys.executable, "-m", "adaptflow", "data", "add", str(inbox)], cwd=project, env=env,
                           capture_output=True, text=True, timeout=300)
    assert added.returncode == 0 and "event adaptflow.data.added sent" in added.stdout, added.stderr
    triggered = _wait(lambda: [r for r in server.runs_of("retrain") if r["id"] not in before], 120, "a triggered retrain run")
    result = server.finish(triggered[0]["id"])
    assert result["state_type"] == "COMPLETED", result["state"]
    versions = client.search_model_versions("name='adaptflow-classifier'")
    assert len(versions) == 2
    newest = max(versions, key=lambda v: int(v.version))
    assert newest.tags["adaptflow.decision"] in {"promoted", "kept champion"} and newest.tags["adaptflow.reason"]
    assert newest.tags["adaptflow.data_version"] != champion.tags["adaptflow.data_version"]

    # A target domain only (ImageNet weights from a package, data.source empty): the same deployment runs it.
    target_only = load_config(None, [*TINY, "data.source=", "registry.guard_metric=", "registry.model_name=target-only",
                                     "pretrained.uri=package:efficientnet_lite0", "finetune.arch=efficientnet_lite0",
                                     "finetune.strategy=finetune", "finetune.epochs=1"]).model_dump(mode="json")
    imagenet = server.finish(server.create_run("transfer", {"config": target_only}))
    assert imagenet["state_type"] == "COMPLETED", imagenet["state"]
    version = client.get_model_version_by_alias("target-only", "champion")
    assert version.tags["adaptflow.source_domain"] == "" and version.tags["adaptflow.pretrained_uri"] == "package:efficientnet_lite0"

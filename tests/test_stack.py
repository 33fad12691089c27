"""The production stack, natively on 127.0.0.1 (`adaptflow.app.stack`, what `make stack` starts):
PostgreSQL, S3 (moto), the Prefect and MLflow servers on PostgreSQL, a process work pool and its
worker. Both servers refuse requests without their credentials (401), which `make stack` generates
and hands to clients and the worker through the environment. The pretrain and transfer flows are
deployed to the pool and run by the authenticated worker, as in production; the test then finds the model in the MLflow server's registry with its lineage, its
artifacts in the bucket, the data version in the DVC remote in the same bucket, and, after
stop, no process and no open port left."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_config

pytestmark = pytest.mark.stack
pytest.importorskip("moto", reason="the stack needs moto[server]: pip install -e '.[stack]'")
pytest.importorskip("psycopg2", reason="the stack needs psycopg2: pip install -e '.[stack]'")
pytest.importorskip("flask_wtf", reason="MLflow's basic-auth app needs Flask-WTF: pip install -e '.[stack]'")


def _postgres_missing() -> str | None:
    from adaptflow.app import stack as local_stack

    try:
        local_stack.pg_bindir()
    except local_stack.StackError as exc:
        return str(exc)
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        return "running as root needs the `postgres` user to own the cluster (initdb refuses root)"
    return None


if reason := _postgres_missing():
    pytest.skip(reason, allow_module_level=True)

#: The tiny config of the other end-to-end tests, fewer epochs still: the stack is what is tested.
STACK_OVERRIDES = ["finetune.epochs=2", "finetune.lp_epochs=1"]


def _deploy(flow_name: str, pool: str, config: dict) -> str:
    """Deploy `flows/<name>.py:<name>` from this checkout to the work pool: the worker's process
    runs it in the checkout (a local-directory source: no image, no git clone)."""
    from prefect import Flow

    flow = Flow.from_source(source=str(REPO), entrypoint=f"flows/{flow_name}.py:{flow_name}")
    return str(flow.deploy(name=f"{flow_name}-stack", work_pool_name=pool, parameters={"config": config},
                           print_next_steps=False, ignore_warnings=True))


def _run(deployment_id: str, timeout: float = 600):  # noqa: ANN202 - a FlowRun
    from prefect.deployments import run_deployment

    return run_deployment(deployment_id, timeout=timeout, poll_interval=1)


def _port_closed(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) != 0


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def _status_without(url: str, body: dict | None = None, auth: tuple[str, str] | None = None) -> int:
    """The HTTP status a request gets with no credentials, or with `auth` (user, password) as basic auth."""
    import base64
    import json
    import urllib.error
    import urllib.request

    headers = {"Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_flows_run_on_the_stack_and_leave_model_artifacts_and_data_in_its_stores(project: Path, tmp_path: Path,
                                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    from adaptflow.app import stack as local_stack
    from adaptflow.io import sha256_file

    system_temp = tmp_path / "system-temp"  # the temp folder the stack's processes would otherwise share
    system_temp.mkdir()
    monkeypatch.setenv("TMPDIR", str(system_temp))
    began = time.monotonic()
    stack = local_stack.start(tmp_path / "stack", project)
    ready = time.monotonic()
    pids, ports = dict(stack.pids), dict(stack.ports)
    try:
        assert set(pids) == set(local_stack.SERVICES)
        assert all(s["healthy"] for s in local_stack.status(stack.state_dir).values())
        assert oct((stack.state_dir / "pg-password").stat().st_mode & 0o777) == "0o600"
        env_file = (stack.state_dir / "env").read_text()
        assert f"export PREFECT_API_URL={stack.prefect_api_url}" in env_file
        assert f"export MLFLOW_TRACKING_URI={stack.mlflow_url}" in env_file
        sourced = subprocess.run(["bash", "-c", f"PATH=/usr/bin:/bin; source {stack.state_dir / 'env'}; command -v prefect dvc"],
                                 capture_output=True, text=True, check=True).stdout.split()
        assert sourced == [str(local_stack.BIN / "prefect"), str(local_stack.BIN / "dvc")]  # a plain shell finds the tools
        assert (stack.state_dir / "pg-password").read_text() not in env_file

        # Both servers ask for credentials (health checks excepted); the env file and the worker have them.
        flows_filter, experiments = f"{stack.prefect_api_url}/flows/filter", f"{stack.mlflow_url}/api/2.0/mlflow/experiments/search?max_results=1"
        assert _status_without(flows_filter, {}) == 401
        assert _status_without(experiments) == 401
        for name in local_stack.SECRET_FILES:
            assert oct((stack.state_dir / name).stat().st_mode & 0o777) == "0o600", name
        assert oct((stack.state_dir / "env").stat().st_mode & 0o777) == "0o600"
        auth = stack.secret("prefect-auth")
        password = stack.secret("mlflow-password")
        assert f"export PREFECT_API_AUTH_STRING={auth}" in env_file and f"export MLFLOW_TRACKING_PASSWORD={password}" in env_file
        assert _status_without(flows_filter, {}, ("adaptflow", "wrong")) == 401
        assert _status_without(flows_filter, {}, tuple(auth.split(":", 1))) == 200
        assert _status_without(experiments, auth=(local_stack.STACK_USER, "wrong")) == 401
        assert _status_without(experiments, auth=(local_stack.STACK_USER, password)) == 200
        assert _status_without(f"{stack.prefect_api_url}/health") == 200 and _status_without(f"{stack.mlflow_url}/health") == 200
        monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", local_stack.STACK_USER)  # this test's own MLflow client
        monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)

        config = tiny_config(*STACK_OVERRIDES).model_dump(mode="json")
        with temporary_settings({PREFECT_API_URL: stack.prefect_api_url, PREFECT_API_AUTH_STRING: auth}):
            pretrain_id, transfer_id = (_deploy(name, stack.pool, config) for name in ("pretrain", "transfer"))
            pretrained = _run(pretrain_id)
            assert pretrained.state.is_completed(), pretrained.state
            transferred = _run(transfer_id)
            assert transferred.state.is_completed(), transferred.state
        flows_done = time.monotonic()

        # The registry of the MLflow server holds the model, with its lineage.
        data = yaml.safe_load((project / "data.dvc").read_text())["outs"][0]
        client = MlflowClient(stack.mlflow_url)
        champion = client.get_model_version_by_alias("adaptflow-classifier", "champion")
        assert champion.tags["adaptflow.data_version"] == data["md5"]
        assert champion.tags["adaptflow.pretrained_sha256"] == sha256_file(project / "models" / "source" / "model.pt")
        assert champion.tags["adaptflow.prefect_flow_run_id"] == str(transferred.id)
        assert champion.tags["adaptflow.decision"] == "promoted"
        run = client.get_run(champion.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")  # proxied by the server
        assert "target_accuracy" in run.data.metrics

        # Its artifacts are objects in the bucket, under the server's artifacts destination.
        s3 = local_stack.s3_client(stack)
        keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=stack.bucket, Prefix="mlartifacts/")
                for o in page.get("Contents", [])]
        run_keys = [k for k in keys if f"/{champion.run_id}/artifacts/" in k]
        assert {k.rsplit("/", 1)[1] for k in run_keys} >= {"metrics.json", "confusion_matrix.png", "config.yaml"}, run_keys
        assert any(k.endswith("/MLmodel") for k in keys) and any(k.endswith(".pt") for k in keys), keys

        # The data version was pushed to the DVC remote in the same bucket (DVC 3: files/md5/xx/rest).
        md5 = data["md5"]
        s3.head_object(Bucket=stack.bucket, Key=f"dvc/files/md5/{md5[:2]}/{md5[2:]}")
        pushed = s3.list_objects_v2(Bucket=stack.bucket, Prefix="dvc/files/md5/")["KeyCount"]
        assert pushed >= int(data["nfiles"]) + 1, pushed
    finally:
        stopped = local_stack.stop(tmp_path / "stack")
    done = time.monotonic()

    assert len(stopped) == len(pids)
    assert not [f"{name} {pid}" for name, pid in pids.items() if _alive(pid)]
    assert set(ports) == set(local_stack.LISTENING) and all(_port_closed(port) for port in ports.values())
    assert not (stack.state_dir / "state.json").exists() and not Path(stack.pg_cluster).exists()
    assert not stack.temp.exists() and sorted(p.name for p in system_temp.iterdir()) == []  # nothing left in any temp folder
    assert "stack" not in (project / ".dvc" / "config.local").read_text()  # the committed default remote is back
    print(f"\nstack: start {ready - began:.0f}s, pretrain + transfer through the worker {flows_done - ready:.0f}s, "
          f"checks + stop {done - flows_done:.0f}s, total {done - began:.0f}s (pid {os.getpid()})")


def test_a_start_that_fails_midway_stops_what_it_started_and_names_the_service(project: Path, tmp_path: Path,
                                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """The MLflow server exits at once (a bad option): the error names it and quotes its log, and the
    services started before it (S3, PostgreSQL, Prefect) are stopped, their cluster deleted."""
    from adaptflow.app import stack as local_stack

    def broken_mlflow(stack: local_stack.Stack, workers: int) -> None:
        local_stack._spawn(stack, "mlflow", [str(local_stack.BIN / "mlflow"), "server", "--no-such-option"],
                           local_stack._service_env(stack))

    clusters = []
    real_stop = local_stack.stop

    def stop_and_note_the_cluster(state_dir: Path, **kw: float) -> list:
        clusters.append(local_stack.Stack.load(state_dir.resolve()).pg_cluster)
        return real_stop(state_dir, **kw)

    monkeypatch.setattr(local_stack, "_start_mlflow", broken_mlflow)
    monkeypatch.setattr(local_stack, "stop", stop_and_note_the_cluster)
    with pytest.raises(local_stack.StackError, match=r"mlflow failed: exited") as failure:
        local_stack.start(tmp_path / "stack", project, timeout=120)
    message = str(failure.value)
    assert f"last lines of {tmp_path / 'stack' / 'logs' / 'mlflow.log'}" in message and "no-such-option" in message
    assert {p.name for p in failure.value.stopped} == {"s3", "postgres", "prefect", "mlflow"}
    assert not [p for p in failure.value.stopped if _alive(p.pid)]
    assert not (tmp_path / "stack" / "state.json").exists()
    assert clusters and clusters[0] and not Path(clusters[0]).exists()
    assert real_stop(tmp_path / "stack") == []  # nothing left to stop

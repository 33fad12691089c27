"""Operations: `adaptflow serve` (the deployments), `ui` (the Prefect and MLflow servers), `config`, and
`adaptflow stack ...` (the production stack on 127.0.0.1, `adaptflow.app.stack`)."""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from adaptflow import env
from adaptflow.app.cli_common import (
    DEFAULT_CONFIG, DETECTION_CONFIG, IMAGENET_CONFIG, OPS, ConfigOption, JsonOption, Overrides, app, prefect_api, read_config,
    stack_app,
)
from adaptflow.errors import ExitCode, ServiceUnavailable


@app.command(rich_help_panel=OPS)
def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    cron: Annotated[str, typer.Option(help="Retraining schedule (cron, UTC)")] = "0 2 * * *",
    schedule: Annotated[bool, typer.Option("--schedule/--no-schedule", help="Turn the retraining schedule on")] = False,
    detection: Annotated[Path, typer.Option(help="Detection config; its deployments are served too when the file exists")] = DETECTION_CONFIG,
    imagenet: Annotated[Path, typer.Option(help="Config of the runs that start from ImageNet weights; its deployments are served "
                                                "too when the file exists")] = IMAGENET_CONFIG,
) -> None:
    """Serve the pretrain, transfer, retrain (also -detection and -imagenet), benchmark and sweep deployments from this process
    (needs PREFECT_API_URL)."""
    prefect_api(required="serve")
    from adaptflow.config import load_config
    from adaptflow.orchestration.flows.deployments import serve as serve_deployments

    serve_deployments(read_config(config, overrides), cron, schedule, load_config(detection) if detection.exists() else None,
                      load_config(imagenet) if imagenet.exists() else None)


def prefect_server_env(host: str, port: int) -> dict[str, str]:
    """Settings for a Prefect server on `host:port` whose UI calls its API on that same port: by default the UI
    asks PREFECT_API_URL (often another server's, exported earlier) or port 4200, and then shows only an error."""
    address = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a browser cannot call 0.0.0.0
    base = f"http://{address}:{port}"
    return {"PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port), "PREFECT_API_URL": f"{base}/api",
            "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_UI_URL": base}


@app.command(rich_help_panel=OPS)
def ui(
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to expose them")] = "127.0.0.1",
) -> None:
    """Start the Prefect server and the MLflow UI on the project's stores; Ctrl-C stops both."""
    import subprocess

    from adaptflow.config import TrackingConfig
    from adaptflow.tracking.store import tracking_uri

    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
                         env=os.environ | prefect_server_env(host, prefect_port)),
        # One worker process (MLflow's default is four) serves one person's browser.
        subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", tracking_uri(TrackingConfig()),
                          "--default-artifact-root", env.default_artifact_location(), "--host", host, "--port", str(mlflow_port),
                          "--workers", "1"], env=env.MLFLOW_SERVER_DEFAULTS | os.environ),
    ]
    def stop(*_: object) -> None:
        raise KeyboardInterrupt  # a terminated `adaptflow ui` stops its servers too

    signal.signal(signal.SIGTERM, stop)
    typer.secho(f"Prefect UI: http://{host}:{prefect_port}    MLflow UI: http://{host}:{mlflow_port}", bold=True)
    typer.echo(f"Point flows and `adaptflow serve` at this server: export PREFECT_API_URL=http://{host}:{prefect_port}/api")
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


StackDir = Annotated[Path, typer.Option("--state-dir", envvar="ADAPTFLOW_STACK_DIR",
                                        help="Where the stack keeps its state, logs and env file")]


@stack_app.command("up")
def stack_up(
    state_dir: StackDir = Path(".stack"),
    project: Annotated[Path | None, typer.Option(help="The project the worker runs flows in (default: this one)")] = None,
    mlflow_workers: Annotated[int, typer.Option(min=1, help="MLflow server worker processes (more lose TCP_NODELAY, see "
                                                          "adaptflow/app/stack.py)")] = 1,
) -> None:
    """Start PostgreSQL, S3 (moto), the Prefect and MLflow servers and a worker on free loopback ports; print where they are."""
    from adaptflow.app import stack

    with _stack_errors():
        started = stack.start(state_dir, project, mlflow_workers=mlflow_workers)
    typer.echo(f"Prefect UI  {started.prefect_api_url.removesuffix('/api')}\nMLflow UI   {started.mlflow_url}\n"
               f"S3 (moto)   {started.s3_url}  bucket {started.bucket}\nwork pool   {started.pool} (one process worker)\n"
               f"logs        {started.logs}\n\nsource {started.state_dir / 'env'}   # then: make demo, prefect deploy --all, ...\n"
               f"{stack.stop_command(started.state_dir)}   # (make stack-down) stops everything")


@stack_app.command("down")
def stack_down(state_dir: StackDir = Path(".stack")) -> None:
    """Stop every process `stack up` started, check that none is left, and delete the cluster and its temp folder."""
    from adaptflow.app import stack

    with _stack_errors():
        stopped = stack.stop(state_dir)
    typer.echo(f"stopped: {', '.join(f'{p.name} (pid {p.pid})' for p in stopped)}" if stopped else f"no stack running from {state_dir}")


@stack_app.command("status")
def stack_status(state_dir: StackDir = Path(".stack"), as_json: JsonOption = False) -> None:
    """Each service's pid, port, health and log; exit 4 unless every one answers."""
    from adaptflow.app import stack

    services = stack.status(state_dir)
    if as_json:
        typer.echo(json.dumps(services, indent=2))
    elif services:
        from adaptflow.console import print_rows

        print_rows([{"service": name, "pid": s["pid"], "port": s["port"] or "-", "state": "up" if s["healthy"] else "DOWN",
                     "log": s["log"]} for name, s in services.items()])
    else:
        typer.echo(f"no stack running from {state_dir}")
    if not services or not all(s["healthy"] for s in services.values()):
        raise typer.Exit(ExitCode.UNREACHABLE)


@contextmanager
def _stack_errors() -> Iterator[None]:
    """A service of the stack that would not start or stop is a service down (exit 4), named with the end of its log."""
    from adaptflow.app.stack import StackError

    try:
        yield
    except StackError as exc:
        raise ServiceUnavailable(str(exc)) from exc


@app.command("config", rich_help_panel=OPS)
def show_config(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None) -> None:
    """Print the resolved configuration (after overrides) as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(read_config(config, overrides).model_dump(mode="json"), sort_keys=False))

"""Run names that say what ran, and the run folder each flow run writes to."""

from __future__ import annotations

from pathlib import Path

from prefect.runtime import flow_run

from adaptflow import env
from adaptflow.config import RunConfig


def _config() -> RunConfig:
    value = flow_run.parameters.get("config")
    return value if isinstance(value, RunConfig) else RunConfig.model_validate(value or {})


def transfer_run_name() -> str:
    cfg = _config()
    return f"{cfg.task}-{cfg.finetune.arch}-{cfg.finetune.strategy}-{cfg.data.target}-{str(flow_run.id)[:8]}"


def pretrain_run_name() -> str:
    cfg = _config()
    return f"pretrain-{cfg.pretrain.arch}-{cfg.data.source}-{str(flow_run.id)[:8]}"


def retrain_run_name() -> str:
    cfg = _config()
    return f"retrain-{cfg.finetune.arch}-{cfg.data.target}-{str(flow_run.id)[:8]}"


def add_data_version(md5: str) -> None:
    """Append the data version to the flow run's name once it is known (after versioning)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.update_flow_run(flow_run.id, name=f"{flow_run.name}-data-{md5[:8]}")


def run_dir() -> Path:
    """`runs/<flow run name>`: one folder per flow run, so concurrent runs never collide."""
    return env.project_root() / "runs" / flow_run.name


def sweep_run_name() -> str:
    cfg = _config()
    return f"sweep-{cfg.finetune.arch}-{cfg.data.target}-{str(flow_run.id)[:8]}"

"""Sweep tasks: open the sweep's MLflow run, run one trial (one GPU-pool slot while it trains),
write and publish the summary."""

from __future__ import annotations

import os
import re
import socket
import time
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from adaptflow.config import RunConfig
from adaptflow.execution import gpu_pool_for
from adaptflow.orchestration.tasks.common import NETWORK_RETRIES, NO_RESULT_CACHE, TRAINING_RETRY
from adaptflow.orchestration.tasks.gpu import gpu_slot
from adaptflow.weights import PretrainedRef
from adaptflow.sweep import SweepSettings, Trial
from adaptflow.sweep import report
from adaptflow.sweep.trial import open_parent_run, run_trial


@task(name="open-sweep-run", task_run_name="open MLflow run {run_name}", **NETWORK_RETRIES, **NO_RESULT_CACHE)
def open_sweep_run_task(config: RunConfig, grid: dict, settings: SweepSettings, count: int, origin: str, run_name: str) -> str:
    """The parent MLflow run every trial's run nests under."""
    return open_parent_run(config, grid, settings.metric, count, origin, run_name)


@task(name="sweep-trial", task_run_name="{trial.name}: {trial.label}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def run_trial_task(trial: Trial, pretrained: PretrainedRef, folder: Path, parent_run_id: str, settings: SweepSettings) -> dict:
    """Fine-tune and evaluate one combination, holding its GPUs' slots of the pool while it runs;
    the result records when the slot was held and by which worker."""
    pool = gpu_pool_for(trial.config.finetune.device, settings.gpu_pool)
    with gpu_slot(pool, gpus=trial.config.finetune.devices):  # a data-parallel trial holds one slot per device
        started = time.time()
        result = run_trial(trial, pretrained, folder / trial.name, parent_run_id, settings.threads)
        finished = time.time()
    return result | {"started_at": started, "finished_at": finished, "gpu_pool": pool, "worker": f"{socket.gethostname()}:{os.getpid()}"}


@task(name="sweep-report", task_run_name="report sweep by {metric}", **NO_RESULT_CACHE)
def sweep_report_task(config: RunConfig, grid: dict, results: list[dict], metric: str, parent_run_id: str, folder: Path) -> dict:
    """Pick the best trial, write summary.md and trials.json, attach them to the sweep's run and
    show the summary as a Prefect artifact."""
    best = report.pick_best(results, metric)  # no trial finished: it raises, and the flow marks the sweep's run FAILED
    markdown = report.summary_markdown(config, grid, results, best, folder)
    paths = report.write_summary(folder, markdown, results, best, config)
    report.close_parent_run(config, parent_run_id, paths, best)
    key = re.sub(r"[^a-z0-9-]", "-", f"sweep-{config.data.target}-{config.finetune.arch}".lower())
    create_markdown_artifact(markdown, key=key, description=f"Sweep over {', '.join(grid)}")
    return {"best": best, "summary": str(paths["summary"]), "best_config": str(paths["best_config"])}

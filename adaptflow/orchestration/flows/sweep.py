"""The sweep flow: check the grid, then each combination's fine-tune + evaluate as parallel task
runs on the runner the settings name, then the best pick and its summary. Nothing is registered:
the best overrides go through the transfer flow, which has the champion gate."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, unmapped
from prefect.runtime import flow_run

from adaptflow.config import RunConfig
from adaptflow.orchestration.flows.naming import run_dir, sweep_run_name
from adaptflow.orchestration.flows.runners import task_runner
from adaptflow.orchestration.tasks.pretrained import fetch_pretrained_task
from adaptflow.orchestration.tasks.sweep import open_sweep_run_task, run_trial_task, sweep_report_task
from adaptflow.orchestration.tasks.validation import validate_task
from adaptflow.weights import PretrainedRef
from adaptflow.sweep import DEFAULT_GRID, Grid, SweepSettings, Trial, canonical_grid, plan_trials
from adaptflow.sweep.trial import failed_trial
from adaptflow.tracking.runs import ended_on_failure


@flow(name="sweep-trials", flow_run_name="{folder.name}-trials")
def sweep_trials(trials: list[Trial], pretrained: list[PretrainedRef], folder: Path, parent_run_id: str, settings: SweepSettings) -> list[dict]:
    """Every trial as a task run on this flow's task runner (the one the sweep's settings chose);
    a trial that fails after its retry is kept as a failed row."""
    futures = run_trial_task.map(trials, pretrained, unmapped(folder), unmapped(parent_run_id), unmapped(settings))
    outcomes = [future.result(raise_on_failure=False) for future in futures]
    return [out if isinstance(out, dict) else failed_trial(trial, out) for trial, out in zip(trials, outcomes)]


@flow(name="sweep", flow_run_name=sweep_run_name)
def sweep(config: RunConfig = RunConfig(), grid: Grid = DEFAULT_GRID, settings: SweepSettings = SweepSettings()) -> dict:
    """Fine-tune and evaluate every combination of `grid` (dotted config keys -> values) on top of
    `config`, `settings.workers` at a time on `settings.runner`; pick the best by `settings.metric`."""
    trials = plan_trials(config, grid, settings.metric)  # a bad key or value stops here, before any task
    grid = canonical_grid(trials)
    runner = task_runner(settings)  # and so does a runner whose package is missing
    refs = {}
    for trial in trials:  # data and pretrained model checked (and fetched) once per distinct choice
        key = (trial.config.data.model_dump_json(), trial.config.pretrained.model_dump_json())
        if key not in refs:
            validate_task(trial.config)
            refs[key] = fetch_pretrained_task(trial.config)
    pretrained = [refs[(t.config.data.model_dump_json(), t.config.pretrained.model_dump_json())] for t in trials]
    folder = run_dir()
    parent = open_sweep_run_task(config, grid, settings, len(trials), str(flow_run.id), flow_run.name)
    with ended_on_failure(config.tracking, parent):
        results = sweep_trials.with_options(task_runner=runner)(trials, pretrained, folder, parent, settings)
        summary = sweep_report_task(config, grid, results, settings.metric, parent, folder)
    return {"trials": results, "best": summary["best"], "metric": settings.metric, "summary": summary["summary"],
            "best_config": summary["best_config"], "mlflow_run_id": parent, "run_dir": str(folder)}

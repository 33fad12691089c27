"""`adaptflow benchmark` and `adaptflow sweep`: many runs at once, on a Prefect task runner (thread, Dask or Ray)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from adaptflow.app.cli_common import (
    BENCHMARK, DEFAULT_CONFIG, ConfigOption, JsonOption, Overrides, app, read_config, run_failures, servers_answer, usage,
)


RunnerOption = Annotated[str | None, typer.Option(help="Where task runs execute: thread, dask or ray (ray needs the ray extra: pip install 'adaptflow\\[ray]')")]
AddressOption = Annotated[str | None, typer.Option(help="Scheduler address of a running Dask (or Ray) cluster; empty: start a local one")]
GpuPoolOption = Annotated[str | None, typer.Option(help="Cap trainings by the Prefect limit gpu-POOL (created with one slot per GPU)")]


def _execution(runner: str | None, address: str | None, gpu_pool: str | None, default_runner: str) -> dict:
    """Execution settings given on the command line, as spec fields (`--address` goes to the runner's own field)."""
    chosen = runner or default_runner
    values = {"runner": runner, "gpu_pool": gpu_pool}
    if runner is not None:  # a preset's address for another runner no longer applies
        values |= {f"{other}_address": "" for other in ("dask", "ray") if other != runner}
    if address is not None:
        if chosen not in ("dask", "ray"):
            usage("--address", f"it is for runner dask or ray (runner is {chosen}); add --runner dask")
        values[f"{chosen}_address"] = address
    return {k: v for k, v in values.items() if v is not None}


def _presets() -> list[str]:
    """The benchmark's shipped preset names, read from the package's folder without importing the benchmark."""
    from adaptflow.benchmark.presets import preset_names

    return preset_names()


def _complete_preset(incomplete: str) -> list[str]:
    return [name for name in _presets() if name.startswith(incomplete)]


@app.command(rich_help_panel=BENCHMARK)
def benchmark(
    preset: Annotated[str, typer.Option(help=f"A preset, one of: {', '.join(_presets())}; or a YAML file of your own",
                                        autocompletion=_complete_preset)] = "quick",
    workers: Annotated[int | None, typer.Option(help="Cells run in parallel (default: the preset's)")] = None,
    output: Annotated[Path | None, typer.Option(help="Report folder (default: the preset's)")] = None,
    runner: RunnerOption = None,
    address: AddressOption = None,
    gpu_pool: GpuPoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the transfer-learning benchmark (a Prefect flow) and write its report (report.md, PNGs, metrics.json)."""
    from pydantic import ValidationError

    from adaptflow.benchmark import BenchmarkSpec, load_preset
    from adaptflow.config import explain
    from adaptflow.errors import ConfigError

    spec = load_preset(preset)
    update = {k: v for k, v in {"workers": workers, "output": output}.items() if v is not None}
    try:
        spec = BenchmarkSpec.model_validate(spec.model_dump() | update | _execution(runner, address, gpu_pool, spec.runner))
    except ValidationError as exc:
        raise ConfigError(f"invalid benchmark settings\n{explain(exc, BenchmarkSpec)}") from None
    from adaptflow.orchestration.flows.benchmark import benchmark as benchmark_flow
    from adaptflow.orchestration.flows.runners import task_runner

    task_runner(spec)  # a runner whose package is missing fails before Prefect starts a run
    command = f"adaptflow benchmark --preset {preset}"
    servers_answer(spec.tracking)
    with run_failures():
        result = benchmark_flow(spec=spec, command=command)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        from adaptflow.console import print_benchmark

        print_benchmark(result)


@app.command(rich_help_panel=BENCHMARK)
def sweep(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", "-g", help="KEY=V1,V2,...: values of one config key to try; repeat for more keys (a trial per combination)")] = None,
    metric: Annotated[str, typer.Option(help="Trial score that picks the best (higher is better); default: an unsupervised "
                                        "validator on the target's unlabeled images; target_val_accuracy: labeled images held out of training "
                                        "(data.val_fraction or a val folder); never the target test set unless asked")] = "information_maximization",
    runner: RunnerOption = None,
    workers: Annotated[int, typer.Option(help="Trials run in parallel")] = 2,
    address: AddressOption = None,
    gpu_pool: GpuPoolOption = None,
) -> None:
    """Fine-tune and evaluate every combination of the grid (a Prefect flow; nothing is registered),
    print the table and the best overrides, and the transfer command that trains and registers them."""
    from adaptflow.sweep import parse_grid, plan_trials, sweep_settings
    from adaptflow.sweep.plan import override_text
    from adaptflow.sweep.report import transfer_command

    cfg = read_config(config, overrides)
    if not grid:
        usage("--grid", "give the values to try, e.g. --grid finetune.lr=1e-3,3e-3 (repeat --grid for more keys)")
    values = parse_grid(grid)
    settings = sweep_settings(metric=metric, workers=workers, **_execution(runner, address, gpu_pool, "thread"))
    trials = plan_trials(cfg, values, settings.metric)  # every combination checked before Prefect starts
    from adaptflow.orchestration.flows.runners import task_runner
    from adaptflow.orchestration.flows.sweep import sweep as sweep_flow

    task_runner(settings)
    servers_answer(cfg.tracking)
    typer.echo(f"{len(trials)} trials on {settings.runner} ({settings.workers} at a time), best by {settings.metric}")
    with run_failures():
        result = sweep_flow(config=cfg, grid=values, settings=settings)
    from adaptflow.console import print_rows

    print_rows([{"trial": row["name"],
                 settings.metric: _or_failed(row["metrics"].get(settings.metric), row),
                 "overrides": " ".join(override_text(k, v) for k, v in row["overrides"].items())} for row in result["trials"]])
    best = result["best"]
    typer.echo(f"best: {best['name']} ({settings.metric} {best['score']:.4f}); summary {result['summary']}")
    typer.echo(f"train and register it: {transfer_command(Path(result['run_dir']))}")


def _or_failed(score: float | None, row: dict) -> float | str:
    return score if score is not None else f"failed: {row.get('error', '')[:60]}"

"""The benchmark flow: source models, then every grid cell as parallel task runs, then the report."""

from __future__ import annotations

from prefect import flow, unmapped
from prefect.futures import as_completed
from prefect.runtime import flow_run

from adaptflow.benchmark import BenchmarkSpec, plan_cells, source_jobs
from adaptflow.console import progress
from adaptflow.text import benchmark as text
from adaptflow.orchestration.flows.runners import task_runner
from adaptflow.tracking.runs import ended_on_failure
from adaptflow.orchestration.tasks.benchmark import (
    detection_cell_task,
    detection_source_task,
    open_benchmark_run_task,
    prepare_data_task,
    report_task,
    run_cell_task,
    text_cell_task,
    text_source_task,
    train_source_task,
)


def benchmark_run_name() -> str:
    spec = flow_run.parameters.get("spec")
    name = spec.name if isinstance(spec, BenchmarkSpec) else (spec or {}).get("name", "quick")
    return f"benchmark-{name}-{str(flow_run.id)[:8]}"


@flow(name="benchmark-grid", flow_run_name="benchmark-{spec.name}-grid")
def benchmark_grid(spec: BenchmarkSpec, parent_run_id: str) -> tuple[list[dict], list[dict]]:
    """Source models, then the cells, as task runs on this flow's task runner (the one `spec.runner` chose)."""
    jobs = source_jobs(spec)
    sources = train_source_task.map(unmapped(spec), [s for s, _ in jobs], [seed for _, seed in jobs]).result()
    cells = run_cell_task.map(unmapped(spec), plan_cells(spec), unmapped(parent_run_id))
    with progress(len(cells), f"benchmark {spec.name}: cells") as advance:  # done/total and the time left, on a terminal
        for _ in as_completed(cells):
            advance(1)
    return sources, cells.result()


@flow(name="benchmark", flow_run_name=benchmark_run_name)
def benchmark(spec: BenchmarkSpec = BenchmarkSpec(), command: str = "") -> dict:
    """Run the grid of the preset (`spec.workers` cells at a time on `spec.runner`) and write its report to `spec.output`."""
    runner = task_runner(spec)  # a runner whose package is missing stops here, before any task
    prepare_data_task(spec)
    parent = open_benchmark_run_task(spec, str(flow_run.id))
    with ended_on_failure(spec.tracking, parent):
        sources, results = benchmark_grid.with_options(task_runner=runner)(spec, parent)
        detection = []
        if spec.detection is not None:  # one at a time: each Ultralytics training uses every core
            for seed in spec.detection.seeds:
                detection_source_task(spec, seed)
                detection += [detection_cell_task(spec, seed, method, parent) for method in spec.detection.methods]
        texts = []
        if spec.text is not None:  # one at a time, like detection: a transformer uses every core it is given
            texts = [text_source_task(spec, seed) for seed in spec.text.seeds]
            texts += [text_cell_task(spec, seed, name, shots, parent) for seed, name, shots in text.cells(spec.text)]
        paths = report_task(spec, results, sources, parent, command, detection, texts)
    return {"report": paths["report"], "cells": len(results), "mlflow_run_id": parent}

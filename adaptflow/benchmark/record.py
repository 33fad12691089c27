"""The benchmark in MLflow: one parent run, a child run per cell, the report on the parent."""

from __future__ import annotations

import re
from pathlib import Path

from adaptflow import tracking
from adaptflow.benchmark.grid import Cell
from adaptflow.benchmark.spec import BenchmarkSpec


def open_parent_run(spec: BenchmarkSpec, origin: str = "local") -> str:
    """The benchmark's parent run, tagged with the code commit and preset, the preset as params."""
    tags = {"stage": "benchmark", "preset": spec.name, "git_commit": tracking.git_commit(), "origin": origin, "spec_digest": spec.digest()}
    return tracking.start_run(spec.tracking, f"benchmark-{spec.name}", tags, spec.model_dump(mode="json"))


def log_cell(spec: BenchmarkSpec, parent_run_id: str, cell: Cell, result: dict) -> str:
    """A child run for one cell: its coordinates as params, its metrics, and its accuracy curve as history."""
    params = {**cell.to_dict(), "arch": spec.arch, "image_size": spec.image_size}
    run_id = tracking.start_run(spec.tracking, cell.key, {"stage": "benchmark-cell", "kind": cell.kind}, params, parent_run_id=parent_run_id)
    scalars = {k: v for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool) and k not in ("seed", "shots")}
    scalars |= {f"validator_{k}": v for k, v in result["validators"].items()}
    tracking.log_metrics(spec.tracking, run_id, scalars)
    for point in result["curve"]:
        tracking.log_metrics(spec.tracking, run_id, {"curve_accuracy": point["accuracy"], "curve_seconds": point["seconds"]}, step=point["steps"])
    tracking.finish_run(spec.tracking, run_id)
    return run_id


def log_child_run(spec: BenchmarkSpec, parent_run_id: str, name: str, kind: str, params: dict, result: dict) -> str:
    """A child run for a cell of a task's own part of the preset (detection, text): its params and its float metrics."""
    run_id = tracking.start_run(spec.tracking, name, {"stage": "benchmark-cell", "kind": kind}, params, parent_run_id=parent_run_id)
    tracking.log_metrics(spec.tracking, run_id, {k: v for k, v in result.items() if isinstance(v, float)})
    tracking.finish_run(spec.tracking, run_id)
    return run_id


def close_parent_run(spec: BenchmarkSpec, parent_run_id: str, paths: dict[str, Path], metrics: dict) -> None:
    """Attach the report (markdown, PNGs, metrics) to the parent run and log its headline numbers."""
    tracking.log_artifacts(spec.tracking, parent_run_id, paths.values())
    flat = {k: v for k, v in tracking.flatten(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}
    tracking.log_metrics(spec.tracking, parent_run_id, {metric_name(k): v for k, v in flat.items()})
    tracking.finish_run(spec.tracking, parent_run_id)


def metric_name(key: str) -> str:
    """A metric name MLflow accepts: method combinations (a+b) and spaces become underscores."""
    return re.sub(r"[^A-Za-z0-9_\-./: ]", "_", key).replace(" ", "_")

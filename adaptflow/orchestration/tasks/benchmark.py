"""Benchmark tasks: train the source models, run one grid cell, write and publish the report."""

from __future__ import annotations

from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact

from adaptflow import env
from adaptflow.benchmark import BenchmarkSpec, Cell
from adaptflow.benchmark import cells, record, report
from adaptflow.benchmark.spec import domains
from adaptflow.data import ensure_domains
from adaptflow.detection import benchmark as detection
from adaptflow.execution import gpu_pool_for
from adaptflow.io import read_json, write_json
from adaptflow.orchestration.tasks.common import NETWORK_RETRIES, NO_RESULT_CACHE, TRAINING_RETRY
from adaptflow.orchestration.tasks.gpu import gpu_slot
from adaptflow.text import benchmark as text
from adaptflow.training import torch_threads


@task(name="prepare-data", task_run_name="prepare demo data", **NO_RESULT_CACHE)
def prepare_data_task(spec: BenchmarkSpec) -> list[str]:
    """Build the demo domains when the grid needs one that is missing (a fresh clone); returns the missing ones."""
    return ensure_domains(env.project_path(spec.data_root), domains(spec))


@task(name="open-benchmark-run", task_run_name="open MLflow run of {spec.name}", **NETWORK_RETRIES, **NO_RESULT_CACHE)
def open_benchmark_run_task(spec: BenchmarkSpec, origin: str) -> str:
    """The parent MLflow run every cell's run nests under."""
    return record.open_parent_run(spec, origin)


@task(name="train-source", task_run_name="source {source} seed {seed}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def train_source_task(spec: BenchmarkSpec, source: str, seed: int) -> dict:
    """Train the source model of one seed (once: a finished one is reused), holding a slot of the GPU pool."""
    with gpu_slot(gpu_pool_for("auto", spec.gpu_pool)):  # cells train on the device `auto` picks
        return cells.train_source(spec, source, seed)


@task(name="benchmark-cell", task_run_name="{cell.target} {cell.name} k={cell.shots} seed={cell.seed}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def run_cell_task(spec: BenchmarkSpec, cell: Cell, parent_run_id: str) -> dict:
    """One cell of the grid, logged as a child run of the benchmark's run; it holds a slot of the GPU pool while it trains."""
    with gpu_slot(gpu_pool_for("auto", spec.gpu_pool)):
        result = cells.run_cell(spec, cell)
    record.log_cell(spec, parent_run_id, cell, result)
    return result


@task(name="detection-source", task_run_name="detection source seed {seed}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def detection_source_task(spec: BenchmarkSpec, seed: int) -> dict:
    """The source detector of one seed (reused when already trained)."""
    return detection.source_model(spec.detection, spec.data_root, cells.work_dir(spec), seed)


@task(name="detection-cell", task_run_name="detection {method} seed={seed}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def detection_cell_task(spec: BenchmarkSpec, seed: int, method: str, parent_run_id: str) -> dict:
    """One detection method on one seed, logged as a child run of the benchmark's run."""
    result = detection.run_cell(spec.detection, spec.data_root, cells.work_dir(spec), seed, method)
    params = {"task": "detection", "method": method, "seed": seed, "arch": spec.detection.arch}
    record.log_child_run(spec, parent_run_id, f"detection-{method}-seed{seed}", "detection", params, result)
    return result


@task(name="text-source", task_run_name="text source seed {seed}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def text_source_task(spec: BenchmarkSpec, seed: int) -> dict:
    """The text source model of one seed (reused when already trained): the encoder fine-tuned on the source labels."""
    with torch_threads(spec.threads):
        return text.source_model(spec.text, spec.data_root, cells.work_dir(spec), seed)


@task(name="text-cell", task_run_name="text {name} k={shots} seed={seed}", **TRAINING_RETRY, **NO_RESULT_CACHE)
def text_cell_task(spec: BenchmarkSpec, seed: int, name: str, shots: int | str, parent_run_id: str) -> dict:
    """One text run on one seed, logged as a child run of the benchmark's run."""
    with torch_threads(spec.threads):
        result = text.run_cell(spec.text, spec.data_root, cells.work_dir(spec), seed, name, shots)
    params = {"task": "text_classification", "run": name, "shots": shots, "seed": seed, "encoder": spec.text.encoder}
    record.log_child_run(spec, parent_run_id, f"text-{name}-k{shots}-seed{seed}", "text", params, result)
    return result


@task(name="benchmark-report", task_run_name="report {spec.name}", **NO_RESULT_CACHE)
def report_task(spec: BenchmarkSpec, results: list[dict], sources: list[dict], parent_run_id: str, command: str,
                detection_results: list[dict] = (), text_results: list[dict] = ()) -> dict[str, str]:
    """report.md, PNG plots and metrics.json; attached to the parent run and shown as a Prefect artifact."""
    summary: dict = {}

    def detection_section(spec: BenchmarkSpec, _results: list[dict], output: Path) -> str:
        markdown, summary["detection"] = detection.report_section(spec.detection, list(detection_results), output)
        return markdown

    def text_section(spec: BenchmarkSpec, _results: list[dict], output: Path) -> str:
        markdown, summary["text"] = text.report_section(spec.text, list(text_results), output)
        return markdown

    sections = [*([detection_section] if detection_results else []), *([text_section] if text_results else [])]
    paths = report.write_report(spec, results, sources, Path(spec.output), cells.work_dir(spec), sections, command=command)
    if summary:
        write_json(paths["metrics"], read_json(paths["metrics"]) | summary)
    for key, plot in (("detection", "detection_map50.png"), ("text", "text_macro_f1.png")):
        if key in summary and (Path(spec.output) / plot).exists():
            paths[key] = Path(spec.output) / plot
    record.close_parent_run(spec, parent_run_id, paths, read_json(paths["metrics"]))
    markdown = paths["report"].read_text()
    create_markdown_artifact(markdown, key=f"benchmark-{spec.name.replace('_', '-').lower()}", description=f"Benchmark report ({spec.name})")
    return {k: str(v) for k, v in paths.items()}

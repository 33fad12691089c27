"""The benchmark: presets, the grid, and the flow end to end on tiny real data (report, plots, MLflow runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from adaptflow.benchmark import BenchmarkSpec, load_preset, plan_cells, source_jobs
from adaptflow.config import ConfigError


def test_presets_load_and_the_full_grid_has_every_dimension() -> None:
    quick, full = load_preset("quick"), load_preset("full")
    assert quick.workers >= 1 and len(quick.seeds) >= 3
    cells = plan_cells(full)
    kinds = {c.kind for c in cells}
    assert kinds == {"source_only", "method", "strategy", "scratch"}
    assert {c.shots for c in cells if c.kind == "scratch"} == {1, 5, 10, "all"}
    assert {c.seed for c in cells} == {0, 1, 2} and {c.target for c in cells} == {"uci_digits", "mnist_m"}
    assert len({c.key for c in cells}) == len(cells)
    assert source_jobs(full) == [("mnist", 0), ("mnist", 1), ("mnist", 2)]


def test_bad_presets_name_the_file_and_field(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such benchmark preset"):
        load_preset("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("methods: [adabn+magic]\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid benchmark preset\n  methods: .*unknown method\(s\) \['magic'\]"):
        load_preset(bad)


def test_benchmark_flow_writes_the_report_and_logs_child_runs(prefect_api, project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.io import read_json
    from flows.benchmark import benchmark

    spec = BenchmarkSpec(
        name="tiny", image_size=16, pairs=[{"source": "mnist", "target": "uci_digits"}], seeds=[0, 1], shots=[1],
        strategies=["finetune"], methods=["adabn", "coral"], source={"epochs": 1}, adapt={"epochs": 1},
        few_shot={"steps": 4, "batch_size": 8}, eval_points=2, workers=2, output=project / "reports" / "benchmark",
    )
    result = benchmark(spec=spec, command="adaptflow benchmark --preset tiny")
    out = project / "reports" / "benchmark"
    report = (out / "report.md").read_text()
    assert "| source only (no adaptation) |" in report and "| coral |" in report and "| from scratch |" in report
    assert "Unsupervised validator `information_maximization`" in report and "![Label efficiency" in report
    for name in ("label_efficiency.png", "time_to_accuracy.png", "features.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    metrics = read_json(out / "metrics.json")["uci_digits"]
    assert metrics["best_method"] in {"adabn", "coral"} and 0 <= metrics["validator"]["agreement"] <= 1

    client = MlflowClient(env.default_tracking_uri())
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == result["cells"] == len(plan_cells(spec))
    assert all("target_accuracy" in c.data.metrics for c in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"report.md", "metrics.json", "label_efficiency.png"}

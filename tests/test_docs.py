"""Generated documentation stays true: the config reference comes from the config model's field
descriptions, the benchmark tables from the metrics.json each benchmark run wrote."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from adaptflow import docs
from conftest import REPO


def test_generated_docs_match_what_is_committed() -> None:
    stale = docs.stale()
    assert not stale, f"{', '.join(stale)} differ from what their sources generate: run `{docs.FIX}` and commit the result"


def test_the_config_reference_lists_every_field_with_its_description() -> None:
    from adaptflow.config import FinetuneConfig

    page = (REPO / docs.CONFIG_REFERENCE).read_text()
    for name, field in FinetuneConfig.model_fields.items():
        assert f"| `{name}` |" in page and " ".join(field.description.split()) in page, name
    assert "## `data.window`" in page


def test_a_changed_metrics_file_makes_the_benchmark_page_stale(tmp_path: Path) -> None:
    """The check reads the numbers, not a copy of them: a new benchmark result shows up as a stale page."""
    for path in ("README.md", "docs/benchmark.md", "docs/text.md", docs.CONFIG_REFERENCE):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(REPO / path, tmp_path / path)
    shutil.copytree(REPO / docs.BENCHMARK_DIR, tmp_path / docs.BENCHMARK_DIR)
    assert docs.stale(tmp_path) == []
    metrics_path = tmp_path / docs.BENCHMARK_DIR / "imagenet" / "metrics.json"
    metrics = json.loads(metrics_path.read_text())
    metrics["uci_digits"]["few_shot"]["scratch"]["10"] = 0.5
    metrics_path.write_text(json.dumps(metrics))
    assert docs.stale(tmp_path) == ["docs/benchmark.md", "README.md"]
    assert docs.write(tmp_path) == ["docs/benchmark.md", "README.md"]
    assert "| from scratch | 50.0 |" in (tmp_path / "README.md").read_text()
    assert docs.stale(tmp_path) == []

    text_path = tmp_path / docs.BENCHMARK_DIR / "text" / "metrics.json"
    text = json.loads(text_path.read_text())
    text["text"]["few_shot_macro_f1"]["tfidf"]["20"] = 0.5
    text_path.write_text(json.dumps(text))
    assert docs.write(tmp_path) == ["docs/text.md"]
    assert "| TF-IDF + logistic regression | 53.1 | 50.0 |" in (tmp_path / "docs/text.md").read_text()


def test_a_page_without_its_markers_says_where_they_go(tmp_path: Path) -> None:
    for path in ("README.md", "docs/benchmark.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("# no markers\n")
    shutil.copytree(REPO / docs.BENCHMARK_DIR, tmp_path / docs.BENCHMARK_DIR)
    with pytest.raises(ValueError, match="docs/benchmark.md: no block '<!-- generated: imagenet-table"):
        docs.generated(tmp_path)


def test_each_benchmark_report_agrees_with_the_metrics_its_run_wrote(tmp_path: Path) -> None:
    """The reports are the benchmark's own output: a few-label table edited by hand no longer matches its metrics.json."""
    assert docs.report_disagreements() == []
    shutil.copytree(REPO / docs.BENCHMARK_DIR, tmp_path / docs.BENCHMARK_DIR)
    report = tmp_path / docs.BENCHMARK_DIR / "imagenet" / "report.md"
    report.write_text(report.read_text().replace("| from scratch | 45.6 ± 6.0 |", "| from scratch | 40.6 ± 6.0 |", 1))
    assert docs.report_disagreements(tmp_path) == [
        "docs/benchmark/imagenet/report.md: uci_digits from scratch k = 1 shows '40.6', its metrics.json 45.6"]

"""The text benchmark: its preset validates (AdaBN refused with the reason), and its grid runs through the
benchmark flow: a source model per seed, the methods, each run and TF-IDF on the same rows, a report that
states both targets, child runs in MLflow, and finished cells reused by the next run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from adaptflow.benchmark import BenchmarkSpec, load_preset
from adaptflow.text.benchmark import TFIDF, TextBenchmark, cell_dir, labeled_rows, source_dir

MOVIES = {"positive": ["great film, loved it", "wonderful and moving", "a delight to watch", "brilliant acting"],
          "negative": ["terrible and boring", "an awful mess", "a waste of time", "dull and lifeless"]}
DRUGS = {"positive": ["this drug worked great for me", "no side effects and it helped", "my pain is gone", "I feel much better"],
         "negative": ["terrible side effects", "it did not work at all", "made me sick and dizzy", "awful headaches, stopped it"]}


def _write(path: Path, rows: dict[str, list[str]], suffix: str = "") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["text,label"] + [f'"{text}{suffix}",{label}' for label, texts in rows.items() for text in texts]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_the_text_preset_validates_and_refuses_what_does_not_apply_to_a_transformer() -> None:
    spec = load_preset("text")
    assert spec.pairs == [] and spec.text is not None
    assert spec.text.shots == [5, 20, 50, "all"] and spec.text.seeds == [0, 1, 2]
    assert {"linear_probe", "finetune", "lp_ft", "gradual_unfreeze"} <= set(spec.text.strategies)
    assert {"mcc", "self_training", "coral", "dann"} <= set(spec.text.methods)
    with pytest.raises(ValidationError, match="adabn does not apply to a text encoder.*LayerNorm"):
        TextBenchmark(methods=["adabn"])
    with pytest.raises(ValidationError, match="k = 0 is what source_only and the methods measure"):
        TextBenchmark(shots=[0, 5])
    with pytest.raises(ValidationError, match="source and target are both 'drug_reviews'"):
        TextBenchmark(source="drug_reviews")


def test_text_benchmark_flow_reports_runs_against_tfidf_and_source_only_and_reuses_finished_cells(prefect_api, project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.benchmark.cells import work_dir
    from adaptflow.config import DataConfig
    from adaptflow.io import read_json
    from adaptflow.text.baseline import tfidf_report
    from adaptflow.text.data import load_text_split, read_split
    from adaptflow.text.encoder import load_text_checkpoint
    from adaptflow.text.stages import training_sets
    from flows.benchmark import benchmark

    data = project / "data"
    _write(data / "movies" / "train.csv", MOVIES)
    _write(data / "movies" / "test.csv", MOVIES, " indeed")
    _write(data / "drugs" / "train.csv", DRUGS)
    _write(data / "drugs" / "test.csv", DRUGS, " overall")
    (data / "drugs" / "unlabeled.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for texts in DRUGS.values() for t in texts))
    out = project / "reports" / "text"
    text = {"source": "movies", "target": "drugs", "seeds": [0], "shots": [2], "strategies": ["lp_ft"], "encoder_strategies": [],
            "methods": ["mcc"], "max_length": 16, "source_epochs": 1, "steps": 2, "batch_size": 4}
    spec = BenchmarkSpec(name="tiny-text", pairs=[], seeds=[0], workers=1, threads=1, output=out, text=text)
    result = benchmark(spec=spec, command="adaptflow benchmark --preset tiny-text")

    report = (out / "report.md").read_text()
    assert "## Text: movies -> drugs" in report and "### Targets" in report
    assert "- Best transfer run at k = 2 against TF-IDF: `lp_ft`" in report
    assert "- Best method without target labels against source-only: `mcc`" in report
    assert "| TF-IDF + logistic regression | " in report and "| source only | " in report and "| mcc | " in report
    assert (out / "text_macro_f1.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Plots" not in report and "Architecture" not in report  # no image grid in this preset
    summary = read_json(out / "metrics.json")["text"]

    # TF-IDF trained on the rows the runs trained on, which are those a pipeline run with labeled_per_class=2 and the
    # same seed trains on (its own selection, `training_sets`)
    cfg = DataConfig(root=data, source="movies", target="drugs", max_length=16, labeled_per_class=2)
    _, _, tokens = load_text_checkpoint(source_dir(spec.text, spec.data_root, work_dir(spec), 0) / "model.pt")
    classes = ("negative", "positive")
    pipeline = training_sets(cfg, tokens, 0, (), False)
    _, texts, labels = labeled_rows(cfg, classes, 2, 0)
    assert texts == pipeline.texts and labels.tolist() == pipeline.train.labels.tolist() and sorted(labels.tolist()) == [0, 0, 1, 1]
    test = load_text_split(cfg, "drugs", "test", tokens, classes)
    expected = tfidf_report(pipeline.texts, pipeline.train.labels.tolist(), read_split(cfg, "drugs", "test").texts, test.labels, classes)
    assert summary["few_shot_macro_f1"][TFIDF]["2"] == pytest.approx(expected["macro_f1"])
    f1 = summary["few_shot_macro_f1"]["lp_ft"]["2"]
    assert summary["transfer_vs_tfidf"]["gain"] == pytest.approx(f1 - expected["macro_f1"])
    assert summary["unsupervised"]["mcc"]["gain"] == pytest.approx(summary["unsupervised"]["mcc"]["target_macro_f1"]
                                                                   - summary["unsupervised"]["source_only"]["target_macro_f1"])

    client = MlflowClient(env.default_tracking_uri())
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert sorted(c.data.params["run"] for c in children) == ["lp_ft", "mcc", TFIDF]
    assert all("target_macro_f1" in c.data.metrics for c in children)

    # a second run of the same preset trains nothing: every cell's result is read back
    kept = cell_dir(spec.text, spec.data_root, work_dir(spec), 0, "lp_ft", 2) / "result.json"
    before = kept.stat().st_mtime_ns
    benchmark(spec=spec, command="adaptflow benchmark --preset tiny-text")
    assert kept.stat().st_mtime_ns == before
    assert read_json(out / "metrics.json")["text"]["few_shot_macro_f1"] == summary["few_shot_macro_f1"]

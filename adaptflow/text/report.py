"""The text demo's result table: the fine-tuned model against TF-IDF + logistic regression on the same labels and,
when it started from a source model, against that model as it is (source-only)."""

from __future__ import annotations

from pathlib import Path

from adaptflow.config import RunConfig
from adaptflow.io import read_json


def demo_lines(cfg: RunConfig, source: dict | None, result: dict, seconds: float) -> list[str]:
    """Lines a person reads after `adaptflow demo -c configs/text.yaml` (`source`: the pretrain flow's result, if it ran)."""
    m, reg = result["metrics"], result["registration"]
    history = read_json(Path(result["run_dir"]) / "finetune" / "history.json")
    labels = f"{cfg.data.labeled_per_class} labels per class" if cfg.data.labeled_per_class is not None else "every labeled row"
    lines = [f"\nResults on the {cfg.data.target} test split ({cfg.finetune.arch}, {cfg.finetune.strategy}, {labels}, "
             f"data {result['data_version']})",
             f"  {'':<44} {'accuracy':>9} {'macro-F1':>9}"]
    if "baseline_target_accuracy" in m:
        lines.append(f"  {'source model as it is (source-only)':<44} {m['baseline_target_accuracy']:>9.4f} {m['baseline_target_macro_f1']:>9.4f}")
    start = f"source model ({cfg.data.source}), fine-tuned" if source is not None else f"{cfg.pretrained.uri}, fine-tuned"
    lines += [f"  {start:<44} {m['target_accuracy']:>9.4f} {m['target_macro_f1']:>9.4f}   "
              f"trained in {sum(e['epoch_seconds'] for e in history):.0f}s",
              f"  {'TF-IDF + logistic regression, same labels':<44} {m['tfidf_target_accuracy']:>9.4f} {m['tfidf_target_macro_f1']:>9.4f}",
              f"  gain over TF-IDF: {m['gain_over_tfidf_macro_f1']:+.4f} macro-F1"]
    if source is not None:
        published = source["published"]["metrics"]
        lines.append(f"  source model on the source's test split ({cfg.data.source}): accuracy {published['source_accuracy']:.4f}")
    if "source_accuracy" in m:
        lines.append(f"  fine-tuned model on the source's test split: accuracy {m['source_accuracy']:.4f}")
    lines += [f"  registered {reg['model_uri']} -> alias '{reg['alias']}' ({reg['reason']})",
              f"  run folder {result['run_dir']}   total {seconds:.0f}s"]
    return lines

"""The benchmark's report: markdown, PNG plots and a metrics file, from the cells' results.

Sections, per pair: adaptation without target labels (`tables`, with the unsupervised validator's
picks from `selection`), few labels (strategies versus scratch at each k, `tables`), the strategy and
learning rate picked without labels (`selection`), time to accuracy and starting points (`speed`),
then the plots (`plots`: label efficiency, time to accuracy, features before and after adaptation).
`extra_sections` is where other tasks (detection mAP50) add their own sections.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from adaptflow.benchmark.cells import source_model_path
from adaptflow.benchmark.grid import CONTROL, FewLabel
from adaptflow.benchmark.plots import plot_features, plot_label_efficiency, plot_time_to_accuracy
from adaptflow.benchmark.selection import lr_selection, strategy_selection, validator_selection
from adaptflow.benchmark.spec import BenchmarkSpec
from adaptflow.benchmark.speed import starting_points, time_text, time_to_accuracy, time_to_accuracy_summary
from adaptflow.benchmark.tables import adaptation_table, few_label_table
from adaptflow.io import atomic_write, write_json

log = logging.getLogger(__name__)

#: A section of the report: (spec, results, output folder) -> markdown (it may write its own PNGs there).
ReportSection = Callable[[BenchmarkSpec, list[dict], Path], str]
PLOTS = ("label_efficiency.png", "time_to_accuracy.png", "features.png")


def _labels_per_class(shots: Sequence[int | str]) -> str:
    text = ", ".join(map(str, shots))
    return "1 label per class" if list(shots) == [1] else f"k = {text} labels per class"


def write_report(
    spec: BenchmarkSpec,
    results: list[dict],
    sources: list[dict],
    output: Path,
    work: Path,
    extra_sections: Sequence[ReportSection] = (),
    command: str = "",
) -> dict[str, Path]:
    """Write report.md, metrics.json, results.json and the PNG plots to `output`; returns their paths."""
    output.mkdir(parents=True, exist_ok=True)
    metrics: dict = {}
    md = [f"# Transfer learning benchmark: `{spec.name}`", ""]
    if command:
        md += [f"Made with `{command}`.", ""]
    seeds = ", ".join(map(str, spec.seeds))
    l2sp = (f" Few-label transfer strategies are also pulled toward the source model's weights (L2-SP) with weight {spec.l2sp:g}, "
            "set by the preset (its file says how it was chosen); scratch is not.") if spec.l2sp else ""
    starts = (" Few-label strategies also start from pretrained weights: " + "; ".join(
        f"runs `{FewLabel('<strategy>', init=init).name}` from `{uri}` (its weights, a new head)" for init, uri in spec.pretrained.items())
        + "; runs named by the strategy alone start from the source model.") if spec.pretrained else ""
    if spec.pairs:  # the image grid's settings (a text-only or detection-only preset has none)
        md += [
            f"Architecture `{spec.arch}` at {spec.image_size} px, seeds {seeds}; values are target-test accuracy, mean ± std over seeds. "
            f"Source models: {spec.source.epochs} epochs on the source {spec.source.describe_augmentation()} "
            + ", ".join(f"{s['source']} seed {s['seed']}: {100 * s['source_accuracy']:.1f}% on source test" for s in sources) + ".",
            "",
            "Hyperparameters are the preset's, not searched: literature defaults (pseudo-label threshold "
            f"{spec.pseudo_label_threshold}, adaptation weight {spec.adapt_weight}, layer-wise decay {spec.layer_lr_decay}, "
            f"surgical blocks {spec.surgical_blocks}, MCC temperature 2.5, DANN's lambda schedule) and the project's training "
            f"defaults; no hyperparameter was chosen on a target test set.{l2sp}{starts} Where a method is chosen per seed, the unsupervised validator `{spec.validator}` chooses it, from "
            "unlabeled target images only; the label-based choice is shown beside it for comparison, not used. "
            "A verdict 'helps' means the mean gain over source-only exceeds the seed standard deviation (and 1 point)."
            + (" The few-label learning rate is also tried at the preset's lr_candidates, and the same validator picks it "
               "(section 'Learning rate picked without target labels')." if spec.lr_candidates else ""),
            "",
        ]
    models: dict[str, tuple[Path, Path]] = {}
    for pair in spec.pairs:
        target = pair.target
        md += [f"## {pair.source} -> {target}", "", "### No target labels (unsupervised domain adaptation)", ""]
        table, summary = adaptation_table(spec, results, target)
        selection, chosen = validator_selection(spec, results, target)
        md += [table, ""] + ([selection, ""] if selection else [])
        few, few_summary = few_label_table(spec, results, target)
        md += ["### Few target labels: strategies versus training from scratch", "", few, ""]
        picked_text, picked_summary = strategy_selection(spec, results, target)
        md += [picked_text, ""] if picked_text else []
        lr_text, lr_summary = lr_selection(spec, results, target)
        md += [lr_text, ""] if lr_text else []
        tta = time_to_accuracy(results, target)
        speed = time_to_accuracy_summary(results, target, spec.transfer_names())
        md += [time_text(speed, tta, target, "finetune", 1), ""]
        starts_text, starts_summary = starting_points(spec, results, target)
        md += [starts_text, ""] if starts_text else []
        methods = {k: v for k, v in summary.items() if k not in ("source_only", CONTROL)}
        best = max(methods, key=lambda k: methods[k]["mean"]) if methods else None
        metrics[target] = {
            "source_only": summary.get("source_only", {}).get("mean"),
            "best_method": best,
            "best_method_accuracy": methods[best]["mean"] if best else None,
            "best_method_gain": methods[best]["gain"] if best else None,
            "validator": chosen,
            "few_shot": few_summary,
            "time_to_accuracy_k1": tta["per_seed"],
            "time_to_accuracy_k1_summary": speed,
            **({"strategy_selection": picked_summary} if picked_summary else {}),
            **({"lr_selection": lr_summary} if lr_summary else {}),
            **({"starting_points": starts_summary} if starts_summary else {}),
        }
        picked = [r for r in results if r["target"] == target and r["kind"] == "method" and r["name"] == best and r["shots"] == 0]
        if picked:
            first = min(picked, key=lambda r: r["seed"])
            models[target] = (source_model_path(spec, pair.source, first["seed"]), Path(first["model_path"]))
    paths = {"report": output / "report.md", "metrics": output / "metrics.json", "results": output / "results.json"}
    if any(r["kind"] in ("strategy", "scratch") for r in results):
        paths["label_efficiency"] = plot_label_efficiency(spec, results, output / "label_efficiency.png")
        # With pretrained starts, at every k: where they differ from the source model may be any k.
        paths["time_to_accuracy"] = plot_time_to_accuracy(spec, results, output / "time_to_accuracy.png", spec.shots if spec.pretrained else (1,))
    if models and all(after.exists() for _, after in models.values()):
        paths["features"] = plot_features(spec, output / "features.png", models)
    md += ["## Plots", ""] if any(key in paths for key in ("label_efficiency", "time_to_accuracy", "features")) else []
    for key, title in (("label_efficiency", "Label efficiency: accuracy versus labels per class"),
                       ("time_to_accuracy", f"Time to accuracy with {_labels_per_class(spec.shots if spec.pretrained else [1])}"),
                       ("features", "Features before and after adaptation (PCA)")):
        if key in paths:
            md += [f"### {title}", "", f"![{title}]({paths[key].name})", ""]
    for section in extra_sections:
        md += [section(spec, results, output), ""]
    with atomic_write(paths["report"]) as tmp:
        tmp.write_text("\n".join(md))
    write_json(paths["metrics"], metrics)
    write_json(paths["results"], {"spec": spec.model_dump(mode="json"), "sources": sources, "cells": results})
    log.info("report written to %s", paths["report"])
    return paths

"""Choosing without target labels: per seed (and k), the run an unsupervised validator (or held-out
labels) picks among the candidates, against the run target labels would pick: adaptation methods,
few-label strategies and few-label learning rates."""

from __future__ import annotations

import operator
import statistics
from collections.abc import Sequence

from adaptflow.adapt.selection import VALIDATORS
from adaptflow.benchmark.grid import FewLabel
from adaptflow.benchmark.spec import BenchmarkSpec
from adaptflow.benchmark.stats import best_by, group_by, holdout_score, pct, pick_counts, pick_summary, shots_order, validator_picks
from adaptflow.benchmark.tables import row_label


def validator_selection(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """Per seed, the method the unsupervised validator picks versus the one target labels would pick."""
    rows = [r for r in results if r["target"] == target and r["kind"] in ("source_only", "method") and r["shots"] == 0]
    if len({r["name"] for r in rows}) < 2:  # nothing to choose between
        return "", {}
    seeds = sorted(group_by(rows, "seed").items())
    if not seeds:
        return "", {}
    chosen, best = validator_picks([group for _, group in seeds], spec.validator)
    agree = sum(map(operator.is_, chosen, best))
    picked_acc, best_acc = [r["target_accuracy"] for r in chosen], [r["target_accuracy"] for r in best]
    picks = [f"seed {seed}: picks **{c['name']}** ({100 * c['target_accuracy']:.1f}%), "
             f"target labels would pick **{b['name']}** ({100 * b['target_accuracy']:.1f}%)"
             for ((seed,), _), c, b in zip(seeds, chosen, best, strict=True)]
    n = len(picks)
    text = (f"Unsupervised validator `{spec.validator}` (computed on the unlabeled target split, no labels): agrees with the "
            f"label-based choice in {agree}/{n} seeds; its picks reach {pct(picked_acc)}% versus {pct(best_acc)}% for the "
            "best-by-labels choice.\n\n" + "\n".join(f"- {p}" for p in picks))
    comparison = validator_comparison(spec, {"no target labels": [group for _, group in seeds]})
    text += f"\n\n{comparison}" if comparison else ""
    return text, {"agreement": agree / n, "picked_accuracy": statistics.fmean(picked_acc)}


def validator_comparison(spec: BenchmarkSpec, columns: dict[str, Sequence[list[dict]]]) -> str:
    """A table: per validator that every run measured and per column (its groups: one seed's candidates
    each), how often its pick is the label-based one and what its picks reach; a last row for the
    held-out labels where the candidates carry their held-out scores (`holdout`)."""
    runs = [r for groups in columns.values() for g in groups for r in g]
    names = [v for v in VALIDATORS if all(v in r["validators"] for r in runs)]
    held = {c: all("holdout" in r for g in groups for r in g) for c, groups in columns.items()}
    if len(names) + any(held.values()) < 2:
        return ""
    lines = ["| picked by | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for name in names:
        cells = [pick_summary(*validator_picks(groups, name)) for groups in columns.values()]
        lines.append(f"| {name}{' (used)' if name == spec.validator else ''} | " + " | ".join(cells) + " |")
    if any(held.values()):
        cells = [pick_summary(*best_by(groups, holdout_score)) if held[c] else "" for c, groups in columns.items()]
        lines.append(f"| held-out target labels ({spec.holdout_fraction:.0%} a class, at least 1) | " + " | ".join(cells) + " |")
    return ("Every validator's picks, for comparison (seeds where the pick is the label-based one, and the picks' "
            "target accuracy):\n\n" + "\n".join(lines))


def strategy_selection(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """Few labels, with the transfer strategy the unsupervised validator picks per k and seed (labels
    only, at few_shot.lr), against scratch of the same seeds; the label-based pick shown beside it."""
    if len(spec.strategies) < 2:  # nothing to choose between
        return "", {}
    rows = [r for r in results if r["target"] == target and r["name"] in ("scratch", *spec.strategies)]
    held_out = {(FewLabel.parse(r["name"])._replace(holdout=False).name, r["shots"], r["seed"]): r
                for r in results if r["target"] == target and r["kind"] == "holdout"}
    lines, summary, columns = [], {}, {}
    for k in sorted({r["shots"] for r in rows}, key=shots_order):
        seeds = [g for g in group_by([r for r in rows if r["shots"] == k], "seed").values()
                 if len(g) == len(spec.strategies) + 1]
        if not seeds:
            continue
        candidates = [[r for r in g if r["name"] != "scratch"] for g in seeds]
        if all((r["name"], k, r["seed"]) in held_out for g in candidates for r in g):
            candidates = [[{**r, "holdout": held_out[r["name"], k, r["seed"]]} for r in g] for g in candidates]
        columns[f"k = {k}"] = candidates
        picks, labels = validator_picks(candidates, spec.validator)
        agree = sum(map(operator.is_, picks, labels))
        scratch = [r["target_accuracy"] for g in seeds for r in g if r["name"] == "scratch"]
        best = [r["target_accuracy"] for r in labels]
        picked = [r["target_accuracy"] for r in picks]
        diff = 100 * (statistics.fmean(picked) - statistics.fmean(scratch))
        lines.append(f"- k = {k}: the picked strategy reaches {pct(picked)}% ({pick_counts(picks)}) vs from scratch {pct(scratch)}% "
                     f"({diff:+.1f} points); the pick is the label-based one in {agree}/{len(seeds)} seeds, which reaches {pct(best)}%")
        summary[str(k)] = {"picked": statistics.fmean(picked), "scratch": statistics.fmean(scratch), "agreement": agree / len(seeds),
                           "label_based": statistics.fmean(best)}
        if "holdout" in candidates[0][0]:
            held, _ = best_by(candidates, holdout_score)
            agree_held = sum(map(operator.is_, held, labels))
            accuracy = [r["target_accuracy"] for r in held]
            lines.append(f"  - picked by held-out target labels instead: {pct(accuracy)}% ({pick_counts(held)}), the label-based one in "
                         f"{agree_held}/{len(seeds)} seeds")
            summary[str(k)]["holdout"] = {"picked": statistics.fmean(accuracy), "agreement": agree_held / len(seeds)}
    if not lines:
        return "", {}
    comparison = validator_comparison(spec, columns)
    intro = (f"Strategy picked without target labels: per k and seed, the validator `{spec.validator}` picks one of the "
             "strategies trained on target labels alone, by its score on the unlabeled target images.")
    if any("holdout" in v for v in summary.values()):
        intro += (f" From k = 2, each strategy is also trained with {spec.holdout_fraction:.0%} of each class's labels held out "
                  "(at least one), and its accuracy on them picks instead (ties: the lower loss), as a validation split would; "
                  "the picked strategy's accuracy is that of its run on all k labels.")
    return "\n".join([intro, "", *lines] + (["", comparison] if comparison else [])), summary


def lr_selection(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """Few labels, at the learning rate the unsupervised validator picks per strategy, k and seed among
    few_shot.lr and lr_candidates; beside it each learning rate's accuracy and how often the pick is
    the one target labels would make."""
    if not spec.lr_candidates:
        return "", {}
    lrs = spec.few_shot_lrs()
    rows = [{**r, "base": run.strategy, "lr": run.lr or spec.few_shot.lr} for r in results
            if r["target"] == target and r["kind"] in ("strategy", "scratch") and not (run := FewLabel.parse(r["name"])).methods]
    text = ["### Learning rate picked without target labels", "",
            f"Every few-label run on labels only also trained at each of {', '.join(f'{lr:g}' for lr in lrs)}. Per strategy, k and "
            f"seed, the validator `{spec.validator}` picks one from the unlabeled target images; the pick target labels would make "
            "is shown for comparison, not used."]
    summary: dict = {}
    for k in sorted({r["shots"] for r in rows}, key=shots_order):
        lines = ["| strategy | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | picked by the validator | picks agreeing with labels | "
                 "learning rates picked |", "|---|" + "---|" * (len(lrs) + 3)]
        for name in ["scratch", *spec.strategies]:
            seeds = [g for g in group_by([r for r in rows if r["base"] == name and r["shots"] == k], "seed").values() if len(g) == len(lrs)]
            if not seeds:
                continue
            picks, labels = validator_picks(seeds, spec.validator)
            agree = sum(map(operator.is_, picks, labels))
            per_lr = {lr: [r["target_accuracy"] for g in seeds for r in g if r["lr"] == lr] for lr in lrs}
            picked = [r["target_accuracy"] for r in picks]
            counts = ", ".join(f"{lr:g} x{n}" for lr in lrs if (n := sum(r["lr"] == lr for r in picks)))
            lines.append(f"| {row_label(name)} | " + " | ".join(pct(a) for a in per_lr.values())
                         + f" | {pct(picked)} | {agree}/{len(seeds)} | {counts} |")
            summary.setdefault(str(k), {})[name] = {"picked": statistics.fmean(picked), "agreement": agree / len(seeds),
                                                    "per_lr": {f"{lr:g}": statistics.fmean(a) for lr, a in per_lr.items()}}
        picked_means = {n: v["picked"] for n, v in summary.get(str(k), {}).items()}
        transfer = max((n for n in picked_means if n != "scratch"), key=picked_means.get, default=None)
        if transfer and "scratch" in picked_means:
            # The validator may pick scratch's worse learning rates: compare with scratch's best one too (a label-based choice).
            best_lr, best = max(summary[str(k)]["scratch"]["per_lr"].items(), key=lambda item: item[1])
            diff, conservative = 100 * (picked_means[transfer] - picked_means["scratch"]), 100 * (picked_means[transfer] - best)
            lines += ["", f"- k = {k}, learning rate picked by the validator on both sides: best transfer strategy **{transfer}** "
                          f"{100 * picked_means[transfer]:.1f}% vs from scratch {100 * picked_means['scratch']:.1f}% ({diff:+.1f} points); "
                          f"against scratch at its best learning rate by target labels ({best_lr}, {100 * best:.1f}%): {conservative:+.1f} points"]
        text += ["", f"k = {k}:", "", *lines]
    return "\n".join(text), summary

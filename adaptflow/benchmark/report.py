"""The benchmark's report: markdown tables, PNG plots and a metrics file, from the cells' results.

Sections: adaptation without target labels (with the unsupervised validator's picks), few
labels (strategies versus scratch at each k), label efficiency, time to accuracy, and source /
target features before and after adaptation. `extra_sections` is where other tasks (detection
mAP50) add their own sections.
"""

from __future__ import annotations

import logging
import math
import operator
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

from adaptflow.adapt.validators import VALIDATORS
from adaptflow.benchmark.cells import _data, source_model_path
from adaptflow.benchmark.spec import (
    CONTROL,
    HOLDOUT_TAG,
    INIT_SEP,
    TARGET_BN,
    BenchmarkSpec,
    few_label_parts,
    losses_on_unlabeled,
    tried_lr,
)
from adaptflow.io import atomic_write, write_json

log = logging.getLogger(__name__)

#: A section of the report: (spec, results, output folder) -> markdown (it may write its own PNGs there).
ReportSection = Callable[[BenchmarkSpec, list[dict], Path], str]
PLOTS = ("label_efficiency.png", "time_to_accuracy.png", "features.png")


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _pct(values: Sequence[float]) -> str:
    mean, std = _mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def _group(results: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def _shots_order(k: int | str) -> float:
    return math.inf if k == "all" else float(k)


def adaptation_table(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """No target labels: each method's target accuracy against source-only, and whether it helped."""
    rows = [r for r in results if r["target"] == target and r["kind"] in ("source_only", "method") and r["shots"] == 0]
    by_name = _group(rows, "name")
    base = [r["target_accuracy"] for r in by_name.get(("source_only",), [])]
    base_mean = statistics.fmean(base) if base else float("nan")
    lines = ["| method | target accuracy % | gain (points) | source accuracy % | verdict |", "|---|---|---|---|---|"]
    summary = {}
    order = ["source_only", *spec.methods]
    for name in order:
        group = by_name.get((name,))
        if not group:
            continue
        acc = [r["target_accuracy"] for r in group]
        mean, std = _mean_std(acc)
        gain = 100 * (mean - base_mean)
        if name == "source_only":
            verdict = "baseline"
        elif name == CONTROL:
            verdict = "control: same training on source only"
        else:
            verdict = "helps" if gain > 100 * max(std, 0.01) else ("does not help" if gain <= 0 else "within noise")
        label = {"source_only": "source only (no adaptation)", CONTROL: "source only, trained as long (control)"}.get(name, name)
        lines.append(f"| {label} | {_pct(acc)} | {gain:+.1f} | {_pct([r['source_accuracy'] for r in group])} | {verdict} |")
        summary[name] = {"mean": mean, "std": std, "gain": gain / 100}
    return "\n".join(lines), summary


def validator_selection(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """Per seed, the method the unsupervised validator picks versus the one target labels would pick."""
    rows = [r for r in results if r["target"] == target and r["kind"] in ("source_only", "method") and r["shots"] == 0]
    if len({r["name"] for r in rows}) < 2:  # nothing to choose between
        return "", {}
    seeds = sorted(_group(rows, "seed").items())
    if not seeds:
        return "", {}
    chosen, best = _validator_picks([group for _, group in seeds], spec.validator)
    agree = sum(map(operator.is_, chosen, best))
    picked_acc, best_acc = [r["target_accuracy"] for r in chosen], [r["target_accuracy"] for r in best]
    picks = [f"seed {seed}: picks **{c['name']}** ({100 * c['target_accuracy']:.1f}%), "
             f"target labels would pick **{b['name']}** ({100 * b['target_accuracy']:.1f}%)"
             for ((seed,), _), c, b in zip(seeds, chosen, best, strict=True)]
    n = len(picks)
    text = (f"Unsupervised validator `{spec.validator}` (computed on the unlabeled target split, no labels): agrees with the "
            f"label-based choice in {agree}/{n} seeds; its picks reach {_pct(picked_acc)}% versus {_pct(best_acc)}% for the "
            "best-by-labels choice.\n\n" + "\n".join(f"- {p}" for p in picks))
    comparison = validator_comparison(spec, {"no target labels": [group for _, group in seeds]})
    text += f"\n\n{comparison}" if comparison else ""
    return text, {"agreement": agree / n, "picked_accuracy": statistics.fmean(picked_acc)}


def _semi(name: str) -> str:
    return f"{name} + unlabeled target"


def _few_label_rows(spec: BenchmarkSpec) -> tuple[list[str], list[str]]:
    """Names of the scratch rows, and of the strategies run with the unlabeled target split too."""
    scratch = [f"scratch+{combo}" for combo in spec.with_unlabeled]
    strategies = [f"{s}+{combo}" for combo, names in spec.with_unlabeled.items() for s in names]
    return ["scratch", *scratch], strategies


def _with_unlabeled_note(spec: BenchmarkSpec) -> str:
    """What the rows named strategy+methods add to the labels."""

    def adds(combo: str) -> str:
        methods = combo.split("+")
        losses = losses_on_unlabeled(methods)
        parts = ["batch-norm statistics re-estimated on them before and after training"] if TARGET_BN in methods else []
        parts += [f"the {' + '.join(losses)} loss on {spec.few_shot.batch_size} unlabeled target images at every step"] if losses else []
        return f"`+{combo}`: " + " and ".join(parts)

    if not spec.with_unlabeled:
        return ""
    return ("\n\nRows named strategy+methods also use the unlabeled target images (" + "; ".join(map(adds, spec.with_unlabeled))
            + "); 'from scratch+methods' gets the same.")


def _few_label_name(name: str) -> str:
    return name.replace("scratch", "from scratch", 1) if name.startswith("scratch") else name


def _best(summary: dict, names: Sequence[str], k: int | str) -> tuple[str, float] | None:
    return max(((n, summary[n][str(k)]) for n in names if str(k) in summary.get(n, {})), key=lambda x: x[1], default=None)


def few_label_table(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """Target accuracy per strategy (and scratch) at every k; as extra rows, the `with_unlabeled` runs and
    adaptation methods given k labels per class (on top of the source's labels and the unlabeled
    target images)."""
    rows = [r for r in results if r["target"] == target and r["kind"] in ("strategy", "scratch")]
    semi = [{**r, "name": _semi(r["name"])} for r in results if r["target"] == target and r["kind"] == "method" and r["shots"] != 0]
    shots = sorted({r["shots"] for r in rows + semi}, key=_shots_order)
    groups = _group(rows + semi, "name", "shots")
    lines = ["| strategy | " + " | ".join(f"k = {k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    summary: dict = {}
    semi_names = [_semi(m) for m in spec.semi_supervised if any(r["name"] == _semi(m) for r in semi)]
    scratch, with_unlabeled = _few_label_rows(spec)
    for name in [*scratch, *spec.transfer_names(), *with_unlabeled, *semi_names]:
        cells = []
        for k in shots:
            group = groups.get((name, k), [])
            cells.append(_pct([r["target_accuracy"] for r in group]) if group else "")
            if group:
                summary.setdefault(name, {})[str(k)] = _mean_std([r["target_accuracy"] for r in group])[0]
        lines.append(f"| {_few_label_name(name)} | " + " | ".join(cells) + " |")
    verdicts = []
    # Like against like: labels only against scratch; with unlabeled target images against the better
    # scratch (plain, or with target batch-norm statistics: it may use the unlabeled images too).
    source = "from the source model (target labels only)" if spec.pretrained else "transfer strategy (target labels only)"
    comparisons = ((source, spec.strategies, scratch[:1]),
                   *((f"from {init} (target labels only)", [f"{init}{INIT_SEP}{s}" for s in spec.strategies], scratch[:1])
                     for init in spec.pretrained),
                   ("with unlabeled target images too", [*with_unlabeled, *semi_names], scratch))
    for k in shots:
        for label, names, baselines in comparisons:
            best = _best(summary, names, k)
            base = _best(summary, baselines, k)
            if base is None or best is None:
                continue
            diff = 100 * (best[1] - base[1])
            verdicts.append(f"- k = {k}, best {label}: **{best[0]}** {100 * best[1]:.1f}% vs {_few_label_name(base[0])} "
                            f"{100 * base[1]:.1f}% ({diff:+.1f} points{'' if diff >= -1 else '; transfer falls short here'})")
    return "\n".join(lines) + _with_unlabeled_note(spec) + "\n\n" + "\n".join(verdicts), summary


def _picks(groups: Sequence[list[dict]], score: Callable[[dict], object]) -> tuple[list[dict], list[dict]]:
    """Per group (one seed's candidates): the run `score` ranks highest, and the run target labels would pick."""
    return [max(g, key=score) for g in groups], [max(g, key=lambda r: r["target_accuracy"]) for g in groups]


def _validator_picks(groups: Sequence[list[dict]], validator: str) -> tuple[list[dict], list[dict]]:
    """Per group (one seed's candidates): the run the validator scores highest, and the run target labels would pick."""
    for r in (r for g in groups for r in g if validator not in r["validators"]):
        raise ValueError(f"cell {r['key']} was measured before the validator {validator!r} existed: delete its result "
                         "(cells/<key>-*.json in the benchmark cache) to re-run it, or pick another validator")
    return _picks(groups, lambda r: r["validators"][validator])


def _holdout_score(run: dict) -> tuple[float, float]:
    """A candidate's score on the labels held out from it: accuracy, ties broken by the lower loss."""
    return run["holdout"]["holdout_accuracy"], -run["holdout"]["holdout_loss"]


def _counts(picks: list[dict]) -> str:
    """How often each run name was picked, most often first (e.g. 'finetune x2, lp_ft x1')."""
    return ", ".join(f"{name} x{n}" for name, n in Counter(r["name"] for r in picks).most_common())


def _pick_cells(picks: list[dict], labels: list[dict]) -> str:
    return f"{sum(map(operator.is_, picks, labels))}/{len(picks)}, {_pct([r['target_accuracy'] for r in picks])}%"


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
        cells = [_pick_cells(*_validator_picks(groups, name)) for groups in columns.values()]
        lines.append(f"| {name}{' (used)' if name == spec.validator else ''} | " + " | ".join(cells) + " |")
    if any(held.values()):
        cells = [_pick_cells(*_picks(groups, _holdout_score)) if held[c] else "" for c, groups in columns.items()]
        lines.append(f"| held-out target labels ({spec.holdout_fraction:.0%} a class, at least 1) | " + " | ".join(cells) + " |")
    return ("Every validator's picks, for comparison (seeds where the pick is the label-based one, and the picks' "
            "target accuracy):\n\n" + "\n".join(lines))


def strategy_selection(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """Few labels, with the transfer strategy the unsupervised validator picks per k and seed (labels
    only, at few_shot.lr), against scratch of the same seeds; the label-based pick shown beside it."""
    if len(spec.strategies) < 2:  # nothing to choose between
        return "", {}
    rows = [r for r in results if r["target"] == target and r["name"] in ("scratch", *spec.strategies)]
    held_out = {(r["name"].removesuffix(HOLDOUT_TAG), r["shots"], r["seed"]): r
                for r in results if r["target"] == target and r["kind"] == "holdout"}
    lines, summary, columns = [], {}, {}
    for k in sorted({r["shots"] for r in rows}, key=_shots_order):
        seeds = [g for g in _group([r for r in rows if r["shots"] == k], "seed").values()
                 if len(g) == len(spec.strategies) + 1]
        if not seeds:
            continue
        candidates = [[r for r in g if r["name"] != "scratch"] for g in seeds]
        if all((r["name"], k, r["seed"]) in held_out for g in candidates for r in g):
            candidates = [[{**r, "holdout": held_out[r["name"], k, r["seed"]]} for r in g] for g in candidates]
        columns[f"k = {k}"] = candidates
        picks, labels = _validator_picks(candidates, spec.validator)
        agree = sum(map(operator.is_, picks, labels))
        scratch = [r["target_accuracy"] for g in seeds for r in g if r["name"] == "scratch"]
        best = [r["target_accuracy"] for r in labels]
        picked = [r["target_accuracy"] for r in picks]
        diff = 100 * (statistics.fmean(picked) - statistics.fmean(scratch))
        lines.append(f"- k = {k}: the picked strategy reaches {_pct(picked)}% ({_counts(picks)}) vs from scratch {_pct(scratch)}% "
                     f"({diff:+.1f} points); the pick is the label-based one in {agree}/{len(seeds)} seeds, which reaches {_pct(best)}%")
        summary[str(k)] = {"picked": statistics.fmean(picked), "scratch": statistics.fmean(scratch), "agreement": agree / len(seeds),
                           "label_based": statistics.fmean(best)}
        if "holdout" in candidates[0][0]:
            held, _ = _picks(candidates, _holdout_score)
            agree_held = sum(map(operator.is_, held, labels))
            accuracy = [r["target_accuracy"] for r in held]
            lines.append(f"  - picked by held-out target labels instead: {_pct(accuracy)}% ({_counts(held)}), the label-based one in "
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
    rows = [{**r, "base": few_label_parts(r["name"])[0], "lr": tried_lr(r["name"]) or spec.few_shot.lr} for r in results
            if r["target"] == target and r["kind"] in ("strategy", "scratch") and not few_label_parts(r["name"])[1]]
    text = ["### Learning rate picked without target labels", "",
            f"Every few-label run on labels only also trained at each of {', '.join(f'{lr:g}' for lr in lrs)}. Per strategy, k and "
            f"seed, the validator `{spec.validator}` picks one from the unlabeled target images; the pick target labels would make "
            "is shown for comparison, not used."]
    summary: dict = {}
    for k in sorted({r["shots"] for r in rows}, key=_shots_order):
        lines = ["| strategy | " + " | ".join(f"lr {lr:g}" for lr in lrs) + " | picked by the validator | picks agreeing with labels | "
                 "learning rates picked |", "|---|" + "---|" * (len(lrs) + 3)]
        for name in ["scratch", *spec.strategies]:
            seeds = [g for g in _group([r for r in rows if r["base"] == name and r["shots"] == k], "seed").values() if len(g) == len(lrs)]
            if not seeds:
                continue
            picks, labels = _validator_picks(seeds, spec.validator)
            agree = sum(map(operator.is_, picks, labels))
            per_lr = {lr: [r["target_accuracy"] for g in seeds for r in g if r["lr"] == lr] for lr in lrs}
            picked = [r["target_accuracy"] for r in picks]
            counts = ", ".join(f"{lr:g} x{n}" for lr in lrs if (n := sum(r["lr"] == lr for r in picks)))
            lines.append(f"| {_few_label_name(name)} | " + " | ".join(_pct(a) for a in per_lr.values())
                         + f" | {_pct(picked)} | {agree}/{len(seeds)} | {counts} |")
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


def time_to_accuracy(results: list[dict], target: str, shots: int | str = 1, strategy: str = "finetune") -> dict:
    """Per seed: when scratch reached its best accuracy, and when `strategy` reached that accuracy
    (seconds and steps; None where it never did), with their ratio."""
    rows = [r for r in results if r["target"] == target and r["shots"] == shots and r["name"] in ("scratch", strategy)]
    out = []
    for (seed,), group in sorted(_group(rows, "seed").items()):
        by = {r["name"]: r for r in group}
        if "scratch" not in by or strategy not in by:
            continue
        best = max(p["accuracy"] for p in by["scratch"]["curve"])
        scratch = next(p for p in by["scratch"]["curve"] if p["accuracy"] >= best)
        reached = next((p for p in by[strategy]["curve"] if p["accuracy"] >= best), None)
        out.append({"seed": seed, "scratch_best": best, "scratch_seconds": scratch["seconds"], "scratch_steps": scratch["steps"],
                    "transfer_seconds": reached and reached["seconds"], "transfer_steps": reached and reached["steps"],
                    "ratio": _ratio(reached and reached["seconds"], scratch["seconds"]),
                    "step_ratio": _ratio(reached and reached["steps"], scratch["steps"])})
    return {"per_seed": out}


def _ratio(transfer: float | None, scratch: float) -> float | None:
    """Transfer's time over scratch's; None: transfer never reached scratch's best (or took time to reach
    what scratch had at its start, where no ratio is defined)."""
    if transfer is None:
        return None
    return transfer / scratch if scratch else (0.0 if transfer == 0 else None)


def _finite(value: float) -> float | None:
    return None if math.isinf(value) else value


def time_to_accuracy_summary(results: list[dict], target: str, strategies: Sequence[str], shots: int | str = 1) -> dict:
    """Per strategy, over seeds: the median and worst time ratio to scratch's best, the median step ratio,
    and in how many seeds transfer needed at most a fifth of scratch's time."""
    summary = {}
    for strategy in strategies:
        rows = time_to_accuracy(results, target, shots, strategy)["per_seed"]
        if rows:  # never reaching ranks as infinitely slow
            ratios = [math.inf if r["ratio"] is None else r["ratio"] for r in rows]
            steps = [math.inf if r["step_ratio"] is None else r["step_ratio"] for r in rows]
            summary[strategy] = {"median_ratio": _finite(statistics.median(ratios)), "worst_ratio": _finite(max(ratios)),
                                 "median_step_ratio": _finite(statistics.median(steps)),
                                 "within_fifth": sum(r <= 0.2 for r in ratios), "seeds": len(rows)}
    return summary


def _time_text(summary: dict, tta: dict, target: str, strategy: str, shots: int | str) -> str:
    if not summary:
        return ""
    lines = [f"Time to accuracy on {target} with k = {shots}: training time each strategy took to reach scratch's best accuracy "
             "(of the same seed), over scratch's time to reach it. Seconds are measured with cells running side by side on shared "
             "cores and evaluation excluded, so small ones are noisy; steps cost the same in both runs (same network and batch) and "
             "are exact, but only known at the evaluation points.", "",
             "| strategy | median time ratio | worst seed | seeds within 1/5 | median step ratio |", "|---|---|---|---|---|"]
    for name, s in summary.items():
        lines.append(f"| {name} | {_show_ratio(s['median_ratio'])} | {_show_ratio(s['worst_ratio'])} | {s['within_fifth']}/{s['seeds']} | "
                     f"{_show_ratio(s['median_step_ratio'])} |")
    lines += ["", f"Per seed, {strategy}:", ""] if tta["per_seed"] else []
    for r in tta["per_seed"]:
        if r["transfer_seconds"] is None:
            lines.append(f"- seed {r['seed']}: {strategy} never reached scratch's best {100 * r['scratch_best']:.1f}%")
        else:
            lines.append(f"- seed {r['seed']}: scratch reached its best {100 * r['scratch_best']:.1f}% after {r['scratch_seconds']:.1f} s "
                         f"({r['scratch_steps']} steps); {strategy} reached it after {r['transfer_seconds']:.1f} s "
                         f"({r['transfer_steps']} steps), ratio {_show_ratio(r['ratio'])}")
    return "\n".join(lines)


def starting_points(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """With `pretrained` starting points: per k, each transfer run's mean gain over scratch and how soon it
    reaches scratch's best accuracy (time and step ratios, as `time_to_accuracy`), from the source model
    and from each pretrained start side by side."""
    if not spec.pretrained:
        return "", {}
    names = spec.transfer_names()
    rows = [r for r in results if r["target"] == target and r["kind"] in ("strategy", "scratch")]
    shots = sorted({r["shots"] for r in rows}, key=_shots_order)
    accuracy = {key: statistics.fmean(r["target_accuracy"] for r in g) for key, g in _group(rows, "name", "shots").items()}
    lines = ["| start: strategy | " + " | ".join(f"k = {k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    summary: dict = {}
    for name in names:
        cells = []
        for k in shots:
            speed = time_to_accuracy_summary(results, target, [name], k).get(name)
            if speed is None or ("scratch", k) not in accuracy:
                cells.append("")
                continue
            gain = accuracy[name, k] - accuracy["scratch", k]
            summary.setdefault(str(k), {})[name] = {"gain": gain, **speed}
            cells.append(f"{100 * gain:+.1f} points; time {_show_ratio(speed['median_ratio'])} (worst {_show_ratio(speed['worst_ratio'])}), "
                         f"steps {_show_ratio(speed['median_step_ratio'])}")
        init = name.partition(INIT_SEP)[0] if INIT_SEP in name else "source"
        lines.append(f"| {init}: {few_label_parts(name)[0]} | " + " | ".join(cells) + " |")
    starts = "; ".join(f"`{init}`: `{uri}`, its weights with a new head" for init, uri in spec.pretrained.items())
    text = ("### Starting points against scratch at every k\n\n"
            f"Each strategy trains from the source model (`source`, trained on {', '.join(sorted({p.source for p in spec.pairs}))} as above) "
            f"and from pretrained weights ({starts}); scratch (fresh weights) is the baseline. Per cell: the gain in mean "
            "target accuracy over scratch; the training time the run took to reach scratch's best accuracy of the same seed, over "
            "the time scratch took to reach it (median over seeds, worst seed in brackets; never: not reached within the budget); "
            "the same in optimizer steps (exact, but known only at the evaluation points). Seconds are measured with cells "
            "running side by side on shared cores, evaluation excluded.\n\n" + "\n".join(lines))
    return text, summary


def _show_ratio(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> None:  # noqa: ANN001 - a matplotlib figure
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    _plt().close(fig)


def plot_label_efficiency(spec: BenchmarkSpec, results: list[dict], path: Path) -> Path:
    """Target accuracy versus labels per class: each strategy and scratch, with the no-label results at k = 0."""
    plt = _plt()
    targets = [p.target for p in spec.pairs]
    fig, axes = plt.subplots(1, len(targets), figsize=(6 * len(targets), 6), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        rows = [r for r in results if r["target"] == target and r["kind"] in ("strategy", "scratch")]
        shots = sorted({r["shots"] for r in rows}, key=_shots_order)
        xs = list(range(1, len(shots) + 1))
        scratch, with_unlabeled = _few_label_rows(spec)
        for name in [*scratch, *spec.transfer_names(), *with_unlabeled]:
            means, stds = [], []
            for k in shots:
                acc = [r["target_accuracy"] for r in rows if r["name"] == name and r["shots"] == k]
                m, s = _mean_std(acc) if acc else (float("nan"), 0.0)
                means.append(100 * m)
                stds.append(100 * s)
            style = {"color": "black", "linestyle": "--", "linewidth": 2.5, "marker": "o"} if name.startswith("scratch") else {"marker": "o"}
            combo = "+".join(few_label_parts(name)[1])
            if combo:  # dotted, a marker per combination: these also use the unlabeled target images
                style |= {"linestyle": ":", "marker": "s^Dvp"[list(spec.with_unlabeled).index(combo) % 5]}
            ax.errorbar(xs, means, yerr=stds, capsize=3, label=_few_label_name(name), **style)
        zero = _group([r for r in results if r["target"] == target and r["shots"] == 0], "name")
        if ("source_only",) in zero:
            ax.axhline(100 * statistics.fmean(r["target_accuracy"] for r in zero[("source_only",)]), color="grey", linestyle=":",
                       label="source only, 0 labels")
        methods = {n[0]: statistics.fmean(r["target_accuracy"] for r in g) for n, g in zero.items() if n[0] not in ("source_only", CONTROL)}
        if methods:
            best = max(methods, key=methods.get)
            ax.axhline(100 * methods[best], color="tab:green", linestyle="-.", label=f"best no-label method ({best})")
        ax.set(xticks=xs, xticklabels=[str(k) for k in shots], xlabel="labeled target images per class",
               ylabel="target test accuracy %", title=f"mnist -> {target}", ylim=(0, 100))
        ax.grid(alpha=0.3)
        # Below the panel: inside it, the legend would cover curves.
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_time_to_accuracy(spec: BenchmarkSpec, results: list[dict], path: Path, shots: Sequence[int | str] = (1,)) -> Path:
    """Target accuracy against training seconds, every seed, a row of panels per k in `shots`: scratch,
    fine-tuning (from the source model and from each of `pretrained`), and the strategy with the best
    mean accuracy at that k (colours as in the label-efficiency plot)."""
    plt = _plt()
    targets = [p.target for p in spec.pairs]
    names = spec.transfer_names()
    fig, axes = plt.subplots(len(shots), len(targets), figsize=(6 * len(targets), 4.8 * len(shots)), squeeze=False)
    for ax, (k, target) in zip(axes.flat, [(k, t) for k in shots for t in targets], strict=True):
        rows = [r for r in results if r["target"] == target and r["shots"] == k]
        means = {n: statistics.fmean(r["target_accuracy"] for r in g) for (n,), g in _group(rows, "name").items() if n in names}
        best = max(means, key=means.get, default=None)
        finetunes = ["finetune", *(f"{init}{INIT_SEP}finetune" for init in spec.pretrained)]
        for name in dict.fromkeys(["scratch", *(n for n in (*finetunes, best) if n in means)]):
            color = "black" if name == "scratch" else f"C{names.index(name)}"
            label = "from scratch" if name == "scratch" else f"transfer: {name}" + (" (best here)" if name == best else "")
            for i, r in enumerate(x for x in rows if x["name"] == name):
                ax.plot([p["seconds"] for p in r["curve"]], [100 * p["accuracy"] for p in r["curve"]], color=color, marker=".",
                        alpha=0.8, label=label if i == 0 else None)
        ax.set(xlabel="training seconds (2-core CPU)", ylabel="target test accuracy %", title=f"mnist -> {target}, k = {k}",
               ylim=(0, 100))
        ax.set_xscale("symlog", linthresh=1.0)
        ax.set_xlim(left=0)  # symlog pads below zero, where no time lies
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.tight_layout()
    _save(fig, path)
    return path


def plot_features(spec: BenchmarkSpec, results: list[dict], path: Path, models: dict[str, tuple[Path, Path]]) -> Path:
    """2-D PCA of source and target test features, before (source model) and after (adapted model) adaptation.

    `models`: target -> (source model file, adapted model file).
    """
    import torch

    from adaptflow.data import load_split
    from adaptflow.models import load_checkpoint
    from adaptflow.training import Normalizer

    plt = _plt()
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 4.4 * len(models)), squeeze=False)
    for row, (target, (before, after)) in enumerate(models.items()):
        source = next(p.source for p in spec.pairs if p.target == target)
        data = _data(spec, source, target)
        src = load_split(data, source, "test")
        tgt = load_split(data, target, "test", src.classes)
        g = torch.Generator().manual_seed(0)
        src_idx, tgt_idx = torch.randperm(len(src), generator=g)[:400], torch.randperm(len(tgt), generator=g)[:400]
        normalize = Normalizer(torch.device("cpu"))
        for col, (title, file) in enumerate((("before adaptation (source model)", before), ("after adaptation", after))):
            model, _ = load_checkpoint(file)
            model.eval()
            with torch.no_grad():
                feats = torch.cat([model.features(normalize(src.images[src_idx])), model.features(normalize(tgt.images[tgt_idx]))])
            centered = feats - feats.mean(0)
            _, _, v = torch.linalg.svd(centered, full_matrices=False)
            xy = (centered @ v[:2].T).numpy()
            ax = axes[row][col]
            n = len(src_idx)
            ax.scatter(xy[:n, 0], xy[:n, 1], c=src.labels[src_idx].numpy(), cmap="tab10", marker="o", s=8, alpha=0.6, label=f"source ({source})")
            ax.scatter(xy[n:, 0], xy[n:, 1], c=tgt.labels[tgt_idx].numpy(), cmap="tab10", marker="x", s=12, alpha=0.8, label=f"target ({target})")
            ax.set(title=f"{target}: {title}" + ("" if col == 0 else f"\n{Path(file).stem}"), xticks=[], yticks=[])
            ax.legend(fontsize=7, loc="upper right")
    fig.suptitle("PCA of backbone features (colour: class; o source, x target)")
    fig.tight_layout()
    _save(fig, path)
    return path


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
        f"runs `{init}{INIT_SEP}<strategy>` from `{uri}` (its weights, a new head)" for init, uri in spec.pretrained.items())
        + "; runs named by the strategy alone start from the source model.") if spec.pretrained else ""
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
        md += [_time_text(speed, tta, target, "finetune", 1), ""]
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
        paths["features"] = plot_features(spec, results, output / "features.png", models)
    md += ["## Plots", ""]
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

"""The report's accuracy tables: adaptation without target labels against source-only, and few labels
(each strategy and scratch at every k, with the runs that also use the unlabeled target split)."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from adaptflow.benchmark.grid import CONTROL, SCRATCH, FewLabel, combo_methods
from adaptflow.benchmark.spec import TARGET_BN, BenchmarkSpec, losses_on_unlabeled
from adaptflow.benchmark.stats import group_by, mean_std, pct, shots_order


def adaptation_table(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """No target labels: each method's target accuracy against source-only, and whether it helped."""
    rows = [r for r in results if r["target"] == target and r["kind"] in ("source_only", "method") and r["shots"] == 0]
    by_name = group_by(rows, "name")
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
        mean, std = mean_std(acc)
        gain = 100 * (mean - base_mean)
        if name == "source_only":
            verdict = "baseline"
        elif name == CONTROL:
            verdict = "control: same training on source only"
        else:
            verdict = "helps" if gain > 100 * max(std, 0.01) else ("does not help" if gain <= 0 else "within noise")
        label = {"source_only": "source only (no adaptation)", CONTROL: "source only, trained as long (control)"}.get(name, name)
        lines.append(f"| {label} | {pct(acc)} | {gain:+.1f} | {pct([r['source_accuracy'] for r in group])} | {verdict} |")
        summary[name] = {"mean": mean, "std": std, "gain": gain / 100}
    return "\n".join(lines), summary


def _semi(name: str) -> str:
    return f"{name} + unlabeled target"


def few_label_rows(spec: BenchmarkSpec) -> tuple[list[str], list[str]]:
    """Names of the scratch rows, and of the strategies run with the unlabeled target split too."""
    scratch = [FewLabel(SCRATCH, combo_methods(combo)).name for combo in spec.with_unlabeled]
    strategies = [FewLabel(s, combo_methods(combo)).name for combo, names in spec.with_unlabeled.items() for s in names]
    return [SCRATCH, *scratch], strategies


def _with_unlabeled_note(spec: BenchmarkSpec) -> str:
    """What the rows named strategy+methods add to the labels."""

    def adds(combo: str) -> str:
        methods = combo_methods(combo)
        losses = losses_on_unlabeled(methods)
        parts = ["batch-norm statistics re-estimated on them before and after training"] if TARGET_BN in methods else []
        parts += [f"the {' + '.join(losses)} loss on {spec.few_shot.batch_size} unlabeled target images at every step"] if losses else []
        return f"`+{combo}`: " + " and ".join(parts)

    if not spec.with_unlabeled:
        return ""
    return ("\n\nRows named strategy+methods also use the unlabeled target images (" + "; ".join(map(adds, spec.with_unlabeled))
            + "); 'from scratch+methods' gets the same.")


def row_label(name: str) -> str:
    """A few-label row's label: scratch runs read `from scratch`."""
    return name.replace("scratch", "from scratch", 1) if name.startswith("scratch") else name


def _best(summary: dict, names: Sequence[str], k: int | str) -> tuple[str, float] | None:
    return max(((n, summary[n][str(k)]) for n in names if str(k) in summary.get(n, {})), key=lambda x: x[1], default=None)


def few_label_table(spec: BenchmarkSpec, results: list[dict], target: str) -> tuple[str, dict]:
    """Target accuracy per strategy (and scratch) at every k; as extra rows, the `with_unlabeled` runs and
    adaptation methods given k labels per class (on top of the source's labels and the unlabeled
    target images)."""
    rows = [r for r in results if r["target"] == target and r["kind"] in ("strategy", "scratch")]
    semi = [{**r, "name": _semi(r["name"])} for r in results if r["target"] == target and r["kind"] == "method" and r["shots"] != 0]
    shots = sorted({r["shots"] for r in rows + semi}, key=shots_order)
    groups = group_by(rows + semi, "name", "shots")
    lines = ["| strategy | " + " | ".join(f"k = {k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    summary: dict = {}
    semi_names = [_semi(m) for m in spec.semi_supervised if any(r["name"] == _semi(m) for r in semi)]
    scratch, with_unlabeled = few_label_rows(spec)
    for name in [*scratch, *spec.transfer_names(), *with_unlabeled, *semi_names]:
        cells = []
        for k in shots:
            group = groups.get((name, k), [])
            cells.append(pct([r["target_accuracy"] for r in group]) if group else "")
            if group:
                summary.setdefault(name, {})[str(k)] = mean_std([r["target_accuracy"] for r in group])[0]
        lines.append(f"| {row_label(name)} | " + " | ".join(cells) + " |")
    verdicts = []
    # Like against like: labels only against scratch; with unlabeled target images against the better
    # scratch (plain, or with target batch-norm statistics: it may use the unlabeled images too).
    source = "from the source model (target labels only)" if spec.pretrained else "transfer strategy (target labels only)"
    comparisons = ((source, spec.strategies, scratch[:1]),
                   *((f"from {init} (target labels only)", [FewLabel(s, init=init).name for s in spec.strategies], scratch[:1])
                     for init in spec.pretrained),
                   ("with unlabeled target images too", [*with_unlabeled, *semi_names], scratch))
    for k in shots:
        for label, names, baselines in comparisons:
            best = _best(summary, names, k)
            base = _best(summary, baselines, k)
            if base is None or best is None:
                continue
            diff = 100 * (best[1] - base[1])
            verdicts.append(f"- k = {k}, best {label}: **{best[0]}** {100 * best[1]:.1f}% vs {row_label(base[0])} "
                            f"{100 * base[1]:.1f}% ({diff:+.1f} points{'' if diff >= -1 else '; transfer falls short here'})")
    return "\n".join(lines) + _with_unlabeled_note(spec) + "\n\n" + "\n".join(verdicts), summary

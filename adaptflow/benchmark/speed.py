"""Time to accuracy: when a transfer run reaches the best accuracy scratch reached (seconds and
optimizer steps, per seed and over seeds), and each starting point against scratch at every k."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from adaptflow.benchmark.spec import BenchmarkSpec
from adaptflow.benchmark.stats import group_by, shots_order


def time_to_accuracy(results: list[dict], target: str, shots: int | str = 1, strategy: str = "finetune") -> dict:
    """Per seed: when scratch reached its best accuracy, and when `strategy` reached that accuracy
    (seconds and steps; None where it never did), with their ratio."""
    rows = [r for r in results if r["target"] == target and r["shots"] == shots and r["name"] in ("scratch", strategy)]
    out = []
    for (seed,), group in sorted(group_by(rows, "seed").items()):
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


def time_text(summary: dict, tta: dict, target: str, strategy: str, shots: int | str) -> str:
    """The time-to-accuracy table of every strategy (`summary`) and the per-seed lines of `strategy` (`tta`) at k = `shots`."""
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
    rows = [r for r in results if r["target"] == target and r["kind"] in ("strategy", "scratch")]
    shots = sorted({r["shots"] for r in rows}, key=shots_order)
    accuracy = {key: statistics.fmean(r["target_accuracy"] for r in g) for key, g in group_by(rows, "name", "shots").items()}
    lines = ["| start: strategy | " + " | ".join(f"k = {k}" for k in shots) + " |", "|---|" + "---|" * len(shots)]
    summary: dict = {}
    for run in spec.transfer_runs():
        name = run.name
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
        lines.append(f"| {run.init or 'source'}: {run.strategy} | " + " | ".join(cells) + " |")
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

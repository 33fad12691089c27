"""Statistics over finished cells (result dicts): grouping, mean ± std, and picks (per group of
candidates, the run a score ranks highest, beside the run target labels would pick)."""

from __future__ import annotations

import math
import operator
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def pct(values: Sequence[float]) -> str:
    """Accuracies as the report shows them: mean ± std in percent."""
    mean, std = mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


def group_by(results: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Results by the values of `keys` (a tuple per group, in the order they come)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in results:
        groups[tuple(r[k] for k in keys)].append(r)
    return groups


def shots_order(k: int | str) -> float:
    """Sort key of labels per class: `all` after every number."""
    return math.inf if k == "all" else float(k)


def best_by(groups: Sequence[list[dict]], score: Callable[[dict], object]) -> tuple[list[dict], list[dict]]:
    """Per group (one seed's candidates): the run `score` ranks highest, and the run target labels would pick."""
    return [max(g, key=score) for g in groups], [max(g, key=lambda r: r["target_accuracy"]) for g in groups]


def validator_picks(groups: Sequence[list[dict]], validator: str) -> tuple[list[dict], list[dict]]:
    """Per group (one seed's candidates): the run the validator scores highest, and the run target labels would pick."""
    for r in (r for g in groups for r in g if validator not in r["validators"]):
        raise ValueError(f"cell {r['key']} was measured before the validator {validator!r} existed: delete its result "
                         "(cells/<key>-*.json in the benchmark cache) to re-run it, or pick another validator")
    return best_by(groups, lambda r: r["validators"][validator])


def holdout_score(run: dict) -> tuple[float, float]:
    """A candidate's score on the labels held out from it: accuracy, ties broken by the lower loss."""
    return run["holdout"]["holdout_accuracy"], -run["holdout"]["holdout_loss"]


def pick_counts(picks: list[dict]) -> str:
    """How often each run name was picked, most often first (e.g. 'finetune x2, lp_ft x1')."""
    return ", ".join(f"{name} x{n}" for name, n in Counter(r["name"] for r in picks).most_common())


def pick_summary(picks: list[dict], labels: list[dict]) -> str:
    """How many picks are the label-based ones, and what the picks reach (e.g. '1/2, 82.0 ± 2.8%')."""
    return f"{sum(map(operator.is_, picks, labels))}/{len(picks)}, {pct([r['target_accuracy'] for r in picks])}%"

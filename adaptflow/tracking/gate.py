"""The champion/challenger gate as policy: from the champion's and the challenger's metrics and the registry
config, a decision and its reason. Pure: no MLflow here (`adaptflow.tracking.registry` reads the champion and
moves the aliases as decided), so every rule is testable on plain numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from adaptflow.config import RegistryConfig

CHAMPION = "champion"
CHALLENGER = "challenger"
PROMOTED = "promoted"
KEPT = "kept champion"


@dataclass(frozen=True)
class Champion:
    """The version the challenger is gated against: its number, its metrics (measured again on today's test sets,
    or as recorded when it was registered) and the digest of the validation images it held out ('' for none)."""

    version: str
    metrics: dict[str, float] = field(default_factory=dict)
    validation_digest: str = ""


@dataclass(frozen=True)
class Decision:
    """Which alias the challenger takes, the decision in words (`promoted` / `kept champion`) and why."""

    alias: str
    decision: str
    reason: str

    @property
    def promoted(self) -> bool:
        return self.alias == CHAMPION


def require_metric(cfg: RegistryConfig, metrics: dict[str, float]) -> None:
    """A KeyError naming the fix when the gated metric is not among the challenger's metrics."""
    if cfg.metric not in metrics:
        raise KeyError(f"registry.metric '{cfg.metric}' is not among the evaluated metrics {sorted(metrics)}; fix registry.metric")


def decide(cfg: RegistryConfig, version: str, metrics: dict[str, float], champion: Champion | None,
           validation_digest: str = "") -> Decision:
    """Promote `version` if there is no champion, or if it beats the champion by more than `min_delta` on `metric`
    (higher is better) and loses at most `guard_tolerance` on `guard_metric`; otherwise it becomes the challenger.

    A champion without the metric counts as -inf (any challenger beats it); a guard metric either side lacks is not
    checked. Metrics of the target's validation set (`target_val_*`) compare the two only when the champion held out
    the same images (its `validation_digest` is `validation_digest`): a champion that trained on them would win unfairly.
    """
    require_metric(cfg, metrics)
    if champion is None:
        return Decision(CHAMPION, PROMOTED, "no champion yet")
    old = champion.metrics
    new, ref = float(metrics[cfg.metric]), old.get(cfg.metric, float("-inf"))
    name = f"champion v{champion.version}"
    guard = cfg.guard_metric
    guarded = bool(guard) and guard in metrics and guard in old
    on_validation = [m for m in (cfg.metric, guard) if m and m.startswith("target_val_")]
    if on_validation and (not validation_digest or champion.validation_digest != validation_digest):
        reason = (f"{name} did not hold out this validation set (it may have trained on its images), so {' and '.join(on_validation)} "
                  f"cannot compare the two: gate this run on target_accuracy, or promote it by hand (adaptflow registry promote {version})")
    elif not new > ref + cfg.min_delta:
        reason = f"{cfg.metric} {new:.4f} does not beat {name} ({ref:.4f}) by more than {cfg.min_delta}"
    elif guarded and metrics[guard] < old[guard] - cfg.guard_tolerance:
        reason = (f"{cfg.metric} {new:.4f} beats {name} ({ref:.4f}) but {guard} fell from {old[guard]:.4f} to "
                  f"{metrics[guard]:.4f}, more than the tolerated {cfg.guard_tolerance}")
    else:
        reason = f"{cfg.metric} {new:.4f} beats {name} ({ref:.4f}) by more than {cfg.min_delta}"
        if guarded:
            reason += f"; {guard} {metrics[guard]:.4f} (champion {old[guard]:.4f}, tolerance {cfg.guard_tolerance})"
        return Decision(CHAMPION, PROMOTED, reason)
    return Decision(CHALLENGER, KEPT, reason)

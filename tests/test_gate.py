"""The champion/challenger gate as policy: plain metrics in, a decision and its reason out, no MLflow."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adaptflow.config import RegistryConfig
from adaptflow.tracking.gate import CHALLENGER, CHAMPION, Champion, Decision, decide

REG = RegistryConfig(model_name="digits")  # target_accuracy, min_delta 0, guard source_accuracy within 0.05
KEPT = (CHALLENGER, "kept champion")


def _champion(accuracy: float, source: float = 0.97, version: str = "3", **more: float) -> Champion:
    return Champion(version, {"target_accuracy": accuracy, "source_accuracy": source, **more})


def test_the_first_version_becomes_champion() -> None:
    assert decide(REG, "1", {"target_accuracy": 0.1}, None) == Decision(CHAMPION, "promoted", "no champion yet")


def test_a_better_challenger_is_promoted_and_the_reason_shows_both_metrics() -> None:
    decision = decide(REG, "4", {"target_accuracy": 0.9, "source_accuracy": 0.95}, _champion(0.8))
    assert decision.promoted and (decision.alias, decision.decision) == (CHAMPION, "promoted")
    assert decision.reason == ("target_accuracy 0.9000 beats champion v3 (0.8000) by more than 0.0; "
                               "source_accuracy 0.9500 (champion 0.9700, tolerance 0.05)")


def test_a_worse_challenger_stays_challenger() -> None:
    decision = decide(REG, "4", {"target_accuracy": 0.7, "source_accuracy": 0.99}, _champion(0.8))
    assert not decision.promoted and (decision.alias, decision.decision) == KEPT
    assert decision.reason == "target_accuracy 0.7000 does not beat champion v3 (0.8000) by more than 0.0"


def test_a_tie_keeps_the_champion() -> None:
    decision = decide(REG, "4", {"target_accuracy": 0.8, "source_accuracy": 0.97}, _champion(0.8))
    assert (decision.alias, decision.decision) == KEPT
    assert decision.reason == "target_accuracy 0.8000 does not beat champion v3 (0.8000) by more than 0.0"


def test_min_delta_is_the_margin_to_beat() -> None:
    reg = RegistryConfig(model_name="digits", min_delta=0.05)
    assert decide(reg, "4", {"target_accuracy": 0.83}, _champion(0.8)).reason == (
        "target_accuracy 0.8300 does not beat champion v3 (0.8000) by more than 0.05")
    assert decide(reg, "4", {"target_accuracy": 0.86}, _champion(0.8)).promoted


def test_a_challenger_that_forgets_the_source_domain_is_kept_out() -> None:
    decision = decide(REG, "4", {"target_accuracy": 0.9, "source_accuracy": 0.90}, _champion(0.8, source=0.97))
    assert (decision.alias, decision.decision) == KEPT
    assert decision.reason == ("target_accuracy 0.9000 beats champion v3 (0.8000) but source_accuracy fell from 0.9700 to "
                               "0.9000, more than the tolerated 0.05")
    assert decide(REG, "4", {"target_accuracy": 0.9, "source_accuracy": 0.93}, _champion(0.8, source=0.97)).promoted


def test_a_missing_metric() -> None:
    with pytest.raises(KeyError, match=r"registry.metric 'target_accuracy' is not among the evaluated metrics \['accuracy'\]; "
                                       "fix registry.metric"):
        decide(REG, "4", {"accuracy": 0.9}, _champion(0.8))
    # a champion registered without the metric loses to any value of it
    untested = decide(REG, "4", {"target_accuracy": 0.1}, Champion("3", {"source_accuracy": 0.97}))
    assert untested.promoted and untested.reason == "target_accuracy 0.1000 beats champion v3 (-inf) by more than 0.0"
    # a guard metric that either side lacks is not checked, and the reason does not mention it
    unguarded = decide(REG, "4", {"target_accuracy": 0.9}, _champion(0.8, source=0.99))
    assert unguarded.promoted and unguarded.reason == "target_accuracy 0.9000 beats champion v3 (0.8000) by more than 0.0"


def test_the_configured_metric_decides_and_higher_is_better() -> None:
    reg = RegistryConfig(model_name="boxes", metric="target_map50", guard_metric=None)
    champion = Champion("7", {"target_map50": 0.40, "target_accuracy": 0.9})
    # better on another metric, worse on the configured one: kept out
    lower = decide(reg, "8", {"target_map50": 0.35, "target_accuracy": 0.99}, champion)
    assert (lower.alias, lower.decision) == KEPT
    assert lower.reason == "target_map50 0.3500 does not beat champion v7 (0.4000) by more than 0.0"
    higher = decide(reg, "8", {"target_map50": 0.45, "target_accuracy": 0.5}, champion)
    assert higher.promoted and higher.reason == "target_map50 0.4500 beats champion v7 (0.4000) by more than 0.0"


def test_validation_metrics_compare_only_versions_that_held_out_the_same_images() -> None:
    reg = RegistryConfig(model_name="digits", metric="target_val_accuracy", guard_metric=None)
    unfair = ("champion v2 did not hold out this validation set (it may have trained on its images), so target_val_accuracy "
              "cannot compare the two: gate this run on target_accuracy, or promote it by hand (adaptflow registry promote 5)")
    for held, ours in (("", "abc"), ("xyz", "abc"), ("abc", "")):
        decision = decide(reg, "5", {"target_val_accuracy": 0.99}, Champion("2", {"target_val_accuracy": 0.5}, held), ours)
        assert (decision.alias, decision.decision, decision.reason) == (*KEPT, unfair), (held, ours)
    same = decide(reg, "5", {"target_val_accuracy": 0.99}, Champion("2", {"target_val_accuracy": 0.5}, "abc"), "abc")
    assert same.promoted and same.reason == "target_val_accuracy 0.9900 beats champion v2 (0.5000) by more than 0.0"


def test_the_gate_policy_imports_no_mlflow() -> None:
    code = "import sys, adaptflow.tracking.gate; assert 'mlflow' not in sys.modules, 'mlflow imported'"
    subprocess.run([sys.executable, "-c", code], check=True)

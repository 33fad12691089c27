"""Metrics from the confusion matrix agree with scikit-learn's definitions."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import accuracy_score, f1_score, log_loss, precision_recall_fscore_support

from adaptflow.metrics import classification_report, rank


def test_report_matches_scikit_learn() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 5, (300,), generator=g)
    logits = torch.randn(300, 5, generator=g) + 2 * torch.nn.functional.one_hot(labels, 5)
    labels[:10] = 4  # some mistakes on purpose
    report = classification_report(labels, logits, ("a", "b", "c", "d", "e"))
    pred = logits.argmax(1).numpy()
    assert report["accuracy"] == pytest.approx(accuracy_score(labels.numpy(), pred))
    assert report["macro_f1"] == pytest.approx(f1_score(labels.numpy(), pred, average="macro"))
    p, r, f, s = precision_recall_fscore_support(labels.numpy(), pred, zero_division=0)
    assert [report["per_class"][c]["recall"] for c in "abcde"] == pytest.approx(r.tolist())
    assert [report["per_class"][c]["support"] for c in "abcde"] == s.tolist()
    assert sum(map(sum, report["confusion_matrix"])) == 300
    assert report["loss"] == pytest.approx(log_loss(labels.numpy(), torch.softmax(logits, 1).numpy(), labels=range(5)), rel=1e-5)


def test_a_tie_on_a_validation_score_goes_to_the_lower_validation_loss() -> None:
    epochs = [{"target_val_accuracy": 0.95, "target_val_loss": 0.40}, {"target_val_accuracy": 0.95, "target_val_loss": 0.15},
              {"target_val_accuracy": 0.90, "target_val_loss": 0.01}]
    assert max(range(3), key=lambda i: rank(epochs[i], "target_val_accuracy")) == 1
    assert rank({"mixval": 0.7, "target_val_loss": 0.2}, "mixval") == (0.7, 0.0)  # no tie-breaker for the others

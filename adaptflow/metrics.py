"""Classification metrics computed from a confusion matrix, all in tensor operations."""

from __future__ import annotations

import torch


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts C[i, j] of samples of true class i predicted as j."""
    flat = labels.long() * num_classes + predictions.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


#: Scores that a small validation set often ties on, and the score whose lower value breaks a tie.
TIE_BREAKERS = {"target_val_accuracy": "target_val_loss", "target_val_macro_f1": "target_val_loss"}


def rank(scores: dict[str, float], metric: str) -> tuple[float, float]:
    """Sort key of `scores` by `metric` (higher is better), a tie broken by the lower TIE_BREAKERS score when there is one."""
    breaker = TIE_BREAKERS.get(metric)
    return scores[metric], -scores[breaker] if breaker in scores else 0.0


def classification_report(labels: torch.Tensor, logits: torch.Tensor, classes: tuple[str, ...]) -> dict:
    """Accuracy, macro-F1, mean cross-entropy loss and per-class precision / recall / F1 / support."""
    cm = confusion_matrix(labels, logits.argmax(1), len(classes)).double()
    tp = cm.diag()
    support = cm.sum(1)
    predicted = cm.sum(0)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(support > 0, tp / support.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    present = support > 0
    return {
        "accuracy": float(tp.sum() / cm.sum()),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "loss": float(torch.nn.functional.cross_entropy(logits.float(), labels)),
        "per_class": {
            name: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]), "support": int(support[i])}
            for i, name in enumerate(classes)
        },
        "confusion_matrix": cm.long().tolist(),
    }

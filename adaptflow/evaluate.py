"""The evaluate stage: the adapted model on the target test set, on the source test set
(forgetting), and the source-only baseline on the same target test set."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from adaptflow.config import DataConfig, EvaluateConfig
from adaptflow.data import ImageSet, list_classes, load_split, split_dir
from adaptflow.io import write_json
from adaptflow.metrics import classification_report
from adaptflow.models import Classifier, load_checkpoint, load_source_model
from adaptflow.pretrained import PretrainedRef
from adaptflow.train import predict

log = logging.getLogger(__name__)


def _report(model: Classifier, data: ImageSet, cfg: EvaluateConfig, device: str) -> dict:
    return classification_report(data.labels, predict(model, data.images, cfg.batch_size, device), data.classes)


def evaluate(
    cfg: EvaluateConfig,
    data: DataConfig,
    model_path: str | Path,
    pretrained: PretrainedRef,
    work_dir: Path,
    device: str = "auto",
) -> dict[str, float]:
    """Measure, write `metrics.json`, `report.json` and `confusion_matrix.png`; return the metrics.

    The source-only baseline is the pretrained model itself, with no target training, when its
    classes are the target's; otherwise there is no source-only baseline to compare against.
    """
    model, meta = load_checkpoint(model_path)
    classes = meta["classes"]
    target_test = load_split(data, data.target, "test", classes)
    target = _report(model, target_test, cfg, device)
    metrics: dict[str, float] = {"target_accuracy": target["accuracy"], "target_macro_f1": target["macro_f1"]}
    report: dict = {"classes": list(classes), "target": target}

    source_classes = list_classes(split_dir(data, data.source, "test"))
    source = load_split(data, data.source, "test", classes) if set(source_classes) <= set(classes) else None
    if source is not None:
        report["source"] = _report(model, source, cfg, device)
        metrics["source_accuracy"] = report["source"]["accuracy"]

    baseline, base_meta = load_source_model(pretrained.path, pretrained.arch or meta["arch"], pretrained.allow_pickle)
    if tuple(base_meta["classes"]) == tuple(classes):
        report["baseline"] = {"name": "source_only", "target": _report(baseline, target_test, cfg, device)}
        metrics["baseline_target_accuracy"] = report["baseline"]["target"]["accuracy"]
        metrics["gain"] = metrics["target_accuracy"] - metrics["baseline_target_accuracy"]
        if source is not None:
            base_source = _report(baseline, source, cfg, device)["accuracy"]
            metrics["baseline_source_accuracy"] = base_source
            metrics["forgetting"] = base_source - metrics["source_accuracy"]
    else:
        report["baseline"] = {"name": "none", "reason": "the pretrained model's classes differ from the target's"}

    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / "metrics.json", metrics)
    write_json(work_dir / "report.json", report)
    plot_confusion(torch.tensor(target["confusion_matrix"]), classes, work_dir / "confusion_matrix.png")
    log.info("target accuracy %.4f", metrics["target_accuracy"])
    return metrics


def plot_confusion(cm: torch.Tensor, classes: tuple[str, ...], path: Path) -> Path:
    """Save a confusion matrix as a PNG (rows: true class, columns: predicted)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptflow.io import atomic_write

    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * len(classes), 0.8 + 0.45 * len(classes)), dpi=100)
    ax.imshow(cm.numpy(), cmap="Blues")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="true", title="target test")
    threshold = cm.max().item() / 2
    for (i, j), value in zip(torch.cartesian_prod(torch.arange(len(classes)), torch.arange(len(classes))).tolist(), cm.flatten().tolist()):
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color="white" if value > threshold else "black")
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path

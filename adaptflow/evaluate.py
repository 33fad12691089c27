"""The evaluate stage: the adapted model on the target test set, on the source test set
(forgetting), on the target's labeled validation set when it has one, and the source-only
baseline on the same target test set."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptflow.config import DataConfig, EvaluateConfig
from adaptflow.data import ImageSet, list_classes, load_split, split_dir, target_validation
from adaptflow.io import write_json
from adaptflow.metrics import classification_report
from adaptflow.models import Classifier, load_checkpoint, load_source_model
from adaptflow.weights import SCRATCH, PretrainedRef
from adaptflow.training import predict

log = logging.getLogger(__name__)


def _report(model: Classifier, data: ImageSet, cfg: EvaluateConfig, device: str) -> dict:
    return classification_report(data.labels, predict(model, data.images, cfg.batch_size, device), data.classes)


@dataclass(frozen=True)
class TestSets:
    """The target test set, the source test set when its classes are among the model's, and the
    target's labeled validation set when it has one (`data.val_fraction` or a `val` folder)."""

    target: ImageSet
    source: ImageSet | None
    target_val: ImageSet | None = None

    @classmethod
    def load(cls, data: DataConfig, classes: tuple[str, ...]) -> TestSets:
        source = None
        if data.source is not None and set(list_classes(split_dir(data, data.source, "test"))) <= set(classes):
            source = load_split(data, data.source, "test", classes)
        return cls(load_split(data, data.target, "test", classes), source, target_validation(data, classes))

    def score(self, model: Classifier, cfg: EvaluateConfig, device: str) -> dict[str, dict]:
        """Classification reports on each set ('target', and 'source' and 'target_val' when present)."""
        sets = {"target": self.target, "source": self.source, "target_val": self.target_val}
        return {name: _report(model, images, cfg, device) for name, images in sets.items() if images is not None}


def headline(reports: dict[str, dict], prefix: str = "") -> dict[str, float]:
    """The metrics that are tracked and compared: target accuracy and macro-F1, source accuracy, and
    accuracy, macro-F1 and loss on the target's validation set when it has one."""
    metrics = {f"{prefix}target_accuracy": reports["target"]["accuracy"], f"{prefix}target_macro_f1": reports["target"]["macro_f1"]}
    if "source" in reports:
        metrics[f"{prefix}source_accuracy"] = reports["source"]["accuracy"]
    if "target_val" in reports:
        metrics[f"{prefix}target_val_accuracy"] = reports["target_val"]["accuracy"]
        metrics[f"{prefix}target_val_macro_f1"] = reports["target_val"]["macro_f1"]
        metrics[f"{prefix}target_val_loss"] = reports["target_val"]["loss"]
    return metrics


def measure(cfg: EvaluateConfig, data: DataConfig, model_path: str | Path, device: str = "auto") -> dict[str, float]:
    """The headline metrics of a model file on today's test sets (used to re-measure the champion)."""
    model, meta = load_checkpoint(model_path)
    return headline(TestSets.load(data, meta["classes"]).score(model, cfg, device))


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
    tests = TestSets.load(data, classes)
    reports = tests.score(model, cfg, device)
    metrics = headline(reports)
    report: dict = {"classes": list(classes), **reports}

    if pretrained.uri == SCRATCH:
        baseline, base_meta = None, {"classes": ()}
    else:
        baseline, base_meta = load_source_model(pretrained.path, pretrained.arch or meta["arch"], pretrained.allow_pickle)
    if tuple(base_meta["classes"]) == tuple(classes):
        report["baseline"] = {"name": "source_only", **tests.score(baseline, cfg, device)}
        base = headline(report["baseline"], prefix="baseline_")
        metrics["baseline_target_accuracy"] = base["baseline_target_accuracy"]
        metrics["gain"] = metrics["target_accuracy"] - metrics["baseline_target_accuracy"]
        if "source_accuracy" in metrics:
            metrics["baseline_source_accuracy"] = base["baseline_source_accuracy"]
            metrics["forgetting"] = metrics["baseline_source_accuracy"] - metrics["source_accuracy"]
    else:
        report["baseline"] = {"name": "none", "reason": "the pretrained model's classes differ from the target's"}

    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / "metrics.json", metrics)
    write_json(work_dir / "report.json", report)
    plot_confusion(torch.tensor(reports["target"]["confusion_matrix"]), classes, work_dir / "confusion_matrix.png")
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

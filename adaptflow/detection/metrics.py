"""Detection metrics from one implementation for every detector: torchmetrics' COCO-style mAP
(pycocotools underneath), so YOLO and Faster R-CNN land on one comparable table."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch

from adaptflow.io import atomic_write


def detection_report(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                     classes: tuple[str, ...]) -> dict:
    """mAP50, mAP50-95, per-class AP50-95 and the precision-recall curve at IoU 0.5 (mean over classes)."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, extended_summary=True, backend="pycocotools")
    metric.update(predictions, targets)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its summary tables
        result = metric.compute()
    per_class = dict.fromkeys(classes, None)
    for cls, ap in zip(result["classes"].reshape(-1).tolist(), result["map_per_class"].reshape(-1).tolist(), strict=True):
        if 0 <= cls < len(classes):
            per_class[classes[cls]] = None if ap < 0 else ap
    # precision: IoU thresholds x recall points x classes x areas x max-detections; -1 marks "no data".
    precision = result["precision"][0, :, :, 0, -1]
    present = (precision >= 0).all(0)
    curve = precision[:, present].mean(1) if present.any() else torch.zeros(precision.shape[0])
    return {
        "map50": float(result["map_50"]),
        "map50_95": float(result["map"]),
        "mar100": float(result["mar_100"]),
        "ap50_95_per_class": per_class,
        "pr_curve": {"recall": torch.linspace(0, 1, len(curve)).tolist(), "precision": curve.tolist()},
        "images": len(targets),
        "boxes": int(sum(len(t["labels"]) for t in targets)),
    }


def plot_pr_curves(curves: dict[str, dict], path: Path, title: str) -> Path:
    """Precision-recall curves (IoU 0.5) of several models on one plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    for label, report in curves.items():
        ax.plot(report["pr_curve"]["recall"], report["pr_curve"]["precision"], label=f"{label} (mAP50 {report['map50']:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def plot_predictions(images: torch.Tensor, predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                     classes: tuple[str, ...], path: Path, threshold: float = 0.3, columns: int = 6) -> Path:
    """A grid of images with predicted boxes (red, with class and score) over the true boxes (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    rows = max(1, (len(images) + columns - 1) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2 * columns, 2 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, pred, truth in zip(axes.flat, images, predictions, targets, strict=False):
        ax.imshow(image.permute(1, 2, 0).numpy())
        for x1, y1, x2, y2 in truth["boxes"].tolist():
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="lime", linewidth=1))
        keep = pred["scores"] >= threshold
        for (x1, y1, x2, y2), label, score in zip(pred["boxes"][keep].tolist(), pred["labels"][keep].tolist(), pred["scores"][keep].tolist(), strict=True):
            ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor="red", linewidth=1))
            ax.text(x1, y1 - 1, f"{classes[label]} {score:.2f}", color="red", fontsize=6, va="bottom")
    fig.suptitle(f"target test: predictions (red, score >= {threshold}) and truth (green)", fontsize=9)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path

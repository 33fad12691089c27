"""Detection metrics from one implementation for every detector: COCO-style mAP computed by
pycocotools, so YOLO and Faster R-CNN land on one comparable table.

The numbers are those of torchmetrics' `MeanAveragePrecision(backend="pycocotools", class_metrics=True)`
(its thresholds, its conversion of boxes to COCO records; a test holds the two together to 1e-6), computed
with one COCO evaluation instead of one per class plus one overall, and without importing torchmetrics
(several seconds per process).
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import torch

from adaptflow.io import atomic_write

#: torchmetrics' defaults (float32 linspaces, as it makes them), so the numbers stay the same to the last digit.
IOU_THRESHOLDS = torch.linspace(0.5, 0.95, round((0.95 - 0.5) / 0.05) + 1).tolist()
RECALL_THRESHOLDS = torch.linspace(0.0, 1.00, round(1.00 / 0.01) + 1).tolist()
MAX_DETECTIONS = [1, 10, 100]


def _coco_records(items: list[dict[str, torch.Tensor]], labels: list[int], with_scores: bool) -> dict:
    """Boxes (xyxy) as a COCO dataset: xywh in float32, area w x h, annotation ids from 1, one image per item."""
    annotations, next_id = [], 1
    for image_id, item in enumerate(items):
        xyxy = item["boxes"].float()
        xywh = torch.cat([xyxy[:, :2], xyxy[:, 2:] - xyxy[:, :2]], 1).tolist()
        scores = item["scores"].tolist() if with_scores else None
        for k, (box, label) in enumerate(zip(xywh, item["labels"].tolist(), strict=True)):
            record = {"id": next_id, "image_id": image_id, "area": box[2] * box[3], "category_id": label, "iscrowd": 0, "bbox": box}
            if scores is not None:
                record["score"] = scores[k]
            annotations.append(record)
            next_id += 1
    return {"images": [{"id": i} for i in range(len(items))], "annotations": annotations,
            "categories": [{"id": i, "name": str(i)} for i in labels], "info": {"description": "adaptflow"}}


def coco_evaluation(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]]) -> dict:
    """COCO bbox evaluation: `stats` (COCOeval's 12 numbers), `precision` (IoU x recall x class x area x
    max-detections; -1 where undefined) and the `classes` (sorted labels in predictions or targets)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    every = [item["labels"] for item in predictions] + [item["labels"] for item in targets]
    labels = torch.cat(every).unique().tolist() if every else []
    truth, found = COCO(), COCO()
    truth.dataset = _coco_records(targets, labels, with_scores=False)
    found.dataset = _coco_records(predictions, labels, with_scores=True)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and summary tables
        truth.createIndex()
        found.createIndex()
        if not predictions or not targets:
            return {"stats": np.full(12, -1.0), "precision": np.full((len(IOU_THRESHOLDS), len(RECALL_THRESHOLDS), len(labels), 4, 3), -1.0),
                    "classes": labels}
        evaluation = COCOeval(truth, found, iouType="bbox")
        evaluation.params.iouThrs = np.array(IOU_THRESHOLDS, dtype=np.float64)
        evaluation.params.recThrs = np.array(RECALL_THRESHOLDS, dtype=np.float64)
        evaluation.params.maxDets = MAX_DETECTIONS
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return {"stats": evaluation.stats, "precision": evaluation.eval["precision"], "classes": labels}


def detection_report(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                     classes: tuple[str, ...]) -> dict:
    """mAP50, mAP50-95, per-class AP50-95 and the precision-recall curve at IoU 0.5 (mean over classes)."""
    result = coco_evaluation(predictions, targets)
    stats, full = result["stats"], torch.tensor(result["precision"])
    # all areas, 100 detections: a class's AP50-95 is the mean of its defined precisions (COCOeval's summary of that class alone)
    every_area = full[:, :, :, 0, -1]
    per_class = dict.fromkeys(classes, None)
    for index, cls in enumerate(result["classes"]):
        values = every_area[:, :, index]
        defined = values[values > -1]
        ap = float(torch.tensor(float(defined.mean()) if len(defined) else -1.0, dtype=torch.float32))
        if 0 <= cls < len(classes):
            per_class[classes[cls]] = None if ap < 0 else ap
    # precision: IoU thresholds x recall points x classes x areas x max-detections; -1 marks "no data".
    precision = full[0, :, :, 0, -1]
    present = (precision >= 0).all(0)
    curve = precision[:, present].mean(1) if present.any() else torch.zeros(precision.shape[0])
    as_float32 = lambda value: float(torch.tensor(value, dtype=torch.float32))  # noqa: E731 - torchmetrics reports float32
    return {
        "map50": as_float32(stats[1]),
        "map50_95": as_float32(stats[0]),
        "mar100": as_float32(stats[8]),
        "ap50_95_per_class": per_class,
        "pr_curve": {"recall": torch.linspace(0, 1, len(curve)).tolist(), "precision": curve.tolist()},
        "images": len(targets),
        "boxes": int(sum(len(t["labels"]) for t in targets)),
    }


def torchmetrics_report(predictions: list[dict[str, torch.Tensor]], targets: list[dict[str, torch.Tensor]],
                        classes: tuple[str, ...]) -> dict:
    """`detection_report` as torchmetrics' MeanAveragePrecision computes it: the reference the tests
    hold `detection_report` to, and the previous implementation `make bench` times it against."""
    from torchmetrics.detection import MeanAveragePrecision

    metric = MeanAveragePrecision(iou_type="bbox", class_metrics=True, extended_summary=True, backend="pycocotools")
    metric.warn_on_many_detections = False
    metric.update(predictions, targets)
    with contextlib.redirect_stdout(io.StringIO()):
        result = metric.compute()
    per_class = dict.fromkeys(classes, None)
    for cls, ap in zip(result["classes"].reshape(-1).tolist(), result["map_per_class"].reshape(-1).tolist(), strict=True):
        if 0 <= cls < len(classes):
            per_class[classes[cls]] = None if ap < 0 else ap
    precision = result["precision"][0, :, :, 0, -1]
    present = (precision >= 0).all(0)
    curve = precision[:, present].mean(1) if present.any() else torch.zeros(precision.shape[0])
    return {"map50": float(result["map_50"]), "map50_95": float(result["map"]), "mar100": float(result["mar_100"]),
            "ap50_95_per_class": per_class, "pr_curve": {"recall": torch.linspace(0, 1, len(curve)).tolist(), "precision": curve.tolist()},
            "images": len(targets), "boxes": int(sum(len(t["labels"]) for t in targets))}


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

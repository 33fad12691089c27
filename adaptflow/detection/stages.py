"""The detection stages, with the same signatures as the classification ones: pretrain, check the
pretrained model, fine-tune, evaluate and re-measure (for the champion gate).

YOLO trains through Ultralytics' trainer (the adapter in `yolo/`); Faster R-CNN through
adaptflow's own loop (`frcnn.py`). Both read the same YOLO-format splits, and both are measured
by the same mAP implementation, so their numbers share one table.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from adaptflow.config import DataConfig, EvaluateConfig, FinetuneConfig, PretrainConfig, TrainConfig
from adaptflow.data import split_dir
from adaptflow.detection import frcnn
from adaptflow.detection.adapt import adapt_batch_norm, pseudo_label_quality, pseudo_labels, write_pseudo_split
from adaptflow.detection.data import DetectionSet, load_detection_split, read_names, stage_yolo_dataset
from adaptflow.detection.metrics import detection_report, plot_pr_curves, plot_predictions
from adaptflow.detection.models import build_detector, family, load_detector, predict, read_detector_meta, save_detector
from adaptflow.detection.yolo import training as yolo_training
from adaptflow.finetune import TrainedModel
from adaptflow.io import sha256_file, write_json
from adaptflow.pretrain import PublishedModel, publish
from adaptflow.weights import PretrainedRef
from adaptflow.training import EpochCallback, seed_everything

log = logging.getLogger(__name__)

#: How many target test images the sample-prediction grid shows.
SAMPLE_IMAGES = 12


def domain_classes(data: DataConfig, domain: str) -> tuple[str, ...]:
    return read_names(split_dir(data, domain, "train").parent)


def load_split(data: DataConfig, domain: str, split: str, classes: tuple[str, ...]) -> DetectionSet:
    return load_detection_split(split_dir(data, domain, split), data.image_size, classes)


def _train(model: nn.Module | Path, arch: str, cfg: TrainConfig, data: DataConfig, splits: dict[str, Path | list[Path]],
           classes: tuple[str, ...], work_dir: Path, fingerprint: str, on_epoch: EpochCallback | None, head_only: bool = False,
           save_to: dict | None = None) -> tuple[nn.Module | None, list[dict]]:
    """Train either family on `splits['train']` (`splits['val']` is what YOLO validates on). A YOLO `model` may be
    a detector file's path, and `save_to` have the trainer's process write the result (`yolo_training.train`)."""
    if family(arch) == "yolo":
        dataset = stage_yolo_dataset(splits, classes, work_dir / "dataset")
        freeze = len(model.model) - 1 if head_only else cfg.freeze  # everything but the Detect head
        return yolo_training.train(model, arch, dataset, work_dir, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                          weight_decay=cfg.weight_decay, image_size=data.image_size, freeze=freeze, seed=cfg.seed,
                          device=yolo_training.ultralytics_device(cfg), optimizer=cfg.optimizer, augment=cfg.augment, precision=cfg.precision,
                          save_to=save_to, on_epoch=on_epoch)
    parts = splits["train"] if isinstance(splits["train"], list) else [splits["train"]]
    train = DetectionSet.join([load_detection_split(part, data.image_size, classes) for part in parts])
    history = frcnn.train(model, train, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay,
                          optimizer=cfg.optimizer, seed=cfg.seed, device=cfg.device, freeze_backbone=head_only or cfg.freeze > 0, augment=cfg.augment,
                          precision=cfg.precision, state_path=work_dir / "train_state.pt", fingerprint=fingerprint, on_epoch=on_epoch)
    return model, history


def pretrain(cfg: PretrainConfig, data: DataConfig, work_dir: Path, on_epoch: EpochCallback | None = None) -> PublishedModel:
    """Train a detector from its architecture's initial weights on the source domain and publish it."""
    classes = domain_classes(data, data.source)
    seed_everything(cfg.seed)
    model = build_detector(cfg.arch, len(classes), data.image_size)
    work_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": split_dir(data, data.source, "train"), "val": split_dir(data, data.source, "test")}
    fingerprint = f"pretrain:{cfg.model_dump_json()}:{data.model_dump_json()}"
    model, history = _train(model, cfg.arch, cfg, data, splits, classes, work_dir, fingerprint, on_epoch)
    test = load_split(data, data.source, "test", classes)
    report = detection_report(predict(model, cfg.arch, test.images, device=cfg.device, for_map=True), test.targets(), classes)

    def save(path: Path) -> None:
        save_detector(path, model, arch=cfg.arch, classes=classes, image_size=data.image_size, extra={"domain": data.source})

    return publish(cfg, save, {"source_map50": report["map50"], "source_map50_95": report["map50_95"]}, history, work_dir)


def _load_pretrained(pretrained: PretrainedRef) -> tuple[nn.Module, dict]:
    return load_detector(pretrained.path, allow_pickle=pretrained.allow_pickle)


def _check_family(pretrained: PretrainedRef, pretrained_arch: str, arch: str) -> None:
    if family(pretrained_arch) != family(arch):
        raise ValueError(f"{pretrained.uri}: a {pretrained_arch} detector cannot be fine-tuned as finetune.arch {arch}; "
                         f"set finetune.arch to {pretrained_arch} or fetch a {family(arch)} model")


def _yolo_file(pretrained: PretrainedRef, cfg: FinetuneConfig, classes: tuple[str, ...]) -> tuple[Path, str] | None:
    """The pretrained YOLO file and its arch, checked from the file's metadata, where the trainer's process can load it
    itself: an adaptflow detector file of the target's classes, fine-tuned with no method that needs the model here
    (`methods`, a linear probe)."""
    if family(cfg.arch) != "yolo" or cfg.methods or cfg.strategy == "linear_probe":
        return None
    meta = read_detector_meta(pretrained.path)
    if meta is None:  # an Ultralytics checkpoint: its metadata is inside the pickled model
        return None
    _check_family(pretrained, meta["arch"], cfg.arch)
    return (Path(pretrained.path), meta["arch"]) if meta["classes"] == tuple(classes) else None


def prepare_model(pretrained: PretrainedRef, arch: str, classes: tuple[str, ...], image_size: int) -> tuple[nn.Module, str]:
    """The pretrained detector, with a new box predictor when its classes are not the target's."""
    model, meta = _load_pretrained(pretrained)
    _check_family(pretrained, meta["arch"], arch)
    if tuple(meta["classes"]) != tuple(classes):
        log.info("new %d-class detection head (pretrained classes: %s)", len(classes), list(meta["classes"])[:10])
        if family(arch) == "fasterrcnn":
            from torchvision.models.detection.faster_rcnn import FastRCNNPredictor

            features = model.roi_heads.box_predictor.cls_score.in_features
            model.roi_heads.box_predictor = FastRCNNPredictor(features, len(classes) + 1)
        # YOLO: Ultralytics' trainer builds the model for the dataset's classes and takes every weight that fits.
    return model, meta["arch"]


def check_pretrained(pretrained: PretrainedRef, cfg: FinetuneConfig, data: DataConfig) -> None:
    """Load the pretrained detector and fit it to the target classes before any compute is spent (a YOLO file the
    trainer's process loads itself: its metadata only)."""
    classes = domain_classes(data, data.target)
    if _yolo_file(pretrained, cfg, classes) is None:
        prepare_model(pretrained, cfg.arch, classes, data.image_size)


def finetune(cfg: FinetuneConfig, data: DataConfig, pretrained: PretrainedRef, work_dir: Path,
             on_epoch: EpochCallback | None = None, include_source: bool = True) -> TrainedModel:
    """Train on the labeled target split (`train`); YOLO validates on it too, never on the test split.

    With `finetune.methods`: `adabn` re-estimates batch-norm statistics on the target's unlabeled
    split before training and again after it; `self_training` labels the unlabeled split with the
    (adapted) pretrained model's boxes scoring `pseudo_label_threshold` or more, and trains on the
    source's training split (unless `include_source` is off), the labeled target split and those
    pseudo-labeled images together.
    """
    classes = domain_classes(data, data.target)
    seed_everything(cfg.seed)
    on_file = _yolo_file(pretrained, cfg, classes)  # the trainer's process loads it and writes the result: no model built here
    model, arch = on_file or prepare_model(pretrained, cfg.arch, classes, data.image_size)
    work_dir.mkdir(parents=True, exist_ok=True)
    train_dir = split_dir(data, data.target, "train")
    splits: dict[str, Path | list[Path]] = {"train": train_dir, "val": train_dir}
    unlabeled = load_split(data, data.target, "unlabeled", classes) if cfg.methods else None
    adapted = adapt_methods(model, arch, cfg, data, unlabeled, work_dir) if unlabeled is not None else {}
    if "self_training" in cfg.methods:
        splits["train"] = [split_dir(data, data.source, "train")] * include_source + [train_dir, work_dir / "pseudo"]
    fingerprint = f"finetune:{cfg.model_dump_json()}:{pretrained.sha256}:{data.model_dump_json()}"
    path = work_dir / "model.pt"
    save = {"path": str(path), "arch": arch, "classes": classes, "image_size": data.image_size,
            "extra": {"pretrained_sha256": pretrained.sha256, "strategy": cfg.strategy, "methods": list(cfg.methods)}}
    model, history = _train(model, arch, cfg, data, splits, classes, work_dir, fingerprint,
                            on_epoch, head_only=cfg.strategy == "linear_probe", save_to=save if on_file else None)
    if "adabn" in cfg.methods:
        adapt_batch_norm(model, arch, unlabeled.images, device=cfg.device)
    if not on_file:
        save_detector(model=model, **save)
    write_json(work_dir / "history.json", [row | adapted for row in history] if adapted else history)
    for leftover in ("train_state.pt", "train_state.json"):
        (work_dir / leftover).unlink(missing_ok=True)
    return TrainedModel(str(path), sha256_file(path), arch, classes)


def adapt_methods(model: nn.Module, arch: str, cfg: FinetuneConfig, data: DataConfig, unlabeled: DetectionSet,
                  work_dir: Path) -> dict[str, float]:
    """Apply the methods that act before training; returns pseudo-label diagnostics (when the
    unlabeled split keeps its true boxes, their precision and recall)."""
    if "adabn" in cfg.methods:
        adapt_batch_norm(model, arch, unlabeled.images, device=cfg.device)
    if "self_training" not in cfg.methods:
        return {}
    boxes = pseudo_labels(model, arch, unlabeled.images, cfg.pseudo_label_threshold, device=cfg.device)
    write_pseudo_split(split_dir(data, data.target, "unlabeled"), boxes, data.image_size, work_dir / "pseudo")
    quality = pseudo_label_quality(boxes, unlabeled)
    log.info("self-training: %d pseudo-boxes on %d images (precision %.3f, recall %.3f)", len(boxes), len(unlabeled),
             quality["pseudo_precision"], quality["pseudo_recall"])
    return quality


def _score(model: nn.Module, arch: str, tests: dict[str, DetectionSet], cfg: EvaluateConfig, device: str) -> tuple[dict, dict]:
    reports, predictions = {}, {}
    for name, test in tests.items():
        predictions[name] = predict(model, arch, test.images, cfg.batch_size, device, for_map=True)
        reports[name] = detection_report(predictions[name], test.targets(), test.classes)
    return reports, predictions


def _headline(reports: dict[str, dict], prefix: str = "") -> dict[str, float]:
    return {f"{prefix}{name}_{key}": reports[name][key] for name in reports for key in ("map50", "map50_95")}


def _test_sets(data: DataConfig, classes: tuple[str, ...]) -> dict[str, DetectionSet]:
    tests = {"target": load_split(data, data.target, "test", classes)}
    if domain_classes(data, data.source) == classes:
        tests["source"] = load_split(data, data.source, "test", classes)
    return tests


def measure(cfg: EvaluateConfig, data: DataConfig, model_path: str | Path, device: str = "auto") -> dict[str, float]:
    """The headline metrics of a detector file on today's test sets."""
    model, meta = load_detector(model_path)
    return _headline(_score(model, meta["arch"], _test_sets(data, meta["classes"]), cfg, device)[0])


def evaluate(cfg: EvaluateConfig, data: DataConfig, model_path: str | Path, pretrained: PretrainedRef, work_dir: Path,
             device: str = "auto") -> dict[str, float]:
    """mAP50 and mAP50-95 on target and source test, the source-only baseline, per-class AP, a
    precision-recall plot and a grid of sample predictions; writes `metrics.json` and `report.json`."""
    model, meta = load_detector(model_path)
    classes = meta["classes"]
    tests = _test_sets(data, classes)
    reports, predictions = _score(model, meta["arch"], tests, cfg, device)
    metrics = _headline(reports)
    report: dict = {"classes": list(classes), **reports}
    curves = {"fine-tuned": reports["target"]}

    baseline, base_meta = _load_pretrained(pretrained)
    if tuple(base_meta["classes"]) == tuple(classes):
        base_reports, _ = _score(baseline, base_meta["arch"], tests, cfg, device)
        report["baseline"] = {"name": "source_only", **base_reports}
        metrics |= _headline(base_reports, prefix="baseline_")
        metrics["gain"] = metrics["target_map50"] - metrics["baseline_target_map50"]
        if "source_map50" in metrics:
            metrics["forgetting"] = metrics["baseline_source_map50"] - metrics["source_map50"]
        curves["source-only"] = base_reports["target"]
    else:
        report["baseline"] = {"name": "none", "reason": "the pretrained model's classes differ from the target's"}

    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / "metrics.json", metrics)
    write_json(work_dir / "report.json", report)
    plot_pr_curves(curves, work_dir / "pr_curve.png", "target test, IoU 0.5")
    shown = torch.arange(min(SAMPLE_IMAGES, len(tests["target"])))
    plot_predictions(tests["target"].images[shown], predictions["target"][: len(shown)], tests["target"].targets(shown),
                     classes, work_dir / "predictions.png")
    log.info("target mAP50 %.4f (source-only %s)", metrics["target_map50"], metrics.get("baseline_target_map50"))
    return metrics

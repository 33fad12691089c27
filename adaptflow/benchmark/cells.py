"""One benchmark cell = one function call: train (or not), measure, return small metrics.

Source models are trained once per (source domain, seed) and shared by the cells. Every
finished cell is written to the work folder, so a re-run of the same preset skips it.
"""

from __future__ import annotations

import hashlib
import logging
import math
import threading
import time
from pathlib import Path

import torch

from adaptflow import env
from adaptflow.adapt import TargetData
from adaptflow.adapt.adabn import adapt_batch_norm
from adaptflow.benchmark.grid import Cell
from adaptflow.benchmark.spec import LAYOUT, TARGET_BN, BenchmarkSpec, losses_on_unlabeled
from adaptflow.config import DataConfig
from adaptflow.data import ImageSet, list_classes, load_split, split_dir
from adaptflow.io import read_json, write_json
from adaptflow.models import Classifier, build_classifier, load_checkpoint, load_source_model, replace_head, save_checkpoint
from adaptflow.weights import fetch_pretrained
from adaptflow.training import Normalizer, backbone_blocks, fit, predict, score_model, seed_everything, torch_threads

log = logging.getLogger(__name__)

#: Cells run in threads of one process: seeding and initialising weights from the global RNG take turns.
_INIT = threading.Lock()


def work_dir(spec: BenchmarkSpec) -> Path:
    """Where cell results, adapted models and source models are kept (inside the project cache)."""
    return env.cache_dir() / "benchmark"


def _data(spec: BenchmarkSpec, source: str, target: str) -> DataConfig:
    return DataConfig(root=spec.data_root, source=source, target=target, image_size=spec.image_size)


def evaluation_splits(spec: BenchmarkSpec, source: str, target: str) -> tuple[ImageSet, ImageSet]:
    """The source and the target test images of a pair, labeled by the source's classes."""
    data = _data(spec, source, target)
    src = load_split(data, source, "test")
    return src, load_split(data, target, "test", src.classes)


def source_model_path(spec: BenchmarkSpec, source: str, seed: int) -> Path:
    budget = spec.source.model_dump_json()
    tag = hashlib.sha256(f"{spec.arch}:{spec.image_size}:{budget}:{LAYOUT}".encode()).hexdigest()[:10]
    return env.cache_dir() / "benchmark" / "sources" / f"{source}-{spec.arch}-{tag}-s{seed}" / "model.pt"


def accuracy(model: Classifier, data: ImageSet) -> float:
    return float((predict(model, data.images).argmax(1) == data.labels).float().mean())


def train_source(spec: BenchmarkSpec, source: str, seed: int) -> dict:
    """Train (once) the source model the cells of `seed` start from; returns its source accuracy and time."""
    path = source_model_path(spec, source, seed)
    meta = path.with_name("metrics.json")
    if meta.exists():
        return read_json(meta)
    data = _data(spec, source, source)
    train = load_split(data, source, "train")
    test = load_split(data, source, "test", train.classes)
    with _INIT:
        seed_everything(seed)
        model = build_classifier(spec.arch, len(train.classes))
    with torch_threads(spec.threads):
        history = fit(model, train, spec.source.settings(seed=seed, strategy="finetune"), progress=False)
        result = {"source": source, "seed": seed, "source_accuracy": accuracy(model, test),
                  "train_seconds": sum(h["epoch_seconds"] for h in history)}
    save_checkpoint(path, model, arch=spec.arch, classes=train.classes, image_size=spec.image_size, extra={"domain": source})
    write_json(meta, result)
    return result


def pretrained_start(spec: BenchmarkSpec, init: str, num_classes: int) -> Classifier:
    """The weights `spec.pretrained[init]` names, with a new head of `num_classes` outputs (drawn from the global RNG)."""
    ref = fetch_pretrained(spec.pretrained[init], field=f"pretrained.{init}")
    model, _ = load_source_model(ref.path, spec.arch, ref.allow_pickle)
    return replace_head(model, num_classes)


def holdout_scores(model: Classifier, held_out: ImageSet) -> dict:
    """Accuracy and mean cross-entropy on held-out labeled target images (they pick a strategy; the loss breaks ties)."""
    logits = predict(model, held_out.images)
    return {"holdout_accuracy": float((logits.argmax(1) == held_out.labels).float().mean()),
            "holdout_loss": float(torch.nn.functional.cross_entropy(logits, held_out.labels))}


def labeled_target(data: DataConfig, classes: tuple[str, ...], shots: int | str, seed: int) -> ImageSet:
    """k labeled target images per class; `all`: every labeled target image (train and the unlabeled split's true labels)."""
    train = load_split(data, data.target, "train", classes)
    if shots == "all":
        return train.concat(load_split(data, data.target, "unlabeled", classes))
    return train.per_class(int(shots), seed=seed)


def run_cell(spec: BenchmarkSpec, cell: Cell) -> dict:
    """Run one cell and return its metrics (also written to the work folder; a finished cell is not re-run)."""
    name = f"{cell.key}-{spec.cell_digest(cell)}"
    out = work_dir(spec) / "cells" / f"{name}.json"
    if out.exists():
        return read_json(out)
    with torch_threads(spec.threads):
        result = _measure(spec, cell, name)
    write_json(out, result)
    log.info("%s: target accuracy %.4f", cell.key, result["target_accuracy"])
    return result


def _measure(spec: BenchmarkSpec, cell: Cell, name: str) -> dict:
    """Train and measure one cell (the adapted model of a method cell is saved under `name`)."""
    data = _data(spec, cell.source, cell.target)
    classes = list_classes(split_dir(data, cell.target, "train"))
    test = load_split(data, cell.target, "test", classes)
    unlabeled = load_split(data, cell.target, "unlabeled", classes)
    with _INIT:
        seed_everything(cell.seed)
        init = cell.init
        if cell.kind == "scratch":
            model = build_classifier(spec.arch, len(classes))
        elif init is not None:
            model = pretrained_start(spec, init, len(classes))
        else:
            model, meta = load_checkpoint(source_model_path(spec, cell.source, cell.seed))
            if tuple(meta["classes"]) != classes:
                raise ValueError(f"{cell.source} classes {meta['classes']} differ from {cell.target}'s {classes}: the benchmark needs the same classes")
    history: list[dict] = []
    curve: list[dict] = []
    validation: ImageSet | None = None
    if cell.kind == "method":
        history = _adapt(spec, cell, model, data, classes, unlabeled)
    elif cell.kind in ("strategy", "scratch", "holdout"):
        labeled = labeled_target(data, classes, cell.shots, cell.seed)
        if cell.kind == "holdout":
            labeled, validation = labeled.hold_out(spec.holdout_fraction, seed=cell.seed)
        history, curve = _few_shot(spec, cell, model, labeled, test, unlabeled)
    source_test = load_split(data, cell.source, "test", classes)
    result = {
        **cell.to_dict(),
        "key": cell.key,
        "target_accuracy": accuracy(model, test),
        "source_accuracy": accuracy(model, source_test),
        "train_seconds": curve[-1]["seconds"] if curve else sum(h["epoch_seconds"] for h in history),
        "epochs": len(history),
        "validators": score_model(model, unlabeled.images),
        "curve": curve,
        **(holdout_scores(model, validation) if validation is not None else {}),
        **{k: history[-1][k] for k in ("pseudo_label_fraction", "pseudo_label_accuracy") if history and k in history[-1]},
    }
    if cell.kind == "method":
        result["model_path"] = str(work_dir(spec) / "models" / f"{name}.pt")
        save_checkpoint(result["model_path"], model, arch=spec.arch, classes=classes, image_size=spec.image_size)
    return result


def target_statistics(model: Classifier, unlabeled: ImageSet) -> None:
    """AdaBN: the model's batch-norm statistics become those of the unlabeled target images."""
    adapt_batch_norm(model, TargetData(unlabeled.images, Normalizer(torch.device("cpu"))))


def _adapt(spec: BenchmarkSpec, cell: Cell, model: Classifier, data: DataConfig, classes: tuple[str, ...], unlabeled: ImageSet) -> list[dict]:
    """An adaptation run: source labels (+ k target labels) and the unlabeled target split."""
    names = list(cell.methods)
    if names == ["adabn"]:  # statistics only: nothing to train
        target_statistics(model, unlabeled)
        return []
    train = load_split(data, cell.source, "train", classes)
    if cell.shots:
        train = train.concat(labeled_target(data, classes, cell.shots, cell.seed))
    settings = spec.adapt.settings(seed=cell.seed, strategy="finetune", methods=names, adapt_weight=spec.adapt_weight,
                                   pseudo_label_threshold=spec.pseudo_label_threshold)
    return fit(model, train, settings, unlabeled=unlabeled if names else None, progress=False)


def _few_shot(spec: BenchmarkSpec, cell: Cell, model: Classifier, labeled: ImageSet, test: ImageSet,
              unlabeled: ImageSet) -> tuple[list[dict], list[dict]]:
    """A few-label run on the target, measured on the target test set along the way (time-to-accuracy).

    A run named `strategy+methods` also sees the unlabeled target images. With `adabn`, batch-norm
    statistics are re-estimated on them before training (the start it fine-tunes from) and after (in
    place of the statistics of a few labeled images), both steps timed as part of training; the other
    methods add their loss on a batch of `few_shot.batch_size` unlabeled target images at every step
    (the labeled batch holds only the k images per class there are). A run named `strategy@lrX`
    trains at learning rate X."""
    lr = cell.lr
    budget = spec.few_shot if lr is None else spec.few_shot.model_copy(update={"lr": lr})
    steps_per_epoch = math.ceil(len(labeled) / budget.batch_size)
    epochs = max(2, round(budget.steps / steps_per_epoch)) if budget.steps else budget.epochs
    # Measured at geometrically spaced epochs: early progress (where transfer shows) at fine resolution.
    at = {round(epochs ** (i / (spec.eval_points - 1))) for i in range(spec.eval_points)}
    strategy, methods = cell.strategy, cell.methods
    target_bn = TARGET_BN in methods
    losses = losses_on_unlabeled(methods)
    blocks = len(backbone_blocks(model.backbone))
    # scratch has no pretrained backbone to protect or be pulled toward: one learning rate for all, no pull
    scratch = {"strategy": "finetune", "backbone_lr_scale": 1.0, "l2sp": 0.0} if cell.kind == "scratch" else {}
    settings = budget.settings(**{"seed": cell.seed, "epochs": epochs, "strategy": strategy, "lp_epochs": max(1, epochs // 3),
                                  "unfreeze_epochs": max(1, epochs // (blocks + 1)), "layer_lr_decay": spec.layer_lr_decay,
                                  "surgical_blocks": spec.surgical_blocks, "l2sp": spec.l2sp, "methods": losses,
                                  "adapt_weight": spec.adapt_weight, "pseudo_label_threshold": spec.pseudo_label_threshold,
                                  "target_batch_size": budget.batch_size, **scratch})
    seconds = 0.0

    def statistics_on_target() -> None:
        nonlocal seconds
        started = time.perf_counter()
        target_statistics(model, unlabeled)
        seconds += time.perf_counter() - started

    if target_bn:
        statistics_on_target()
    curve = [{"epoch": 0, "steps": 0, "seconds": seconds, "accuracy": accuracy(model, test)}]

    def measure(epoch: int, record: dict) -> None:
        nonlocal seconds
        seconds += record["epoch_seconds"]
        if epoch in at:
            curve.append({"epoch": epoch, "steps": epoch * steps_per_epoch, "seconds": seconds, "accuracy": accuracy(model, test)})

    history = fit(model, labeled, settings, on_epoch=measure, progress=False, unlabeled=unlabeled if losses else None)
    if target_bn:
        statistics_on_target()
        curve.append({**curve[-1], "seconds": seconds, "accuracy": accuracy(model, test)})
    return history, curve

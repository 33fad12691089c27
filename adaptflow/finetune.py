"""The fine-tune stage: adapt a pretrained model to the labeled target images."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from adaptflow.config import DataConfig, FinetuneConfig
from adaptflow.data import ImageSet, load_split, split_dir, target_labels, target_validation
from adaptflow.io import sha256_file, write_json
from adaptflow.launch import FitJob, fit_on_devices
from adaptflow.metrics import classification_report
from adaptflow.models import Classifier, build_classifier, load_source_model, replace_head, save_checkpoint
from adaptflow.weights import SCRATCH, PretrainedRef
from adaptflow.training import EpochCallback, EpochScore, phases, predict, score_model, seed_everything

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    """The fine-tuned model file, its hash, and its classes."""

    path: str
    sha256: str
    arch: str
    classes: tuple[str, ...]

    def to_dict(self) -> dict:
        return asdict(self)


def prepare_model(pretrained: PretrainedRef, arch: str, classes: tuple[str, ...], data: DataConfig) -> tuple[Classifier, str]:
    """The pretrained model with a head for `classes`: its own head when the label sets match, else a new
    one (`scratch`: `arch` freshly initialised). A new head needs labels to learn from: with no labeled
    images (`data.labeled_per_class=0`, no source) it is refused."""
    if pretrained.uri == SCRATCH:
        return build_classifier(arch, len(classes)), arch
    model, meta = load_source_model(pretrained.path, pretrained.arch or arch, pretrained.allow_pickle)
    if tuple(meta["classes"]) != tuple(classes):
        shown = f"{list(meta['classes'])[:3]}{'...' if len(meta['classes']) > 3 else ''}" if meta["classes"] else "none"
        if data.labeled_per_class == 0 and data.source is None:
            raise ValueError(f"data.labeled_per_class=0 and no data.source: nothing labeled trains a head for the target's classes "
                             f"{list(classes)}, and the pretrained model's are {shown}; give labeled target images "
                             "(data.labeled_per_class), or start from a model trained on these classes")
        replace_head(model, len(classes))
        log.info("new %d-class head (the pretrained model has %d classes: %s)", len(classes), len(meta["classes"]), shown)
    return model, meta["arch"]


def check_pretrained(pretrained: PretrainedRef, cfg: FinetuneConfig, data: DataConfig) -> None:
    """Load the pretrained model, fit it a head for the target classes and plan the strategy's
    phases on its backbone, before any compute is spent."""
    from adaptflow.data import list_classes, split_dir

    model, _ = prepare_model(pretrained, cfg.arch, list_classes(split_dir(data, data.target, "train")), data)
    phases(cfg, model)


def content_digest(data: ImageSet) -> str:
    """A hash of the decoded training images and labels (for resume fingerprints)."""
    digest = hashlib.sha256(data.images.numpy().tobytes())
    digest.update(data.labels.numpy().tobytes())
    return digest.hexdigest()


def training_sets(cfg: FinetuneConfig, data: DataConfig) -> tuple[ImageSet, ImageSet | None]:
    """(labeled training images, unlabeled target images or None) for a fine-tune run; the target's
    validation images (`data.val_fraction` or its `val` folder) are never among them."""
    train = target_labels(data)[0].per_class(data.labeled_per_class, seed=cfg.seed)
    if not cfg.methods:
        if len(train) == 0:
            raise ValueError("data.labeled_per_class=0 leaves no labeled target images: raise it, or set finetune.methods "
                             "(e.g. [adabn, self_training]) to adapt from unlabeled target images")
        return train, None
    unlabeled = load_split(data, data.target, "unlabeled", train.classes)
    if data.source is None:  # source-free: the labeled target images, if any, and the unlabeled ones
        return train, unlabeled
    source = load_split(data, data.source, "train", train.classes)
    return source.concat(train), unlabeled


def epoch_score(cfg: FinetuneConfig, data: DataConfig, classes: tuple[str, ...]) -> EpochScore | None:
    """What scores each fine-tune epoch: accuracy and loss on the target's labeled validation set
    when it has one, and the unsupervised validators on its unlabeled split when `keep_epoch` is one
    of them; None when there is nothing to score."""
    from adaptflow.adapt import VALIDATORS

    val = target_validation(data, classes)
    unlabeled = load_split(data, data.target, "unlabeled", classes) if cfg.keep_epoch in VALIDATORS else None
    if cfg.keep_epoch == "target_val_accuracy" and val is None:
        raise ValueError("finetune.keep_epoch target_val_accuracy needs the target's validation set: set data.val_fraction "
                         f"(e.g. 0.2) or add {split_dir(data, data.target, 'val')}/<class>/*.png")
    return scorer(val, unlabeled)


def scorer(val: ImageSet | None, unlabeled: ImageSet | None) -> EpochScore | None:
    """An epoch's scores: accuracy and loss on the labeled `val` images, and every unsupervised
    validator on the `unlabeled` ones (None when both are None)."""
    if val is None and unlabeled is None:
        return None

    def score(model: torch.nn.Module, device: torch.device) -> dict[str, float]:
        scores = {}
        if val is not None:
            report = classification_report(val.labels, predict(model, val.images, device=str(device)), val.classes)
            scores = {"target_val_accuracy": report["accuracy"], "target_val_loss": report["loss"]}
        if unlabeled is not None:
            scores |= score_model(model, unlabeled.images, device=str(device))
        return scores

    return score


def fit_job(spec: dict) -> FitJob:
    """The fine-tune's training job, made from the JSON `spec` that `finetune` writes: by `finetune`
    itself and, with `devices` > 1, by each torchrun worker (the same data, seed and initial weights)."""
    cfg, data = FinetuneConfig.model_validate(spec["cfg"]), DataConfig.model_validate(spec["data"])
    pretrained, work_dir = PretrainedRef(**spec["pretrained"]), Path(spec["work_dir"])
    train, unlabeled = training_sets(cfg, data)
    seed_everything(cfg.seed)  # a new head's initial weights are part of what the seed fixes
    model, arch = prepare_model(pretrained, cfg.arch, train.classes, data)
    fingerprint = f"finetune:{cfg.model_dump_json()}:{pretrained.sha256}:{content_digest(train)}"
    return FitJob(model, arch, train, cfg, work_dir, fingerprint, unlabeled, epoch_score(cfg, data, train.classes))


def finetune(
    cfg: FinetuneConfig,
    data: DataConfig,
    pretrained: PretrainedRef,
    work_dir: Path,
    on_epoch: EpochCallback | None = None,
) -> TrainedModel:
    """Train on the labeled target split (k per class when `data.labeled_per_class` is set).

    With adaptation methods (`cfg.methods`), train on the source's labeled images plus those k
    per class, and adapt with the target's unlabeled split. With `cfg.devices` > 1, train in that
    many data-parallel workers (`adaptflow.launch`); model.pt is written only after all succeeded.
    """
    work_dir.mkdir(parents=True, exist_ok=True)
    spec = {"cfg": cfg.model_dump(mode="json"), "data": data.model_dump(mode="json"), "pretrained": pretrained.to_dict(),
            "work_dir": str(work_dir.resolve())}
    job = fit_job(spec)
    history = fit_on_devices(job, fit_job, spec, cfg.devices, "finetune", on_epoch)
    model, arch, train = job.model, job.arch, job.train
    path = work_dir / "model.pt"
    save_checkpoint(path, model, arch=arch, classes=train.classes, image_size=data.image_size, window=data.window,
                    extra={"pretrained_sha256": pretrained.sha256, "strategy": cfg.strategy, "methods": list(cfg.methods)})
    write_json(work_dir / "history.json", history)
    for leftover in ("train_state.pt", "train_state.json"):  # only an unfinished run needs them
        (work_dir / leftover).unlink(missing_ok=True)
    return TrainedModel(str(path), sha256_file(path), arch, train.classes)

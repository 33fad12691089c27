"""The text classification stages, with the signatures of the image ones (`adaptflow.stages`):
pretrain (the encoder fine-tuned on the source domain's labels: the source model), check the pretrained
model, fine-tune, evaluate and re-measure (for the champion gate).

Fine-tuning runs the one training loop (`train.fit`) on token ids: the same strategies, adaptation
methods (on the pooled sentence embedding), checkpoints and resume. Evaluation adds the TF-IDF +
logistic regression baseline, trained on exactly the rows the model trained on, and, when the run
starts from a source model of the same classes, that model as it is (source-only).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from adaptflow.config import DataConfig, EvaluateConfig, FinetuneConfig, PretrainConfig
from adaptflow.data import VAL_SEED
from adaptflow.data.folders import ImageSet
from adaptflow.errors import ConfigError
from adaptflow.evaluate import headline, plot_confusion
from adaptflow.finetune import TrainedModel, content_digest, scorer
from adaptflow.pretrain import PublishedModel, publish
from adaptflow.io import sha256_file, write_json
from adaptflow.metrics import classification_report
from adaptflow.models import Classifier
from adaptflow.weights import SCRATCH, PretrainedRef, fetch_pretrained
from adaptflow.text.baseline import tfidf_report
from adaptflow.text.data import class_names, load_text_split, read_split, split_file
from adaptflow.text.encoder import (TEXT_ARCHS, Tokens, encoder_from_pretrained, is_text_checkpoint, load_text_checkpoint, save_text_checkpoint,
                                    text_classifier)
from adaptflow.training import EpochCallback, fit, phases, predict, seed_everything

log = logging.getLogger(__name__)


#: The encoder's learning rate in the pretrain stage, as a share of pretrain.lr (the new head's): a pretrained
#: transformer fine-tunes at 2e-5 to 1e-4, a head from scratch needs a hundred times more.
ENCODER_LR_SCALE = 0.025


def pretrain(cfg: PretrainConfig, data: DataConfig, work_dir: Path, on_epoch: EpochCallback | None = None) -> PublishedModel:
    """Fine-tune the packaged encoder (`pretrain.arch`) with a new head on the source domain's labels, measure it on
    the source's test split and publish it to `pretrain.output`: the source model the target's fine-tune starts
    from (`pretrained.uri: <pretrain.output>/model.pt`). Checkpointed every epoch; a rerun resumes."""
    from adaptflow.text.encoder import TEXT_ARCHS
    from adaptflow.weights import fetch_pretrained

    if data.source is None:
        raise ConfigError("data.source is empty: the text pretrain stage fine-tunes the encoder on a source domain's labels; "
                          "set data.source (e.g. movie_reviews), or skip the stage and start from the encoder (pretrained.uri "
                          "package:minilm_l6)")
    if cfg.arch not in TEXT_ARCHS:
        raise ConfigError(f"pretrain.arch '{cfg.arch}' is an image model; with task text_classification set pretrain.arch to one of "
                          f"{', '.join(TEXT_ARCHS)}")
    if cfg.augment or cfg.low_resolution:
        raise ConfigError("pretrain.augment and pretrain.low_resolution transform images; with task text_classification set "
                          "pretrain.augment=false and pretrain.low_resolution=0")
    work_dir.mkdir(parents=True, exist_ok=True)
    encoder = fetch_pretrained(TEXT_ARCHS[cfg.arch], field="pretrain.arch")
    classes = class_names(read_split(data, data.source, "train").labels)
    seed_everything(cfg.seed)  # the new head's initial weights are part of what the seed fixes
    model, tokens = prepare_model(encoder, cfg.arch, classes, data)
    train = load_text_split(data, data.source, "train", tokens, classes)
    fingerprint = f"text-pretrain:{cfg.model_dump_json()}:{data.model_dump_json()}:{encoder.sha256}"
    history = fit(model, train, cfg.model_copy(update={"backbone_lr_scale": ENCODER_LR_SCALE}), state_path=work_dir / "train_state.pt",
                  fingerprint=fingerprint, on_epoch=on_epoch)
    test = load_text_split(data, data.source, "test", tokens, classes)
    report = classification_report(test.labels, predict_ids(model, test.images, tokens.pad_id), classes)
    metrics = {"source_accuracy": report["accuracy"], "source_macro_f1": report["macro_f1"]}
    extra = {"encoder_sha256": encoder.sha256, "domain": data.source, "seed": cfg.seed}
    return publish(cfg, lambda path: save_text_checkpoint(path, model, arch=cfg.arch, classes=classes, tokens=tokens, extra=extra),
                   metrics, history, work_dir)


def prepare_model(pretrained: PretrainedRef, arch: str, classes: tuple[str, ...], data: DataConfig) -> tuple[Classifier, Tokens]:
    """The pretrained encoder with a new head for `classes`, or a text model registered before (its own head
    when its classes are these), and the tokenizer that goes with it."""
    if pretrained.uri == SCRATCH:
        raise ConfigError("pretrained.uri scratch: a text classifier starts from a pretrained encoder; set pretrained.uri to "
                          "package:minilm_l6")
    if _text_model_classes(pretrained) is not None:
        model, meta, tokens = load_text_checkpoint(pretrained.path)
        if tuple(meta["classes"]) != tuple(classes):
            model.head = torch.nn.Linear(model.head.in_features, len(classes))
        return model, tokens
    encoder, tokens = encoder_from_pretrained(pretrained.path, pretrained.arch or arch, data.max_length)
    return text_classifier(encoder, len(classes)), tokens


def target_classes(data: DataConfig) -> tuple[str, ...]:
    return class_names(read_split(data, data.target, "train").labels)


def check_pretrained(pretrained: PretrainedRef, cfg: FinetuneConfig, data: DataConfig) -> None:
    """Load the encoder, fit it a head for the target's labels and plan the strategy on its blocks, before any training."""
    model, _ = prepare_model(pretrained, cfg.arch, target_classes(data), data)
    phases(cfg, model)


def _rows(data: ImageSet, index: torch.Tensor) -> ImageSet:
    return ImageSet(data.images[index], data.labels[index], data.classes)


def pad_to(data: ImageSet, width: int, pad_id: int) -> ImageSet:
    """`data` with its token ids padded on the right to `width` columns."""
    extra = width - data.images.shape[1]
    return data if extra <= 0 else ImageSet(F.pad(data.images, (0, extra), value=pad_id), data.labels, data.classes)


def join(a: ImageSet, b: ImageSet, pad_id: int) -> ImageSet:
    width = max(a.images.shape[1], b.images.shape[1])
    return pad_to(a, width, pad_id).concat(pad_to(b, width, pad_id))


@dataclass(frozen=True)
class TextTraining:
    """What a fine-tune trains on: labeled ids (source rows first, with methods and a source), the same rows'
    texts (for the TF-IDF baseline), the target's validation set and its unlabeled split."""

    train: ImageSet
    texts: list[str]
    val: ImageSet | None
    unlabeled: ImageSet | None


def training_sets(data: DataConfig, tokens: Tokens, seed: int, methods: list[str] | tuple[str, ...], with_unlabeled: bool) -> TextTraining:
    """The labeled rows: `data.labeled_per_class` per class of the target's train split (seeded by `seed`), after
    its validation share (`data.val_fraction`, seeded by VAL_SEED as for images) or with its val file."""
    target = load_text_split(data, data.target, "train", tokens)
    texts = read_split(data, data.target, "train").texts
    index = ImageSet(torch.arange(len(target)).unsqueeze(1), target.labels, target.classes)
    val = None
    if split_file(data, data.target, "val") is not None:
        val = load_text_split(data, data.target, "val", tokens, target.classes)
    elif data.val_fraction:
        index, held = index.hold_out(data.val_fraction, seed=VAL_SEED)
        val = _rows(target, held.images[:, 0])
    chosen = index.per_class(data.labeled_per_class, seed=seed).images[:, 0]
    train, texts = _rows(target, chosen), [texts[i] for i in chosen.tolist()]
    unlabeled = load_text_split(data, data.target, "unlabeled", tokens, target.classes) if with_unlabeled else None
    if methods and data.source is not None:
        source = load_text_split(data, data.source, "train", tokens, target.classes)
        train, texts = join(source, train, tokens.pad_id), read_split(data, data.source, "train").texts + texts
    return TextTraining(train, texts, val, unlabeled)


def finetune(cfg: FinetuneConfig, data: DataConfig, pretrained: PretrainedRef, work_dir: Path,
             on_epoch: EpochCallback | None = None) -> TrainedModel:
    """Train the encoder and its head on the labeled target rows (plus the source's, with methods), in the one loop;
    the state is checkpointed every epoch (and every `checkpoint_every_steps`), and a rerun resumes from it."""
    from adaptflow.adapt import VALIDATORS

    work_dir.mkdir(parents=True, exist_ok=True)
    classes = target_classes(data)
    seed_everything(cfg.seed)  # the new head's initial weights are part of what the seed fixes
    model, tokens = prepare_model(pretrained, cfg.arch, classes, data)
    sets = training_sets(data, tokens, cfg.seed, cfg.methods, bool(cfg.methods) or cfg.keep_epoch in VALIDATORS)
    if len(sets.train) == 0 and not cfg.methods:
        raise ValueError("data.labeled_per_class=0 leaves no labeled target rows: raise it, or set finetune.methods "
                         "(e.g. [self_training]) to adapt from the unlabeled split")
    if cfg.keep_epoch == "target_val_accuracy" and sets.val is None:
        raise ValueError("finetune.keep_epoch target_val_accuracy needs the target's validation set: set data.val_fraction "
                         "(e.g. 0.2) or add a val.csv or val.jsonl file")
    fingerprint = f"text-finetune:{cfg.model_dump_json()}:{data.model_dump_json()}:{pretrained.sha256}:{content_digest(sets.train)}"
    score = scorer(sets.val, sets.unlabeled if cfg.keep_epoch in VALIDATORS else None)
    history = fit(model, sets.train, cfg, state_path=work_dir / "train_state.pt", fingerprint=fingerprint,
                  on_epoch=on_epoch, unlabeled=sets.unlabeled if cfg.methods else None, score=score)
    path = work_dir / "model.pt"
    arch = pretrained.arch or cfg.arch
    save_text_checkpoint(path, model, arch=arch, classes=sets.train.classes, tokens=tokens,
                         extra={"pretrained_sha256": pretrained.sha256, "strategy": cfg.strategy, "methods": list(cfg.methods),
                                "seed": cfg.seed})
    write_json(work_dir / "history.json", history)
    for leftover in ("train_state.pt", "train_state.json"):  # only an unfinished run needs them
        (work_dir / leftover).unlink(missing_ok=True)
    return TrainedModel(str(path), sha256_file(path), arch, sets.train.classes)


def predict_ids(model: Classifier, ids: torch.Tensor, pad_id: int, batch_size: int = 256, device: str = "auto") -> torch.Tensor:
    """Logits for token ids, the rows bucketed by length (longest first) so each batch pads to little; returned in
    the input's order."""
    order = (ids != pad_id).sum(1).argsort(descending=True)
    logits = predict(model, ids[order], batch_size, device)
    out = torch.empty_like(logits)
    out[order] = logits
    return out


def _test_sets(data: DataConfig, tokens: Tokens, classes: tuple[str, ...], val: ImageSet | None) -> dict[str, ImageSet]:
    sets = {"target": load_text_split(data, data.target, "test", tokens, classes)}
    if data.source is not None and split_file(data, data.source, "test") is not None:
        source_labels = set(read_split(data, data.source, "test").labels)
        if source_labels <= set(classes):
            sets["source"] = load_text_split(data, data.source, "test", tokens, classes)
    if val is not None:
        sets["target_val"] = val
    return sets


def _reports(model: Classifier, sets: dict[str, ImageSet], tokens: Tokens, cfg: EvaluateConfig, device: str) -> dict[str, dict]:
    return {name: classification_report(s.labels, predict_ids(model, s.images, tokens.pad_id, cfg.batch_size, device), s.classes)
            for name, s in sets.items()}


def _text_model_classes(pretrained: PretrainedRef) -> tuple[str, ...] | None:
    """The classes of the pretrained file when it is a text classifier (a source model, a registered text model);
    None for the bare encoder."""
    if Path(pretrained.path).suffix != ".pt":
        return None
    blob = torch.load(pretrained.path, map_location="cpu", weights_only=True, mmap=True)
    return tuple(blob["classes"]) if is_text_checkpoint(blob) else None


def _source_model(pretrained: PretrainedRef, classes: tuple[str, ...]) -> Classifier | None:
    """The text model the run started from, when it is one (not the bare encoder) and has these classes."""
    return load_text_checkpoint(pretrained.path)[0] if _text_model_classes(pretrained) == tuple(classes) else None


def measure(cfg: EvaluateConfig, data: DataConfig, model_path: str | Path, device: str = "auto") -> dict[str, float]:
    """The headline metrics of a text model file on today's test sets (to re-measure the champion)."""
    model, meta, tokens = load_text_checkpoint(model_path)
    seed = int(meta["extra"].get("seed", 0))
    val = training_sets(data, tokens, seed, (), False).val
    return headline(_reports(model, _test_sets(data, tokens, meta["classes"], val), tokens, cfg, device))


def evaluate(cfg: EvaluateConfig, data: DataConfig, model_path: str | Path, pretrained: PretrainedRef, work_dir: Path,
             device: str = "auto") -> dict[str, float]:
    """Measure the model on the target test set (and the source's, and the target's validation set, when there
    are), against TF-IDF + logistic regression trained on the same labeled rows; write `metrics.json`,
    `report.json` and `confusion_matrix.png`; return the metrics."""
    model, meta, tokens = load_text_checkpoint(model_path)
    classes, extra = meta["classes"], meta["extra"]
    sets = training_sets(data, tokens, int(extra.get("seed", 0)), extra.get("methods", []), False)
    tests = _test_sets(data, tokens, classes, sets.val)
    reports = _reports(model, tests, tokens, cfg, device)
    metrics = headline(reports)
    test_texts = read_split(data, data.target, "test").texts
    baseline = tfidf_report(sets.texts, sets.train.labels.tolist(), test_texts, tests["target"].labels, classes)
    metrics |= {"tfidf_target_accuracy": baseline["accuracy"], "tfidf_target_macro_f1": baseline["macro_f1"],
                "gain_over_tfidf_macro_f1": metrics["target_macro_f1"] - baseline["macro_f1"]}
    source_only = _source_model(pretrained, classes)
    if source_only is not None:  # the model the run started from, as it is: what the fine-tune added
        report = _reports(source_only, {"target": tests["target"]}, tokens, cfg, device)["target"]
        metrics |= {"baseline_target_accuracy": report["accuracy"], "baseline_target_macro_f1": report["macro_f1"]}
    report = {"classes": list(classes), **reports,
              "baseline": {"name": "tfidf_logistic_regression", "train_rows": len(sets.texts), "target": baseline}}
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json(work_dir / "metrics.json", metrics)
    write_json(work_dir / "report.json", report)
    plot_confusion(torch.tensor(reports["target"]["confusion_matrix"]), classes, work_dir / "confusion_matrix.png")
    log.info("target accuracy %.4f, macro-F1 %.4f (TF-IDF + logistic regression: %.4f, %.4f)", metrics["target_accuracy"],
             metrics["target_macro_f1"], baseline["accuracy"], baseline["macro_f1"])
    return metrics

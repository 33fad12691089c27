"""The text benchmark: what transfer buys a sentence encoder on a shifted review domain, in macro-F1.

Per seed, the packaged encoder (`encoder`, all-MiniLM-L6-v2) is fine-tuned on the source domain's labels:
that is the source model. Then every run is measured on the target test split (macro-F1 and accuracy) and
on the source test split (what it forgot):

- `source_only`: the source model as it is (no target labels).
- each of `methods` (no target labels): the encoder trained like the source model, on the source labels,
  plus that method's loss on the unlabeled target split (mcc, self_training, coral, dann on the pooled
  embedding). The same budget as the source model, so a gain is the method's, not more training.
- each of `strategies` at each k: the source model fine-tuned on k labeled target rows per class
  (`all`: every labeled train row) for about `steps` optimizer steps, with that strategy.
- `encoder:<strategy>` for each of `encoder_strategies`: the same from the packaged encoder, skipping the
  source labels.
- `tfidf`: TF-IDF + logistic regression on the same k rows (the practitioner's baseline).

The k rows of a seed are the same for every run and for TF-IDF (the target train split's
`per_class(k, seed)` draw). Hyperparameters are the preset's; none is tuned on a target test split.
Cells run one at a time (a transformer uses every core it is given) and a finished cell is not run again.
"""

from __future__ import annotations

import logging
import math
import statistics
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adaptflow.config import AdaptMethod, DataConfig, FinetuneConfig, Strategy
from adaptflow.io import content_digest

log = logging.getLogger(__name__)

SOURCE_ONLY = "source_only"
TFIDF = "tfidf"
ENCODER = "encoder"
#: The unsupervised methods that apply to a LayerNorm transformer (AdaBN re-estimates batch-norm statistics: it has none).
TEXT_METHODS = ("mcc", "self_training", "coral", "dann", "shot")


class TextBenchmark(BaseModel):
    """The text part of a benchmark preset."""

    model_config = ConfigDict(extra="forbid")

    source: str = "movie_reviews"
    target: str = "drug_reviews"
    encoder: str = Field("package:minilm_l6", description="The pretrained encoder every run starts from")
    max_length: int = Field(64, ge=8, le=512, description="Tokens per text (longer texts are cut)")
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    shots: list[int | Literal["all"]] = Field([5, 20, 50, "all"], min_length=1, description="Labeled target rows per class")
    strategies: list[Strategy] = Field(["linear_probe", "finetune", "lp_ft", "gradual_unfreeze"],
                                       description="Few-label strategies from the source model")
    encoder_strategies: list[Strategy] = Field(["lp_ft"], description="Few-label strategies from the encoder itself (no source labels)")
    methods: list[str] = Field(["mcc", "self_training", "coral", "dann"], description=f"Unsupervised methods: any of {', '.join(TEXT_METHODS)}")
    source_epochs: int = Field(3, ge=1, description="Epochs on the source labels (the source model and the methods)")
    steps: int = Field(60, ge=1, description="Optimizer steps of a few-label run (epochs = steps / batches per epoch, at least 2)")
    batch_size: int = Field(16, ge=2)
    lr: float = Field(0.002, gt=0, description="The head's learning rate")
    backbone_lr_scale: float = Field(0.025, gt=0, le=1, description="The encoder's learning rate as a share of lr")
    adapt_weight: float = Field(1.0, ge=0)
    pseudo_label_threshold: float = Field(0.9, ge=0, le=1)

    @field_validator("methods")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        if "adabn" in value:
            raise ValueError("adabn does not apply to a text encoder: it re-estimates batch-norm statistics and a transformer "
                             "normalises with LayerNorm; use any of " + ", ".join(TEXT_METHODS))
        unknown = [m for m in value if m not in TEXT_METHODS]
        if unknown:
            raise ValueError(f"unknown text methods {unknown}: use any of {', '.join(TEXT_METHODS)}")
        return value

    @field_validator("shots")
    @classmethod
    def _shots(cls, value: list[int | str]) -> list[int | str]:
        if any(k != "all" and k < 1 for k in value):
            raise ValueError(f"shots {value}: each k is 1 or more, or all (k = 0 is what source_only and the methods measure)")
        return value

    @model_validator(mode="after")
    def _domains(self) -> TextBenchmark:
        if self.source == self.target:
            raise ValueError(f"source and target are both '{self.source}': name two domains")
        return self

    def runs(self) -> list[str]:
        """The few-label runs' names, in the report's order."""
        return [*self.strategies, *(f"{ENCODER}:{s}" for s in self.encoder_strategies)]


#: What the source model depends on; a cell depends on these and on the rest of the settings (not on the grid).
_SOURCE_FIELDS = {"source", "encoder", "max_length", "source_epochs", "batch_size", "lr", "backbone_lr_scale"}
_GRID_FIELDS = {"seeds", "shots", "strategies", "encoder_strategies", "methods"}


def _digest(spec: TextBenchmark, root: Path, include: set[str] | None = None) -> str:
    fields = spec.model_dump(mode="json", include=include, exclude=None if include else _GRID_FIELDS)
    return content_digest({**fields, "data_root": str(root)}, 10)


def source_dir(spec: TextBenchmark, root: Path, work: Path, seed: int) -> Path:
    return work / "text" / f"source-{_digest(spec, root, _SOURCE_FIELDS)}-seed{seed}"


def cell_dir(spec: TextBenchmark, root: Path, work: Path, seed: int, name: str, shots: int | str) -> Path:
    return work / "text" / f"{name.replace(':', '-')}-k{shots}-{_digest(spec, root)}-seed{seed}"


def _data(spec: TextBenchmark, root: Path) -> DataConfig:
    return DataConfig(root=root, source=spec.source, target=spec.target, max_length=spec.max_length, labeled_per_class=None)


def _settings(spec: TextBenchmark, seed: int, epochs: int, **kw: object) -> FinetuneConfig:
    return FinetuneConfig(arch="minilm_l6", epochs=epochs, batch_size=spec.batch_size, lr=spec.lr, weight_decay=0.01,
                          backbone_lr_scale=spec.backbone_lr_scale, augment=False, seed=seed, adapt_weight=spec.adapt_weight,
                          pseudo_label_threshold=spec.pseudo_label_threshold, target_batch_size=spec.batch_size, **kw)


def _encoder_start(spec: TextBenchmark, data: DataConfig, classes: tuple[str, ...]):  # noqa: ANN202
    from adaptflow.text.stages import prepare_model
    from adaptflow.weights import fetch_pretrained

    return prepare_model(fetch_pretrained(spec.encoder, field="text.encoder"), "minilm_l6", classes, data)


def _measure(model, tokens, data: DataConfig, classes: tuple[str, ...]) -> dict[str, float]:  # noqa: ANN001
    """Target and source test macro-F1 and accuracy of `model`."""
    from adaptflow.metrics import classification_report
    from adaptflow.text.data import load_text_split
    from adaptflow.text.stages import predict_ids

    out = {}
    for name, domain in (("target", data.target), ("source", data.source)):
        test = load_text_split(data, domain, "test", tokens, classes)
        report = classification_report(test.labels, predict_ids(model, test.images, tokens.pad_id), classes)
        out[f"{name}_macro_f1"], out[f"{name}_accuracy"] = report["macro_f1"], report["accuracy"]
    return out


def _classes(data: DataConfig) -> tuple[str, ...]:
    from adaptflow.text.data import class_names, read_split

    classes = class_names(read_split(data, data.target, "train").labels)
    source = class_names(read_split(data, data.source, "train").labels)
    if source != classes:
        raise ValueError(f"text benchmark: {data.source} has classes {list(source)} and {data.target} {list(classes)}; "
                         "source-only and the adaptation methods need the same classes in both domains")
    return classes


def source_model(spec: TextBenchmark, root: Path, work: Path, seed: int) -> dict:
    """Fine-tune (or reuse, when trained with the same settings) the encoder on the source labels: the seed's source model."""
    from adaptflow.io import read_json, write_json
    from adaptflow.text.data import load_text_split
    from adaptflow.text.encoder import save_text_checkpoint
    from adaptflow.training import fit, seed_everything

    out = source_dir(spec, root, work, seed)
    if (out / "model.pt").exists() and (out / "result.json").exists():
        return read_json(out / "result.json")
    data = _data(spec, root)
    classes = _classes(data)
    seed_everything(seed)
    model, tokens = _encoder_start(spec, data, classes)
    started = time.perf_counter()
    train = load_text_split(data, spec.source, "train", tokens, classes)
    fit(model, train, _settings(spec, seed, spec.source_epochs, strategy="finetune"), progress=False)
    result = {"seed": seed, "name": SOURCE_ONLY, "shots": 0, "seconds": time.perf_counter() - started,
              **_measure(model, tokens, data, classes)}
    save_text_checkpoint(out / "model.pt", model, arch="minilm_l6", classes=classes, tokens=tokens, extra={"seed": seed})
    write_json(out / "result.json", result)
    log.info("text source model seed %d: target macro-F1 %.4f", seed, result["target_macro_f1"])
    return result


def labeled_rows(data: DataConfig, classes: tuple[str, ...], shots: int | str, seed: int):  # noqa: ANN201
    """(their indices in the target's train split, their texts, their class indices) of k labeled rows per class
    (`all`: every one), drawn by `seed` as a run's `data.labeled_per_class` rows are."""
    import torch

    from adaptflow.data.folders import ImageSet
    from adaptflow.text.data import label_ids, read_split

    rows = read_split(data, data.target, "train")
    labels = label_ids(rows, classes)
    chosen = ImageSet(torch.arange(len(rows)).unsqueeze(1), labels, classes).per_class(None if shots == "all" else int(shots), seed=seed)
    index = chosen.images[:, 0]
    return index, [rows.texts[i] for i in index.tolist()], chosen.labels


def run_cell(spec: TextBenchmark, root: Path, work: Path, seed: int, name: str, shots: int | str = 0) -> dict:
    """One run of the grid (`source_only`, a method, a strategy or `encoder:<strategy>` at k = `shots`, or
    `tfidf`), measured on the target and source test splits; kept in its folder, so a finished cell is not run again."""
    from adaptflow.data.folders import ImageSet
    from adaptflow.io import read_json, write_json
    from adaptflow.text.baseline import tfidf_report
    from adaptflow.text.data import label_ids, load_text_split, read_split
    from adaptflow.text.encoder import load_text_checkpoint
    from adaptflow.training import backbone_blocks, fit, seed_everything

    if name == SOURCE_ONLY:
        return source_model(spec, root, work, seed)
    folder = cell_dir(spec, root, work, seed, name, shots)
    if (folder / "result.json").exists():
        return read_json(folder / "result.json")
    data = _data(spec, root)
    classes = _classes(data)
    started = time.perf_counter()
    result: dict = {"seed": seed, "name": name, "shots": shots}
    if name == TFIDF:  # words only: no tokenizer, no encoder
        _, texts, labels = labeled_rows(data, classes, shots, seed)
        test = read_split(data, data.target, "test")
        report = tfidf_report(texts, labels.tolist(), test.texts, label_ids(test, classes), classes, seed=seed)
        result |= {"target_macro_f1": report["macro_f1"], "target_accuracy": report["accuracy"]}
    elif name in spec.methods:
        seed_everything(seed)
        model, tokens = _encoder_start(spec, data, classes)
        train = load_text_split(data, spec.source, "train", tokens, classes)
        unlabeled = load_text_split(data, spec.target, "unlabeled", tokens, classes)
        history = fit(model, train, _settings(spec, seed, spec.source_epochs, strategy="finetune", methods=[name]),
                      progress=False, unlabeled=unlabeled)
        result |= {k: history[-1][k] for k in ("pseudo_label_fraction", "pseudo_label_accuracy") if k in history[-1]}
        result |= _measure(model, tokens, data, classes)
    else:
        strategy = name.removeprefix(f"{ENCODER}:")
        seed_everything(seed)
        if name.startswith(f"{ENCODER}:"):
            model, tokens = _encoder_start(spec, data, classes)
        else:
            model, _, tokens = load_text_checkpoint(source_dir(spec, root, work, seed) / "model.pt")
        index, _, labels = labeled_rows(data, classes, shots, seed)
        rows = ImageSet(load_text_split(data, data.target, "train", tokens, classes).images[index], labels, classes)
        epochs = max(2, round(spec.steps / math.ceil(len(rows) / spec.batch_size)))
        blocks = len(backbone_blocks(model.backbone))
        fit(model, rows, _settings(spec, seed, epochs, strategy=strategy, lp_epochs=max(1, epochs // 3),
                                   unfreeze_epochs=max(1, epochs // (blocks + 1))), progress=False)
        result |= {"epochs": epochs, **_measure(model, tokens, data, classes)}
    result["seconds"] = time.perf_counter() - started
    write_json(folder / "result.json", result)
    log.info("text %s k=%s seed %d: target macro-F1 %.4f", name, shots, seed, result["target_macro_f1"])
    return result


def cells(spec: TextBenchmark) -> list[tuple[int, str, int | str]]:
    """(seed, run, k) of every cell after the source models: no labels first, then TF-IDF and the runs at each k."""
    unsupervised = [(seed, method, 0) for seed in spec.seeds for method in spec.methods]
    few = [(seed, name, k) for k in spec.shots for seed in spec.seeds for name in (TFIDF, *spec.runs())]
    return unsupervised + few


# --- the report ------------------------------------------------------------------------------------------------


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.pstdev(values) if len(values) > 1 else 0.0


def _cell(values: list[float]) -> str:
    if not values:
        return ""
    mean, std = _mean_std(values)
    return f"{100 * mean:.1f} ± {100 * std:.1f}"


RUN_LABELS = {TFIDF: "TF-IDF + logistic regression", SOURCE_ONLY: "source only"}


def summarize(spec: TextBenchmark, results: list[dict]) -> dict:
    """Means over seeds: per run and k (macro-F1, accuracy), the unsupervised methods against source-only, and
    the two targets (the best transfer run at k = 20 against TF-IDF; the best method against source-only)."""
    def values(name: str, k: int | str, key: str) -> list[float]:
        return [r[key] for r in results if r["name"] == name and str(r["shots"]) == str(k)]

    few = {name: {str(k): _mean_std(values(name, k, "target_macro_f1"))[0] for k in spec.shots if values(name, k, "target_macro_f1")}
           for name in (TFIDF, *spec.runs())}
    accuracy = {name: {str(k): _mean_std(values(name, k, "target_accuracy"))[0] for k in spec.shots if values(name, k, "target_accuracy")}
                for name in (TFIDF, *spec.runs())}
    base = values(SOURCE_ONLY, 0, "target_macro_f1")
    base_mean = _mean_std(base)[0] if base else None
    unsupervised = {}
    for name in (SOURCE_ONLY, *spec.methods):
        f1 = values(name, 0, "target_macro_f1")
        if f1:
            mean, std = _mean_std(f1)
            unsupervised[name] = {"target_macro_f1": mean, "target_macro_f1_std": std,
                                  "target_accuracy": _mean_std(values(name, 0, "target_accuracy"))[0],
                                  "source_accuracy": _mean_std(values(name, 0, "source_accuracy"))[0],
                                  "gain": None if base_mean is None else mean - base_mean}
    summary: dict = {"few_shot_macro_f1": few, "few_shot_accuracy": accuracy, "unsupervised": unsupervised}
    at = "20" if 20 in spec.shots else str(spec.shots[0])
    transfer = {n: few[n][at] for n in spec.runs() if at in few.get(n, {})}
    if transfer and at in few.get(TFIDF, {}):
        best = max(transfer, key=transfer.get)
        summary["transfer_vs_tfidf"] = {"k": at, "best": best, "macro_f1": transfer[best], "tfidf_macro_f1": few[TFIDF][at],
                                        "gain": transfer[best] - few[TFIDF][at], "met": transfer[best] - few[TFIDF][at] >= 0.10}
    methods = {m: v for m, v in unsupervised.items() if m != SOURCE_ONLY}
    if methods and base_mean is not None:
        best = max(methods, key=lambda m: methods[m]["target_macro_f1"])
        gain, std = methods[best]["gain"], methods[best]["target_macro_f1_std"]
        summary["unsupervised_vs_source_only"] = {"best": best, "macro_f1": methods[best]["target_macro_f1"],
                                                  "source_only_macro_f1": base_mean, "gain": gain, "met": gain > max(std, 0.01)}
    return summary


def report_section(spec: TextBenchmark, results: list[dict], output: Path) -> tuple[str, dict]:
    """The markdown section (targets, tables of macro-F1 and accuracy, the methods against source-only) and a plot."""
    summary = summarize(spec, results)
    md = [f"## Text: {spec.source} -> {spec.target} (`{spec.encoder}`, {spec.max_length} tokens, macro-F1 on the target test split)", "",
          f"Seeds {', '.join(map(str, spec.seeds))}; values are mean ± std over seeds, in points. The source model: the encoder "
          f"fine-tuned {spec.source_epochs} epoch{'s' if spec.source_epochs != 1 else ''} on the {spec.source} labels (the methods train the same way, plus their loss "
          f"on the unlabeled {spec.target} split). Few-label runs: about {spec.steps} optimizer steps of {spec.batch_size} rows "
          f"on k labeled {spec.target} rows per class, from the source model (named by the strategy) or from the encoder "
          f"(`{ENCODER}:`); TF-IDF + logistic regression trains on the same rows. Head lr {spec.lr:g}, encoder lr "
          f"{spec.lr * spec.backbone_lr_scale:g}, pseudo-label threshold {spec.pseudo_label_threshold}; no hyperparameter was "
          "chosen on a target test split.", ""]
    targets = []
    if "transfer_vs_tfidf" in summary:
        t = summary["transfer_vs_tfidf"]
        targets.append(f"- Best transfer run at k = {t['k']} against TF-IDF: `{t['best']}` {100 * t['macro_f1']:.1f} against "
                       f"{100 * t['tfidf_macro_f1']:.1f} macro-F1, {100 * t['gain']:+.1f} points (target: +10): "
                       f"**{'met' if t['met'] else 'not met'}**.")
    if "unsupervised_vs_source_only" in summary:
        u = summary["unsupervised_vs_source_only"]
        targets.append(f"- Best method without target labels against source-only: `{u['best']}` {100 * u['macro_f1']:.1f} against "
                       f"{100 * u['source_only_macro_f1']:.1f} macro-F1, {100 * u['gain']:+.1f} points (a gain counts when it "
                       f"exceeds the seed std and 1 point): **{'met' if u['met'] else 'not met'}**.")
    md += ["### Targets", "", *targets, ""] if targets else []
    for key, title in (("target_macro_f1", "macro-F1"), ("target_accuracy", "accuracy")):
        md += [f"### Few target labels: {title} on the target test split", "",
               "| run | " + " | ".join(f"k = {k}" for k in spec.shots) + " |", "|---" * (len(spec.shots) + 1) + "|"]
        for name in (TFIDF, *spec.runs()):
            row = [_cell([r[key] for r in results if r["name"] == name and str(r["shots"]) == str(k)]) for k in spec.shots]
            md.append(f"| {RUN_LABELS.get(name, name)} | " + " | ".join(row) + " |")
        md.append("")
    if summary["unsupervised"]:
        md += ["### No target labels: the adaptation methods against source-only", "",
               "A method's run also draws a batch of unlabeled target rows at every step, so its labeled batches come in "
               "another order than the source model's: a method whose loss stays near zero (self-training that keeps no "
               "pseudo-label) shows what that alone changes.", "",
               "| run | target macro-F1 | gain | target accuracy | source accuracy | pseudo-labels |", "|---|---|---|---|---|---|"]
        for name, m in summary["unsupervised"].items():
            mine = [r for r in results if r["name"] == name and r["shots"] == 0]
            kept = [r["pseudo_label_fraction"] for r in mine if "pseudo_label_fraction" in r]
            right = [r["pseudo_label_accuracy"] for r in mine if "pseudo_label_accuracy" in r]  # none when none was kept
            note = ", ".join([*([f"{100 * statistics.fmean(kept):.0f}% kept"] if kept else []),
                              *([f"{100 * statistics.fmean(right):.0f}% right"] if right else [])])
            gain = "" if name == SOURCE_ONLY else f"{100 * m['gain']:+.1f}"
            md.append(f"| {RUN_LABELS.get(name, name)} | {100 * m['target_macro_f1']:.1f} ± {100 * m['target_macro_f1_std']:.1f} | "
                      f"{gain} | {100 * m['target_accuracy']:.1f} | {100 * m['source_accuracy']:.1f} | {note} |")
        md.append("")
    seconds = [r["seconds"] for r in results if "seconds" in r and r["name"] != TFIDF]
    if seconds:
        md += [f"{len(results)} cells; a run trained in {statistics.median(seconds):.0f} s (median, "
               f"{min(seconds):.0f}-{max(seconds):.0f} s).", ""]
    if summary["few_shot_macro_f1"].get(TFIDF):
        md += [f"![Text: macro-F1 against labels per class]({_plot(spec, summary, output).name})", ""]
    return "\n".join(md), summary


def _plot(spec: TextBenchmark, summary: dict, output: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from adaptflow.io import atomic_write

    shots = [str(k) for k in spec.shots]
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=100)
    for name, by_k in summary["few_shot_macro_f1"].items():
        ks = [k for k in shots if k in by_k]
        ax.plot(ks, [100 * by_k[k] for k in ks], marker="o", label=RUN_LABELS.get(name, name),
                linestyle="--" if name == TFIDF else "-", color="#555555" if name == TFIDF else None)
    if SOURCE_ONLY in summary["unsupervised"]:
        ax.axhline(100 * summary["unsupervised"][SOURCE_ONLY]["target_macro_f1"], color="#999999", linestyle=":", label="source only")
    ax.set(xlabel="labeled target rows per class", ylabel="target macro-F1 (%)", title=f"Text: {spec.source} -> {spec.target}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = output / "text_macro_f1.png"
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path

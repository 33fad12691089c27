"""The detection benchmark: what adaptation buys a detector on the shifted scenes, in mAP50.

Per seed, a source detector trains on `mnist_scenes`; then each method adapts a copy of it to
`photo_scenes` and is measured on the target test split (and the source test split):

- `source_only`: the source model as it is.
- `control`: the source model trained `adapt_epochs` more on the source alone, the same extra
  training the self-training student gets, so that a gain is not just longer training.
- `adabn`: batch-norm statistics re-estimated on the unlabeled target images.
- `self_training`, `adabn+self_training`: the (adapted) source model labels the unlabeled target
  images; the student trains `adapt_epochs` on source images plus those pseudo-labeled ones.
- `finetune`: trained on the 60 labeled target images.
- `finetune+self_training`: the fine-tuned model labels the unlabeled images; the student trains
  on the labeled and the pseudo-labeled target images.

Hyperparameters are fixed in the preset (the pseudo-label threshold 0.25 follows Ultralytics'
default prediction confidence); none is tuned on the target test split.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from adaptflow.config import DataConfig, DetectorArch, FinetuneConfig, PretrainConfig, image_size_problem
from adaptflow.io import content_digest

log = logging.getLogger(__name__)

METHODS = ("source_only", "control", "adabn", "self_training", "adabn+self_training", "finetune", "finetune+self_training")


class DetectionBenchmark(BaseModel):
    """The detection part of a benchmark preset."""

    model_config = ConfigDict(extra="forbid")

    arch: DetectorArch = "yolov8n"
    source: str = "mnist_scenes"
    target: str = "photo_scenes"
    image_size: int = Field(128, ge=32, le=1024)
    seeds: list[int] = Field([0], min_length=1)
    source_epochs: int = Field(15, ge=1, description="Epochs of the source detector")
    adapt_epochs: int = Field(5, ge=1, description="Extra epochs of self-training students and of the control")
    finetune_epochs: int = Field(30, ge=1, description="Epochs on the labeled target images")
    batch_size: int = Field(32, ge=2)
    lr: float = Field(0.002, gt=0)
    pseudo_label_threshold: float = Field(0.25, ge=0, le=1)
    methods: list[str] = Field(list(METHODS), description=f"Any of {', '.join(METHODS)}")

    @field_validator("methods")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in METHODS]
        if unknown:
            raise ValueError(f"unknown detection methods {unknown}: use any of {', '.join(METHODS)}")
        return value

    @model_validator(mode="after")
    def _fits(self) -> DetectionBenchmark:
        problem = image_size_problem(self.arch, self.image_size, "detection.image_size")
        if problem:
            raise ValueError(problem)
        return self


#: What a source detector depends on; a cell depends on these and on the rest of its settings (not on the grid).
_SOURCE_FIELDS = {"arch", "source", "image_size", "source_epochs", "batch_size", "lr"}
_GRID_FIELDS = {"seeds", "methods"}


def _digest(spec: DetectionBenchmark, root: Path, include: set[str] | None = None) -> str:
    fields = spec.model_dump(mode="json", include=include, exclude=None if include else _GRID_FIELDS)
    return content_digest({**fields, "data_root": str(root)}, 10)


def source_dir(spec: DetectionBenchmark, root: Path, work: Path, seed: int) -> Path:
    """Where the seed's source detector lives: presets that train it alike share it."""
    return work / "detection" / f"source-{_digest(spec, root, _SOURCE_FIELDS)}-seed{seed}"


def cell_dir(spec: DetectionBenchmark, root: Path, work: Path, seed: int, method: str) -> Path:
    return work / "detection" / f"{method}-{_digest(spec, root)}-seed{seed}"


def _data(spec: DetectionBenchmark, root: Path) -> DataConfig:
    return DataConfig(root=root, source=spec.source, target=spec.target, image_size=spec.image_size)


def _train_config(spec: DetectionBenchmark, seed: int, epochs: int, **kw: object) -> dict:
    return {"arch": spec.arch, "epochs": epochs, "batch_size": spec.batch_size, "lr": spec.lr, "weight_decay": 5e-4,
            "seed": seed, "augment": True, **kw}


def source_model(spec: DetectionBenchmark, root: Path, work: Path, seed: int) -> dict:
    """Train (or reuse, when already trained with the same settings) the source detector of one seed."""
    from adaptflow.detection import stages
    from adaptflow.io import read_json

    out = source_dir(spec, root, work, seed)
    if (out / "model.pt").exists() and (out / "metrics.json").exists():
        return {"seed": seed, "path": str(out / "model.pt"), **read_json(out / "metrics.json")}
    cfg = PretrainConfig(**_train_config(spec, seed, spec.source_epochs), output=out)
    t0 = time.perf_counter()
    published = stages.pretrain(cfg, _data(spec, root), out.with_name(f"{out.name}-run"))
    return {"seed": seed, "path": published.path, **published.metrics, "seconds": time.perf_counter() - t0}


def run_cell(spec: DetectionBenchmark, root: Path, work: Path, seed: int, method: str) -> dict:
    """Adapt the seed's source detector with `method`; returns its target and source mAP50 (kept in
    the cell's folder: a finished cell is not run again)."""
    from adaptflow.data import split_dir
    from adaptflow.detection import stages
    from adaptflow.detection.adapt import adapt_batch_norm
    from adaptflow.detection.metrics import detection_report
    from adaptflow.detection.models import load_detector, predict, save_detector
    from adaptflow.io import read_json, sha256_file, write_json
    from adaptflow.weights import PretrainedRef

    if method not in METHODS:
        raise ValueError(f"unknown detection benchmark method '{method}': use one of {', '.join(METHODS)}")
    data = _data(spec, root)
    source = source_dir(spec, root, work, seed) / "model.pt"
    folder = cell_dir(spec, root, work, seed, method)
    if (folder / "result.json").exists():
        return read_json(folder / "result.json")
    t0 = time.perf_counter()
    model, meta = load_detector(source)
    extra: dict[str, float] = {}
    methods = [m for m in ("adabn", "self_training") if m in method.split("+")]
    if method == "adabn":
        unlabeled = stages.load_split(data, data.target, "unlabeled", meta["classes"])
        adapt_batch_norm(model, spec.arch, unlabeled.images)
    elif method == "control":
        cfg = FinetuneConfig(**_train_config(spec, seed, spec.adapt_epochs, strategy="finetune"))
        splits = {"train": split_dir(data, data.source, "train"), "val": split_dir(data, data.source, "test")}
        model, _ = stages._train(model, spec.arch, cfg, data, splits, meta["classes"], folder, method, None)
    elif method != "source_only":
        teacher = PretrainedRef(str(source), str(source), sha256_file(source), arch=spec.arch)
        adapt = {"methods": methods, "pseudo_label_threshold": spec.pseudo_label_threshold}
        if method.startswith("finetune"):
            cfg = FinetuneConfig(**_train_config(spec, seed, spec.finetune_epochs, strategy="finetune", batch_size=16, lr=spec.lr / 2))
            trained = stages.finetune(cfg, data, teacher, folder / "finetune")
            # The fine-tuned model is the teacher; its student sees labeled and pseudo-labeled target images.
            teacher = PretrainedRef(trained.path, trained.path, trained.sha256, arch=spec.arch)
            cfg = cfg.model_copy(update={"epochs": spec.adapt_epochs, **adapt})
        else:
            cfg = FinetuneConfig(**_train_config(spec, seed, spec.adapt_epochs, strategy="finetune", **adapt))
        if methods:
            trained = stages.finetune(cfg, data, teacher, folder / "student", include_source=not method.startswith("finetune"))
            extra = {k: v for k, v in read_json(folder / "student" / "history.json")[-1].items() if k.startswith("pseudo_")}
        model, _ = load_detector(trained.path)
    seconds = time.perf_counter() - t0
    result = {"seed": seed, "method": method, "seconds": seconds, **extra}
    for name in ("target", "source"):
        domain = data.target if name == "target" else data.source
        test = stages.load_split(data, domain, "test", meta["classes"])
        report = detection_report(predict(model, spec.arch, test.images, for_map=True), test.targets(), meta["classes"])
        result[f"{name}_map50"], result[f"{name}_map50_95"] = report["map50"], report["map50_95"]
    save_detector(folder / "model.pt", model, arch=spec.arch, classes=meta["classes"], image_size=spec.image_size)
    write_json(folder / "result.json", result)
    log.info("detection %s seed %d: target mAP50 %.4f", method, seed, result["target_map50"])
    return result


def report_section(spec: DetectionBenchmark, results: list[dict], output: Path) -> tuple[str, dict]:
    """The markdown table (mAP50 mean +- std over seeds, gain over source-only) and a bar chart."""
    import statistics

    from adaptflow.io import atomic_write

    rows, summary = [], {}
    base = [r["target_map50"] for r in results if r["method"] == "source_only"]
    base_mean = statistics.fmean(base) if base else float("nan")
    for method in spec.methods:
        mine = [r for r in results if r["method"] == method]
        if not mine:
            continue
        target = [r["target_map50"] for r in mine]
        source = [r["source_map50"] for r in mine]
        mean, std = statistics.fmean(target), statistics.pstdev(target)
        summary[method] = {"target_map50": mean, "target_map50_std": std, "gain": mean - base_mean,
                           "source_map50": statistics.fmean(source)}
        pseudo = [r for r in mine if "pseudo_precision" in r]
        note = (f"{statistics.fmean(r['pseudo_boxes'] for r in pseudo):.0f} boxes, precision "
                f"{statistics.fmean(r['pseudo_precision'] for r in pseudo):.2f}, recall "
                f"{statistics.fmean(r['pseudo_recall'] for r in pseudo):.2f}") if pseudo else ""
        rows.append(f"| {method} | {100 * mean:.1f} ± {100 * std:.1f} | {100 * (mean - base_mean):+.1f} | "
                    f"{100 * statistics.fmean(source):.1f} | {statistics.fmean(r['seconds'] for r in mine):.0f} | {note} |")
    md = [
        f"## Detection: {spec.source} -> {spec.target} ({spec.arch}, {spec.image_size} px, mAP50 on the target test split)",
        "",
        f"Seeds {', '.join(map(str, spec.seeds))}; source detectors {spec.source_epochs} epochs; self-training students and "
        f"the control {spec.adapt_epochs} more epochs; pseudo-label threshold {spec.pseudo_label_threshold} (fixed in the preset). "
        "`finetune` uses the labeled target split; the other adaptation methods use no target labels.",
        "",
        "| method | target mAP50 (mean ± std) | gain over source-only | source mAP50 | seconds | pseudo-labels |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if summary:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        names = list(summary)
        fig, ax = plt.subplots(figsize=(7, 3.2), dpi=100)
        ax.bar(names, [100 * summary[n]["target_map50"] for n in names], yerr=[100 * summary[n]["target_map50_std"] for n in names],
               color=["#999999" if n in ("source_only", "control") else "#1f77b4" for n in names])
        ax.set(ylabel="target mAP50 (%)", title=f"Detection: {spec.source} -> {spec.target}")
        ax.tick_params(axis="x", labelrotation=25, labelsize=8)
        fig.tight_layout()
        path = output / "detection_map50.png"
        with atomic_write(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        md += ["![Detection mAP50 per method](detection_map50.png)", ""]
    return "\n".join(md), summary

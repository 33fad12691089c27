"""What a benchmark runs: the grid, the training budgets, and where results go (a preset file).

Presets ship inside the package (`presets`); the grid's cells are planned in `grid`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, ValidationError, field_validator, model_serializer, model_validator

from adaptflow.benchmark.grid import CONTROL, SCRATCH, Cell, FewLabel
from adaptflow.benchmark.presets import folder, preset_file, preset_names
from adaptflow.config import (
    LAYERWISE_STRATEGIES, AdaptMethod, Arch, ConfigError, Strategy, TrackingConfig, TrainSettings, explain, folder_name_problem, setting,
)
from adaptflow.detection.benchmark import DetectionBenchmark
from adaptflow.text.benchmark import TextBenchmark
from adaptflow.execution import DaskAddressField, GpuPoolField, RayAddressField, RunnerField, check_addresses
from adaptflow.io import content_digest, parse_yaml, read_text

#: The shipped presets' folder.
PRESETS: Traversable = folder()
#: The memory layout models train and predict in (adaptflow.training.MEMORY_FORMAT's name), part of every cache key:
#: models trained and measured in the NCHW layout before it gave other results.
LAYOUT = "channels_last"
#: In a few-label run, AdaBN means batch-norm statistics re-estimated on the unlabeled target split before and after training.
TARGET_BN = "adabn"
#: Starting points that always exist: names `pretrained` cannot take.
RESERVED_INITS = ("source", SCRATCH)
#: Fields that say how the grid runs, not what it computes.
EXECUTION = {"workers", "threads", "runner", "dask_address", "ray_address", "gpu_pool"}


class Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Pair(Spec):
    """A source domain and a target domain (folders under data_root)."""

    source: str = "mnist"
    target: str = "uci_digits"

    @field_validator("source", "target")
    @classmethod
    def _domain_folder(cls, value: str) -> str:
        problem = folder_name_problem(value)
        if problem:
            raise ValueError(f"{problem}; name a folder directly under data_root, e.g. uci_digits")
        return value


#: The training settings every benchmark budget starts from (over `TrainSettings`' defaults); a budget names what differs.
BUDGET_BASE = {"epochs": 5, "batch_size": 64, "lr": 1e-3, "backbone_lr_scale": 1.0, "augment": True}


class Budget(Spec):
    """How one kind of training run trains: an overlay of the run config's training settings (`TrainSettings`, the keys
    of a finetune section), on BUDGET_BASE, validated by that model (the same bounds as finetune.*); and `steps`.
    Attributes give the overlaid values (budget.lr)."""

    model_config = ConfigDict(extra="allow")

    steps: int = Field(0, ge=0, description="When positive: epochs are chosen so that training takes about this many optimizer steps")

    @model_validator(mode="after")
    def _overlay(self) -> Budget:
        overlay = dict(self.model_extra or {})
        if overlay.get("low_resolution") and not overlay.get("augment", BUDGET_BASE["augment"]):
            raise ValueError(f"low_resolution={overlay['low_resolution']:g} is part of augmentation: set augment: true too, or low_resolution: 0")
        try:
            settings = TrainSettings.model_validate({**BUDGET_BASE, **overlay})
        except ValidationError as exc:
            raise ValueError(explain(exc, TrainSettings).strip().replace("\n  ", "; ")) from None
        self.__pydantic_extra__ = dict(settings)  # every setting, as the run trains with it
        return self

    def settings(self, **fixed: object) -> TrainSettings:
        """The training settings of a run on this budget, with what the run itself fixes (`fixed`: seed, strategy, ...)."""
        return TrainSettings.model_validate({**self.model_extra, **fixed})

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict:
        """The base's keys and steps in their first order, then the other keys a preset set where they differ from the
        default (low_resolution only when not 0, as before it existed): cached source models and cells keep their keys."""
        data = handler(self)
        defaults = TrainSettings()
        head = {key: data.pop(key) for key in ("epochs", "steps", "batch_size", "lr", "backbone_lr_scale", "augment") if key in data}
        return head | {key: value for key, value in data.items() if value != getattr(defaults, key)}

    def describe_augmentation(self) -> str:
        if not self.augment:
            return "without augmentation"
        low = f" ({self.low_resolution:.0%} of the images at a random lower resolution)" if self.low_resolution else ""
        return f"with augmentation{low}"


class BenchmarkSpec(Spec):
    """One benchmark: every pair x (strategies, scratch) x shots x seeds, and methods x method_shots x seeds."""

    name: str = Field("quick", description="Preset name; results go to output")
    arch: Arch = "small_cnn"
    image_size: int = Field(32, ge=8, le=512)
    data_root: Path = Path("data")
    pairs: list[Pair] = [Pair(), Pair(target="mnist_m")]
    seeds: list[int] = Field([0, 1, 2], min_length=1)
    shots: list[int | Literal["all"]] = Field(
        [1, 10], description="Labeled target images per class for strategies and scratch; all: every labeled target image"
    )
    strategies: list[Strategy] = ["linear_probe", "finetune", "lp_ft", "discriminative", "gradual_unfreeze"]
    methods: list[str] = Field(
        [CONTROL, "adabn", "dann", "coral", "mcc", "self_training", "adabn+self_training"],
        description="Adaptation runs: method names joined by +, applied in order; none: source training only (the control)",
    )
    with_unlabeled: dict[str, list[Strategy]] = Field(
        {}, description="Few labels plus the unlabeled target split: method names joined by + -> the strategies also run with them "
                        "(scratch is, always). adabn: target batch-norm statistics before and after training; other methods add "
                        "their loss on few_shot.batch_size unlabeled target images per step",
    )
    semi_supervised: list[str] = Field(
        [], description="Methods also run with method_shots labeled target images per class added to the source's labels"
    )
    method_shots: list[int] = Field([1], description="Labeled target images per class for the semi_supervised runs")
    pretrained: dict[str, str] = Field(
        {}, description="More starting points for the few-label strategies: a name -> a pretrained URI of the preset's arch (e.g. "
                        "imagenet: package:efficientnet_lite0). Each strategy also fine-tunes those weights, with a new head, on "
                        "the target labels alone at every k and seed (runs named name:strategy, at few_shot.lr), beside the "
                        "source model and scratch",
    )
    validator: Literal["information_maximization", "entropy", "snd", "mixval"] = Field(
        "information_maximization", description="Unsupervised validator that picks the adaptation method per seed"
    )
    # Training settings every few-label (and, for the last two, adaptation) run shares: TrainSettings' fields and bounds.
    layer_lr_decay: float = setting("layer_lr_decay", 0.5, "discriminative and gradual_unfreeze: rate of each block / the block above")
    surgical_blocks: int = setting("surgical_blocks", 1)
    l2sp: float = setting("l2sp", 0.0, "Few-label transfer strategies: weight of the pull toward the source model's weights "
                                       "(L2-SP, as finetune.l2sp); scratch has no pretrained weights to be pulled toward")
    pseudo_label_threshold: float = setting("pseudo_label_threshold", 0.9)
    adapt_weight: float = setting("adapt_weight", 1.0)
    source: Budget = Budget()
    adapt: Budget = Budget()
    few_shot: Budget = Field(Budget(steps=200, batch_size=32), description="Few-label runs (strategies and scratch)")
    lr_candidates: list[Annotated[float, Field(gt=0)]] = Field(
        [], description="Few-label runs on labels only (strategies and scratch): learning rates tried besides few_shot.lr; per "
                        "strategy, k and seed the unsupervised validator picks one, from unlabeled target images",
    )
    holdout_fraction: float = Field(
        0.0, ge=0, lt=1, description="When positive: at every k from 2 (and all), each strategy also trains with this fraction of "
                                     "each class's labels held out (at least one) and is scored on them; per k and seed the best "
                                     "held-out score picks a strategy, which the report compares with the validators' picks",
    )
    eval_points: int = Field(10, ge=2, description="Target-test evaluations per few-label run, geometrically spaced (the time-to-accuracy curve)")
    workers: int = Field(2, ge=1, description="Cells run in parallel: threads, or processes of a local Dask cluster, or CPUs of a local Ray instance (torch threads per cell: threads)")
    threads: int = Field(1, ge=1, description="torch threads per cell")
    runner: RunnerField = "thread"
    dask_address: DaskAddressField = ""
    ray_address: RayAddressField = ""
    gpu_pool: GpuPoolField = ""
    output: Path = Path("reports/benchmark")
    tracking: TrackingConfig = TrackingConfig(experiment="adaptflow-benchmark")
    detection: DetectionBenchmark | None = Field(None, description="The detection part (mAP50); empty: classification only")
    text: TextBenchmark | None = Field(None, description="The text part (macro-F1 of a sentence encoder); empty: no text")

    @field_validator("methods", "semi_supervised")
    @classmethod
    def _methods(cls, value: list[str]) -> list[str]:
        for combo in value:
            _check_combo(combo, control=True)
        return value

    @field_validator("with_unlabeled")
    @classmethod
    def _with_unlabeled(cls, value: dict[str, list[Strategy]]) -> dict[str, list[Strategy]]:
        for combo in value:
            _check_combo(combo, control=False)
        return value

    @model_validator(mode="after")
    def _pretrained(self) -> BenchmarkSpec:
        from adaptflow.weights import PACKAGED, check_uri

        for name, uri in self.pretrained.items():
            if not re.fullmatch(r"[a-z][a-z0-9_]*", name) or name in RESERVED_INITS:
                raise ValueError(f"pretrained: '{name}' cannot name a starting point; use lower-case letters, digits and _, "
                                 f"not {' or '.join(RESERVED_INITS)} (they always run)")
            problem = check_uri(uri)
            if problem is not None or uri == SCRATCH:
                what, fix = problem or (f"'{uri}' has no weights", "scratch always runs; name pretrained weights")
                raise ValueError(f"pretrained.{name} {what}; {fix}")
            packaged = PACKAGED.get(uri.removeprefix("package:")) if uri.startswith("package:") else None
            if packaged is not None and packaged.arch != self.arch:
                raise ValueError(f"pretrained.{name}: {uri} holds {packaged.arch} weights but arch is {self.arch}; set arch: {packaged.arch}")
        return self

    @model_validator(mode="after")
    def _addresses(self) -> BenchmarkSpec:
        check_addresses(self)
        return self

    @model_validator(mode="after")
    def _lr_candidates(self) -> BenchmarkSpec:
        lrs = [self.few_shot.lr, *self.lr_candidates]
        if len(set(lrs)) < len(lrs):
            raise ValueError(f"lr_candidates: {self.lr_candidates} repeats a value (few_shot.lr {self.few_shot.lr:g} is always tried); "
                             "list each other learning rate once")
        return self

    @model_validator(mode="after")
    def _holdout(self) -> BenchmarkSpec:
        if self.holdout_fraction and not self.holdout_shots():
            raise ValueError(f"holdout_fraction: {self.holdout_fraction:g} needs a k of 2 or more (or all) in shots {self.shots}: "
                             "at k = 1 no label can be held out; add one, or set holdout_fraction to 0")
        return self

    def holdout_shots(self) -> list[int | str]:
        """The k whose strategies are also trained with labels held out (a class needs two labels to spare one)."""
        return [k for k in self.shots if k == "all" or k >= 2] if self.holdout_fraction else []

    def transfer_runs(self) -> list[FewLabel]:
        """The few-label runs from pretrained weights on labels only: each strategy from the source model, then from each of `pretrained`."""
        return [*(FewLabel(s) for s in self.strategies), *(FewLabel(s, init=init) for init in self.pretrained for s in self.strategies)]

    def transfer_names(self) -> list[str]:
        """The names of `transfer_runs`, as results and reports show them."""
        return [run.name for run in self.transfer_runs()]

    def few_shot_lrs(self) -> list[float]:
        """Every learning rate the few-label runs on labels only try, ascending."""
        return sorted([self.few_shot.lr, *self.lr_candidates])

    def digest(self) -> str:
        """What the results depend on: not where or how parallel the cells ran, nor where results go."""
        # presets from before these existed keep their digest
        unset = {name for name in ("l2sp", "pretrained") if not getattr(self, name)}
        return content_digest(self.model_dump(mode="json", exclude={*EXECUTION, "output", "tracking", *unset}), 12)

    def cell_digest(self, cell: Cell) -> str:
        """What a cell's result depends on (not the rest of the grid): presets that share a cell share its result."""
        shared = {"arch", "image_size", "data_root", "source"}
        shared |= {"adapt", "pseudo_label_threshold", "adapt_weight"} if cell.kind == "method" else {"few_shot", "eval_points"}
        strategy, methods, init = cell.strategy, cell.methods, cell.init
        extra: dict[str, object] = {"layout": LAYOUT}
        if init is not None:  # starts from those weights, not from the source model
            shared.discard("source")
            extra["pretrained"] = weights_identity(self.pretrained[init])
        if cell.kind != "method":
            extra["curve"] = "geometric"
        if cell.kind != "method" and losses_on_unlabeled(methods):
            shared |= {"pseudo_label_threshold", "adapt_weight"}
            extra["unlabeled_batch"] = "few_shot.batch_size"  # older results drew as many unlabeled images as labeled ones
        if strategy in LAYERWISE_STRATEGIES:
            extra["layer_lr_decay"] = self.layer_lr_decay
        if strategy == "surgical":
            extra["surgical_blocks"] = self.surgical_blocks
        if cell.kind == "holdout":
            extra["holdout_fraction"] = self.holdout_fraction
        if cell.kind in ("strategy", "holdout") and self.l2sp:
            extra["l2sp"] = self.l2sp
        return content_digest({"cell": cell.to_dict(), **extra, **self.model_dump(mode="json", include=shared)}, 12)


def weights_identity(uri: str) -> dict[str, str]:
    """What a run from `uri` depends on: packaged weights by their pinned digest (their content), others by the URI."""
    from adaptflow.weights import PACKAGED

    packaged = PACKAGED.get(uri.removeprefix("package:")) if uri.startswith("package:") else None
    return {"uri": uri, **({"sha256": packaged.sha256} if packaged else {})}


def losses_on_unlabeled(methods: Sequence[str]) -> list[str]:
    """The few-label methods that add a loss on unlabeled target batches: all but adabn (statistics only)."""
    return [m for m in methods if m != TARGET_BN]


def _check_combo(combo: str, control: bool) -> None:
    known = set(AdaptMethod.__args__)
    parts = combo.split("+")
    unknown = [p for p in parts if p not in known and not (control and p == CONTROL and len(parts) == 1)]
    if unknown:
        names = f"{CONTROL} or names" if control else "names"
        raise ValueError(f"'{combo}': unknown method(s) {unknown}; use {names} from {sorted(known)} joined by +")


def domains(spec: BenchmarkSpec) -> list[str]:
    """Every domain folder (under `spec.data_root`) the benchmark reads."""
    names = [d for p in spec.pairs for d in (p.source, p.target)]
    if spec.detection is not None:
        names += [spec.detection.source, spec.detection.target]
    if spec.text is not None:
        names += [spec.text.source, spec.text.target]
    return list(dict.fromkeys(names))


def load_preset(name_or_path: str | Path) -> BenchmarkSpec:
    """A preset by name (adaptflow/benchmark/presets/NAME.yaml, inside the package) or path; errors name the file and the field."""
    path: Path | Traversable = Path(name_or_path)
    if not path.suffix:
        path = preset_file(str(name_or_path))
    if not (path.exists() if isinstance(path, Path) else path.is_file()):  # a folder given as the path is refused by read_text
        raise ConfigError(f"{path}: no such benchmark preset; use one of {preset_names()} or a path to a YAML file")
    try:
        text = read_text(path) if isinstance(path, Path) else path.read_text(encoding="utf-8")
        return BenchmarkSpec.model_validate(parse_yaml(text, str(path)) or {})
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid benchmark preset\n{explain(exc, BenchmarkSpec)}") from None

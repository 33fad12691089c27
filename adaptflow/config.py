"""One typed, validated configuration per run.

`RunConfig` is the single source of truth: `params.yaml` is its serialized form (read by DVC),
the Prefect flows take it as their parameter (the UI renders it as a form), and the CLI loads
it from a file plus `key=value` overrides. Each stage receives only its own sub-model.

`TrainSettings` is every setting of the training loop, in one place: the pretrain and finetune sections
are it plus what their stage adds, benchmark budgets and sweep grids are overlays validated by it. A new
training setting is one field there (its type, bounds, default and description) and the loop code that
reads it (`adaptflow.training`); the YAML keys, the Prefect form, the reference page and the workers'
JSON follow from the field.

Why this module is longer than ~400 lines: it is one schema, and most of its lines are the
descriptions of its fields, which the Prefect form and docs/config-reference.md are generated from.
Its checks across sections (`RunConfig._task`) need every section, so the sections stay together.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, get_args

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, GetJsonSchemaHandler, SerializerFunctionWrapHandler, ValidationError, WithJsonSchema,
    field_validator, model_serializer, model_validator,
)
from pydantic.fields import FieldInfo

from adaptflow.errors import ConfigError
from adaptflow.io import content_digest, parse_yaml, read_yaml

ClassifierArch = Literal[
    "resnet18",
    "resnet34",
    "resnet50",
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "efficientnet_b0",
    "efficientnet_lite0",
    "efficientnet_lite1",
    "efficientnet_lite2",
    "small_cnn",
]
DetectorArch = Literal[
    "yolov8n",
    "yolov8s",
    "yolo11n",
    "yolo11s",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "fasterrcnn_resnet50_fpn_v2",
]
#: Pretrained text encoders (`adaptflow.text.encoder.TEXT_ARCHS`) for task text_classification.
TextArch = Literal["minilm_l6"]
Arch = Literal[get_args(ClassifierArch) + get_args(DetectorArch) + get_args(TextArch)]
Task = Literal["classification", "detection", "text_classification"]
Strategy = Literal["linear_probe", "finetune", "lp_ft", "discriminative", "gradual_unfreeze", "surgical"]
#: Strategies that train a detector too; the others need a classifier's backbone blocks.
DETECTION_STRATEGIES = ("finetune", "linear_probe")
YOLO_STRIDE = 32  # YOLO's deepest feature map is its input shrunk 32 times; the neck joins it to the shallower ones


def image_size_problem(arch: str, image_size: int, field: str) -> str | None:
    """Why `image_size` cannot feed `arch` (None when it can): YOLO needs a multiple of its stride."""
    if arch not in get_args(DetectorArch) or arch.startswith("fasterrcnn") or image_size % YOLO_STRIDE == 0:
        return None
    below = image_size // YOLO_STRIDE * YOLO_STRIDE
    choices = " or ".join(str(n) for n in (below, below + YOLO_STRIDE) if n)
    return (f"{field}={image_size}: {arch} shrinks its input {YOLO_STRIDE} times, so its side must be a multiple of "
            f"{YOLO_STRIDE}; set it to {choices}")
#: Unsupervised domain adaptation methods (`adaptflow.adapt.METHODS`); a test keeps the two in step.
AdaptMethod = Literal["adabn", "dann", "coral", "mcc", "self_training", "shot"]
#: Methods that align the target with the source's labeled images: they need `data.source`.
SOURCE_METHODS = ("dann", "coral")
Precision = Literal["auto", "bf16", "fp16", "off"]
#: Which fine-tune epoch becomes the model: the last, or the best by the target's labeled validation
#: set or by an unsupervised validator (`adaptflow.adapt.VALIDATORS`; a test keeps the two in step).
KeepEpoch = Literal["last", "target_val_accuracy", "information_maximization", "entropy", "snd", "mixval"]


def folder_name_problem(name: str) -> str | None:
    """Why `name` is not a plain folder name (a domain or split under data.root), or None. Anything that
    could lead out of data.root (`..`, a path separator, an absolute path) is refused."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name or Path(name).is_absolute():
        return f"'{name}' is not a plain folder name (no '..', no '/' or '\\', not absolute)"
    return None


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, values are checked on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class WindowConfig(Section):
    """How a single-channel image of more than 8 bits (16-bit PNG or TIFF, 32-bit integer or float TIFF: medical scans, raw
    sensor frames) becomes the 8-bit pixels a model sees: values from low to high map linearly onto 0..255, the rest clip."""

    kind: Literal["percentiles", "values"] = Field(
        "percentiles", description="percentiles: low and high are percentiles of each image's own values (differences of exposure "
        "and gain between images cancel); values: low and high are pixel values, the same for every image (a CT window, a 12-bit "
        "sensor's 0..4095)",
    )
    low: float = Field(0.5, description="The value, or the percentile, that becomes black (0)")
    high: float = Field(99.5, description="The value, or the percentile, that becomes white (255)")

    @model_validator(mode="after")
    def _bounds(self) -> WindowConfig:
        if not self.low < self.high:
            raise ValueError(f"window low={self.low:g} must be below high={self.high:g}; swap them, or widen the window")
        if self.kind == "percentiles" and not 0 <= self.low < self.high <= 100:
            raise ValueError(f"window percentiles low={self.low:g}, high={self.high:g} must lie in 0..100; for pixel values "
                             "set kind to values")
        return self


class DataConfig(Section):
    """Where the domains live and how images are prepared."""

    root: Path = Field(Path("data"), description="Folder tracked by data.dvc holding DOMAIN/SPLIT/CLASS/*.png")
    source: str | None = Field(
        "mnist", description="Source domain folder under root (what the pretrained model saw), for adaptation methods that align "
        "with its labeled images and for the forgetting check; empty when you have only your own (target) data",
    )
    target: str = Field("uci_digits", description="Target domain folder under root (where the model must work)")
    image_size: int = Field(32, ge=8, le=1024, description="Images are resized to image_size x image_size (for YOLO, a multiple of 32)")
    labeled_per_class: int | None = Field(
        None, ge=0, description="Labeled target images per class to train on; empty uses the whole labeled split"
    )
    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Hold out this share of each class of the target's labeled split (at least one image) as a "
        "validation set: not trained on, scored by evaluate (target_val_accuracy), a sweep metric that leaves the test set alone. "
        "A <target>/val folder, when there is one, is the validation set instead (keep this at 0 then)",
    )
    window: WindowConfig | None = Field(
        None, description="Map single-channel images of more than 8 bits (16-bit, 32-bit, float) onto 8 bits this way; the model "
        "records it and applies it when served. Empty refuses such images (8-bit images are used as they are either way)",
    )
    remote: str | None = Field(None, description="DVC remote to push to; empty uses the default remote")
    max_length: int = Field(128, ge=8, le=4096, description="text_classification: a text's tokens beyond this many are cut off")

    @field_validator("source", "target")
    @classmethod
    def _domain_folder(cls, value: str | None) -> str | None:
        problem = folder_name_problem(value) if value is not None else None
        if problem:
            raise ValueError(f"{problem}; name a folder directly under data.root, e.g. uci_digits")
        return value


#: Strategies that give each backbone block `layer_lr_decay` times the learning rate of the block above.
LAYERWISE_STRATEGIES = ("discriminative", "gradual_unfreeze")


def lp_ft_problem(lp_epochs: int, epochs: int) -> str | None:
    """Why lp_ft cannot split `epochs` into `lp_epochs` head-only epochs and full fine-tuning, or None."""
    if 0 < lp_epochs < epochs:
        return None
    return (f"lp_ft needs 0 < lp_epochs < epochs (got lp_epochs={lp_epochs}, epochs={epochs}); lower finetune.lp_epochs or "
            "raise finetune.epochs")


#: The bounds of a training setting that is a share of something (0 to 1) or a factor on a rate (above 0, at most 1).
Share = Annotated[float, Field(ge=0, le=1)]
Factor = Annotated[float, Field(gt=0, le=1)]


class TrainSettings(Section):
    """Every setting of the classifier training loop (`adaptflow.training.fit`), each validated here once. The pretrain and
    finetune sections are this model plus what their stage adds (`TrainConfig`), and reach the loop as they are; its
    torchrun workers get them as JSON, and benchmark budgets and sweep grids are overlays validated by this model."""

    epochs: int = Field(10, ge=1, le=10_000, description="Passes over the training images")
    batch_size: int = Field(64, ge=1, le=65_536, description="Images per optimizer step (the global batch with devices > 1)")
    lr: float = Field(1e-3, gt=0, le=10, description="Learning rate of the head (and of everything when training from scratch)")
    weight_decay: float = Field(1e-4, ge=0, description="Weight decay of the optimizer (pulls weights toward zero; l2sp pulls toward the pretrained ones)")
    optimizer: Literal["adamw", "sgd"] = Field("adamw", description="adamw, or sgd (Nesterov momentum 0.9)")
    augment: bool = Field(False, description="Augment training batches: classifiers random affine (on the device); YOLO Ultralytics' mosaic, colour and scale; Faster R-CNN colour jitter")
    low_resolution: Share = Field(
        0.0, description="Classifiers, with augment: this share of the training images is seen at a random lower resolution "
        "(downsampled to between a quarter of image_size and full, then scaled back up), for a model that holds up on a blurrier or "
        "lower-resolution camera than its training images'",
    )
    seed: int = Field(0, ge=0, description="Seeds data order, augmentation and initialization: the same seed and inputs train the same model on CPU")
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    devices: int = Field(
        1, ge=1, le=1024, description="Train on this many devices: 1 in this process; N > 1 as N data-parallel workers (torchrun + DDP "
        "on CUDA; gloo on CPU, for tests), batch_size staying the global batch (each worker takes 1/N of it)",
    )
    precision: Precision = Field(
        "auto", description="Mixed precision on CUDA: auto picks bf16 where supported (YOLO: Ultralytics' fp16 AMP); off trains in fp32",
    )
    compile: bool = Field(
        False, description="Classifiers: run the training step's model through torch.compile (TorchInductor): slower to start "
        "(about a minute of compiling per phase on a CPU), faster per step on GPUs. On a CPU it needs a C++ compiler. Not with "
        "finetune.methods (their losses run the model themselves)",
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="Also checkpoint every N optimizer steps (0: at the end of each epoch only)"
    )
    strategy: Strategy = Field(
        "finetune",
        description="linear_probe trains the head only; finetune trains all; lp_ft does both in turn; discriminative "
        "trains all with lower rates for lower blocks; gradual_unfreeze unfreezes one block from the top at a time; surgical "
        "trains the head and the first surgical_blocks blocks (for a shift in the input: a new camera, scanner or stain)",
    )
    lp_epochs: int = Field(0, ge=0, description="Head-only epochs before full fine-tuning (lp_ft)")
    backbone_lr_scale: Factor = Field(1.0, description="Backbone learning rate = lr x this")
    layer_lr_decay: Factor = Field(
        0.5, description="discriminative and gradual_unfreeze: each backbone block learns at this x the rate of the block above"
    )
    unfreeze_epochs: int = Field(1, ge=1, description="gradual_unfreeze: epochs between unfreezing one more backbone block")
    surgical_blocks: int = Field(1, ge=1, description="surgical: backbone blocks that train, counted from the input")
    l2sp: float = Field(
        0.0, ge=0, le=1_000, description="Pull toward the pretrained weights (L2-SP): this x half the squared distance from them "
        "joins the loss, so few labels cannot drag the backbone far; 0: off. On the benchmark 0.1 helped with one label per "
        "class and not with five or more",
    )
    methods: list[AdaptMethod] = Field(
        [],
        description="Unsupervised domain adaptation on the target's unlabeled split, applied in order, e.g. [adabn, self_training]; "
        "with methods the model trains on the source's labeled images (when data.source is set) plus labeled_per_class target "
        "images. Without a source: adabn, self_training, mcc and shot (information maximization with the head frozen) adapt "
        "from target images alone; dann and coral need the source",
    )
    adapt_weight: float = Field(1.0, ge=0, description="Weight of each adaptation method's loss term")
    pseudo_label_threshold: Share = Field(0.9, description="self_training: confidence a pseudo-label needs")
    target_batch_size: int = Field(
        0, ge=0, le=65_536, description="Unlabeled target images per step for the methods' losses (dann, coral, mcc, self_training); "
        "0: as many as the labeled batch",
    )
    keep_epoch: str = Field(  # the loop keeps by any score it is given; the finetune section offers those its stage scores
        "last", description="The epoch that becomes the model: the last, or the one scoring highest (scored after every epoch) on "
        "the target's labeled validation set (target_val_accuracy: data.val_fraction or a val folder) or by an unsupervised "
        "validator on its unlabeled split (information_maximization, entropy, snd, mixval)",
    )

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        head, _, index = value.partition(":")
        if head not in {"auto", "cpu", "cuda", "mps"} or (index and not index.isdigit()):
            raise ValueError(f"'{value}' is not a device: use auto, cpu, cuda or cuda:N")
        return value

    @model_validator(mode="after")
    def _phases(self) -> TrainSettings:
        problem = lp_ft_problem(self.lp_epochs, self.epochs) if self.strategy == "lp_ft" else None
        if problem:
            raise ValueError(problem)
        repeated = sorted({m for m in self.methods if self.methods.count(m) > 1})
        if repeated:
            raise ValueError(f"finetune.methods lists {repeated} more than once; list each method once")
        return self

    def devices_problem(self, section: str) -> str | None:
        """What stops `devices` working with the rest of this section (named `section` in the message), or None."""
        if self.devices == 1:
            return None
        if ":" in self.device or self.device == "mps":
            return (f"{section}.devices={self.devices} needs {section}.device auto, cuda or cpu (got '{self.device}'): each worker "
                    f"takes a GPU of its own (pick them with CUDA_VISIBLE_DEVICES), or set {section}.devices=1")
        if self.batch_size < self.devices:
            return (f"{section}.batch_size={self.batch_size} is the global batch, split across {section}.devices={self.devices} "
                    f"workers: raise {section}.batch_size to at least {self.devices} or lower {section}.devices")
        return None

    def methods_problem(self, section: str, workers: int) -> str | None:
        """Why the classifier loop cannot run `methods` on `workers` data-parallel workers, or None."""
        if workers > 1 and self.methods:
            return (f"{section}.methods {self.methods} train on one device only; set {section}.devices=1, or {section}.methods=[] "
                    "to train on several")
        return None

    @classmethod
    def offered(cls) -> list[str]:
        """The fields a person may set in this section (a stage's `fixed` loop settings are not among them)."""
        return [name for name in cls.model_fields if name not in getattr(cls, "fixed", ())]


def setting(name: str, default: Any, description: str | None = None) -> Any:
    """The `TrainSettings` field `name` (its type's bounds included) with another default, and description: for a
    section or a benchmark that starts the loop from other values, without writing the bounds again."""
    extra = {"description": description} if description else {}
    return FieldInfo.merge_field_infos(TrainSettings.model_fields[name], default=default, **extra)


class TrainConfig(TrainSettings):
    """A training stage's section: the loop's settings plus the model it trains."""

    arch: Arch = Field("resnet18", description="Classifier (torchvision) or, with task detection, detector architecture")
    freeze: int = Field(
        0, ge=0, le=1000, description="Detection: keep the first N layers frozen (YOLO; Faster R-CNN: any N freezes its backbone)"
    )
    #: Loop settings this stage does not offer: they keep TrainSettings' defaults, are refused as keys, and its YAML,
    #: form and reference leave them out.
    fixed: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _refuse_fixed(cls, data: Any) -> Any:
        given = [key for key in data if key in cls.fixed] if isinstance(data, dict) else []
        if given:
            raise ValueError(f"{', '.join(given)}: unknown field; remove it (known: {', '.join(cls.offered())})")
        return data

    @model_serializer(mode="wrap")
    def _without_fixed(self, handler: SerializerFunctionWrapHandler) -> dict:
        data = handler(self)
        for key in self.fixed:
            data.pop(key, None)
        return data

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: GetJsonSchemaHandler) -> dict:
        schema = handler(core_schema)
        target = handler.resolve_ref_schema(schema)
        for key in cls.fixed:
            target.get("properties", {}).pop(key, None)
        return schema


class PretrainConfig(TrainConfig):
    """Train a model on the source domain and publish it as a file with its sha256."""

    fixed: ClassVar[tuple[str, ...]] = (
        "strategy", "lp_epochs", "backbone_lr_scale", "layer_lr_decay", "unfreeze_epochs", "surgical_blocks", "l2sp", "methods",
        "adapt_weight", "pseudo_label_threshold", "target_batch_size", "keep_epoch",
    )
    epochs: int = setting("epochs", 4, "Passes over the source training images")
    augment: bool = setting("augment", True, "Augment source batches (random affine for classifiers; see finetune.augment)")
    output: Path = Field(Path("models/source"), description="Folder the source model is published to")


class PretrainedConfig(Section):
    """The model to transfer from."""

    uri: str = Field(
        "models/source/model.pt",
        description="package:NAME (ImageNet weights shipped in a Python package, e.g. package:efficientnet_lite0), "
        "torchvision:ARCH[:WEIGHTS], ultralytics:ASSET.pt, https://HOST/FILE[#MEMBER], models:/NAME@ALIAS (a registered "
        "model) or a local path (e.g. the source model models/source/model.pt)",
    )
    sha256: str | None = Field(None, description="Expected sha256 of the file; downloads are verified against it")
    allow_pickle: bool = Field(
        False, description="Load files holding pickled Python objects (they can run code): only for sources you trust"
    )

    @field_validator("sha256")
    @classmethod
    def _sha(cls, value: str | None) -> str | None:
        if value is not None and (len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower())):
            raise ValueError("sha256 must be 64 hexadecimal characters")
        return value.lower() if value else value


class FinetuneConfig(TrainConfig):
    """Adapt the pretrained model to the labeled target images."""

    strategy: Strategy = setting("strategy", "lp_ft")
    lp_epochs: int = setting("lp_epochs", 5)
    backbone_lr_scale: float = setting("backbone_lr_scale", 0.1)
    epochs: int = setting("epochs", 15, "Fine-tuning epochs in all (lp_ft: lp_epochs of them train the head only)")
    batch_size: int = setting("batch_size", 32, "Labeled images per optimizer step (the global batch with devices > 1)")
    keep_epoch: KeepEpoch = setting("keep_epoch", "last")



class EvaluateConfig(Section):
    """How the adapted model is measured."""

    batch_size: int = Field(512, ge=1, description="Images per forward pass when measuring (memory only: metrics do not depend on it)")


class RegistryConfig(Section):
    """The registry gate: a new version takes the alias `champion` only if it is better."""

    model_name: str = Field("adaptflow-classifier", min_length=1, description="Registered model name")
    metric: str = Field("target_accuracy", description="Metric (higher is better) that decides the champion")
    min_delta: float = Field(0.0, ge=0, description="How much better the challenger must be")
    guard_metric: str | None = Field(
        "source_accuracy", description="A metric the challenger must not lose (forgetting guard); empty: no guard"
    )
    guard_tolerance: float = Field(0.05, ge=0, description="How much of the guard metric the challenger may lose")
    reevaluate_champion: bool = Field(
        True, description="Measure the champion again on today's test sets instead of trusting its recorded metrics"
    )


class TrackingConfig(Section):
    """Where runs are recorded; empty uri uses $MLFLOW_TRACKING_URI or SQLite in the project."""

    uri: str | None = Field(None, description="MLflow tracking URI (http://HOST:PORT of a server, or sqlite:///FILE); empty: $MLFLOW_TRACKING_URI, else mlflow.db in the project")
    experiment: str = Field("adaptflow", min_length=1, description="MLflow experiment the runs are recorded in")


class RunConfig(Section):
    """Everything one run of the pipeline needs."""

    task: Task = Field("classification", description="classification, detection (YOLO-format boxes) or text_classification "
                       "(CSV or JSONL files of text and label)")
    threads: Annotated[Literal["auto"] | int, WithJsonSchema(
        {"anyOf": [{"const": "auto", "type": "string"}, {"type": "integer", "minimum": 1, "maximum": 1024}]})] = Field(
        "auto", description="CPU threads of every stage's process and of the processes it starts (torch, OpenMP, MKL). auto: the "
        "CPUs this process may use (its affinity mask and cgroup CPU quota, not the host's core count) less those other processes "
        "keep busy when the stage starts; or what $OMP_NUM_THREADS says when it is set. Recorded on the run (threads_used). "
        "Float results can differ in the last digits between thread counts: set a number to reproduce a run bit for bit on a "
        "busy machine",
    )
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    pretrained: PretrainedConfig = PretrainedConfig()
    finetune: FinetuneConfig = FinetuneConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    registry: RegistryConfig = RegistryConfig()
    tracking: TrackingConfig = TrackingConfig()

    @field_validator("threads", mode="plain")
    @classmethod
    def _threads(cls, value: object) -> str | int:
        text = str(value).strip()
        if text == "auto":
            return "auto"
        if isinstance(value, bool) or not text.isdigit() or not 1 <= int(text) <= 1024:
            raise ValueError("threads must be auto or a whole number from 1 to 1024, e.g. threads=auto")
        return int(text)

    @model_validator(mode="after")
    def _task(self) -> RunConfig:
        self._check_source()
        packaged = self.pretrained.uri.strip().removeprefix("package:") if self.pretrained.uri.strip().startswith("package:") else None
        if packaged is not None and (packaged in get_args(TextArch)) != (self.task == "text_classification"):
            kind = "a text encoder" if packaged in get_args(TextArch) else "an image model"
            raise ValueError(f"pretrained.uri {self.pretrained.uri} is {kind} but task is {self.task}; set task to "
                             f"{'text_classification' if packaged in get_args(TextArch) else 'classification'}, or pick other "
                             "pretrained weights")
        if self.task == "text_classification":
            self._check_text()
            return self
        detectors = get_args(DetectorArch)
        for name in ("pretrain", "finetune"):
            section: TrainConfig = getattr(self, name)
            arch = section.arch
            if arch in get_args(TextArch):
                raise ValueError(f"{name}.arch '{arch}' is a text encoder but task is {self.task}; set task to text_classification, "
                                 f"or use one of: {', '.join(get_args(ClassifierArch))}")
            if (arch in detectors) != (self.task == "detection"):
                kind = "a detector" if arch in detectors else "a classifier"
                wanted = ", ".join(detectors if self.task == "detection" else get_args(ClassifierArch))
                raise ValueError(f"{name}.arch '{arch}' is {kind} but task is {self.task}; use one of: {wanted}")
            self._check_devices(name, section)
            if section.low_resolution and (self.task == "detection" or not section.augment):
                fix = ("detectors augment in their own way" if self.task == "detection"
                       else f"it is part of augmentation: set {name}.augment=true too")
                raise ValueError(f"{name}.low_resolution={section.low_resolution:g}: {fix}, or {name}.low_resolution=0")
            problem = image_size_problem(arch, self.data.image_size, "data.image_size")
            if problem:
                raise ValueError(problem)
            if section.compile and (arch in detectors or (name == "finetune" and self.finetune.methods)):
                why = "detectors train in their own loops" if arch in detectors else "finetune.methods run the model in their own losses"
                raise ValueError(f"{name}.compile=true compiles the classifier loop's training step, and {why}: set {name}.compile=false")
            if arch in detectors and not arch.startswith("fasterrcnn") and section.precision == "bf16":
                raise ValueError(f"{name}.precision=bf16: Ultralytics trains YOLO in fp16 mixed precision only; set {name}.precision "
                                 "to auto or fp16 (mixed), or off (fp32)")
        if self.task == "detection":
            if self.finetune.strategy not in DETECTION_STRATEGIES:
                raise ValueError(f"finetune.strategy {self.finetune.strategy} is for classifiers; with task detection use "
                                 f"{' or '.join(DETECTION_STRATEGIES)}")
            for key in ("metric", "guard_metric"):
                if "accuracy" in (getattr(self.registry, key) or ""):
                    raise ValueError(f"registry.{key} '{getattr(self.registry, key)}' is a classification metric; with task "
                                     "detection use target_map50 or target_map50_95 (guard: source_map50)")
            if self.finetune.l2sp:
                raise ValueError(f"finetune.l2sp={self.finetune.l2sp:g} pulls a classifier toward its pretrained weights; detectors "
                                 "train in their own loop without it: set it to 0")
            if self.finetune.target_batch_size:
                raise ValueError("finetune.target_batch_size sizes the unlabeled batch of a classifier's methods; a detector's "
                                 "self-training labels the whole unlabeled split: set it to 0")
            unsupported = sorted(set(self.finetune.methods) - {"adabn", "self_training"})
            if unsupported:
                raise ValueError(f"finetune.methods {unsupported} adapt classifiers; with task detection use adabn and/or self_training")
            if self.finetune.keep_epoch != "last":
                raise ValueError(f"finetune.keep_epoch {self.finetune.keep_epoch} scores a classifier's epochs; with task detection "
                                 "set it to last")
            if self.data.window is not None:
                raise ValueError("data.window maps a classifier's images onto 8 bits; detectors read their image files "
                                 "themselves: convert them to 8 bits, and leave data.window empty")
            per_class = {"labeled_per_class": (self.data.labeled_per_class is not None, "empty"),
                         "val_fraction": (self.data.val_fraction > 0, "0")}
            for key, (set_, unset) in per_class.items():
                if set_:
                    raise ValueError(f"data.{key} counts images per class, which detection scenes do not have; "
                                     f"leave it {unset} (the target train split is the labeled part)")
        return self

    def _check_source(self) -> None:
        if self.data.source is not None:
            return
        needs = [m for m in self.finetune.methods if m in SOURCE_METHODS]
        if needs:
            raise ValueError(f"finetune.methods {needs} align the target with the source's labeled images, and data.source is "
                             "empty: set data.source to a domain folder with labeled images, or adapt from target images alone "
                             "with adabn, self_training, mcc or shot")
        if self.task == "detection":
            raise ValueError("data.source is empty: detection needs a source domain (the detector's own data); set data.source")
        if self.registry.guard_metric and self.registry.guard_metric.startswith("source_"):
            raise ValueError(f"registry.guard_metric {self.registry.guard_metric} guards the source domain, and data.source is "
                             "empty: set registry.guard_metric to null (empty), or set data.source")

    def _check_text(self) -> None:
        """What a text classifier cannot do of what the image settings allow (the pretrain section is unused)."""
        ft = self.finetune
        if ft.arch not in get_args(TextArch):
            raise ValueError(f"finetune.arch '{ft.arch}' is an image model but task is text_classification; use one of: "
                             f"{', '.join(get_args(TextArch))}")
        if "adabn" in ft.methods:
            raise ValueError("finetune.methods adabn re-estimates batch-norm statistics on the target, and a transformer has none: "
                             "its LayerNorm normalises each token by that token's own statistics, so there is nothing to re-estimate; "
                             "use mcc, self_training, coral or dann (they act on the pooled sentence embedding)")
        if ft.augment or ft.low_resolution:
            raise ValueError("finetune.augment and finetune.low_resolution transform images; with task text_classification set "
                             "finetune.augment=false and finetune.low_resolution=0")
        if self.data.window is not None:
            raise ValueError("data.window maps image pixels onto 8 bits; with task text_classification leave it empty")
        if ft.devices != 1:
            raise ValueError(f"finetune.devices={ft.devices}: a text classifier trains on one device; set finetune.devices=1")
        for key in ("metric", "guard_metric"):
            if "map50" in (getattr(self.registry, key) or ""):
                raise ValueError(f"registry.{key} '{getattr(self.registry, key)}' is a detection metric; with task "
                                 "text_classification use target_accuracy or target_macro_f1 (guard: source_accuracy)")

    def _check_devices(self, name: str, section: TrainConfig) -> None:
        problem = section.devices_problem(name)
        if problem:
            raise ValueError(problem)
        if section.devices == 1:
            return
        if section.arch.startswith("fasterrcnn"):
            raise ValueError(f"{name}.devices={section.devices}: Faster R-CNN trains on one device; set {name}.devices=1, "
                             "or use a YOLO arch (Ultralytics trains those on several GPUs)")
        if section.arch in get_args(DetectorArch) and section.device == "cpu":
            raise ValueError(f"{name}.devices={section.devices} with {name}.device=cpu: Ultralytics' multi-device training "
                             f"needs CUDA GPUs; set {name}.devices=1 on CPU, or {name}.device=cuda")
        problem = section.methods_problem(name, section.devices) if self.task == "classification" else None
        if problem:  # detectors adapt in their own loops
            raise ValueError(problem)

    def digest(self) -> str:
        """A short content hash of the config, for lineage and cache keys."""
        return content_digest(self.model_dump(mode="json"))


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Read a YAML config (or the defaults) and apply `section.key=value` overrides.

    Raises ConfigError naming the file, the field and what is wrong with it.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            raw = read_yaml(path) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections (data, finetune, ...)")
    for item in overrides:
        _apply_override(raw, item)
    if overrides:
        source = f"{source} + overrides"
    return parse_config(raw, source)


def parse_config(raw: dict[str, Any], source: str = "config") -> RunConfig:
    """Validate a plain dict into a RunConfig, with errors a person can act on."""
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration\n" + explain(exc)) from None


def _apply_override(raw: dict[str, Any], item: str) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' must look like section.key=value, e.g. finetune.epochs=5")
    node = raw
    parts = key.strip().split(".")
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty optional section (data.window: null)
            node[part] = {}
        child = node[part]
        if not isinstance(child, dict):
            raise ConfigError(f"override '{item}': '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = parse_yaml(text, f"override '{item}'") if text.strip() else None


def explain(exc: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A validation error of `model` (default RunConfig) as lines a person can act on: the field, what
    is wrong, and for an unknown field the name it was probably meant to be."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            hint = _suggest(model or RunConfig, err["loc"])
            lines.append(f"  {where}: unknown field{hint}; remove it or fix its name")
        elif not where:  # a check across sections
            lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
        elif isinstance(err.get("input"), dict):  # a check across a section's fields: its message names them
            lines.append(f"  {where}: {err['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def _suggest(model: type[BaseModel], loc: tuple[Any, ...]) -> str:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        sections = [t for t in (field.annotation, *get_args(field.annotation)) if isinstance(t, type) and issubclass(t, BaseModel)] if field else []
        if not sections:  # not a section, nor an optional one (data.window)
            return ""
        model = sections[0]
    known = model.offered() if issubclass(model, TrainSettings) else list(model.model_fields)
    close = difflib.get_close_matches(str(loc[-1]), known, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(known)})"


def dump_params(config: RunConfig, path: str | Path, header: str = "") -> None:
    """Write a config as YAML (the format of params.yaml), after an optional `# comment` header."""
    Path(path).write_text(header + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))

"""Export a trained model to ONNX or TorchScript, checked against PyTorch on real images (or texts) before it is kept.

What is exported takes float32 images scaled to [0, 1], N x 3 x S x S (S: the size the model was
trained at), RGB, resized as training resized them: the normalisation is inside the graph. A
classifier returns logits; a YOLO detector returns Ultralytics' raw head output (N x (4 + classes) x
anchors, boxes as centre x, y, width, height in input pixels), to which non-maximum suppression
applies, as with any Ultralytics export (YOLO goes through Ultralytics' own exporter). Faster R-CNN
returns boxes, labels and scores of one image. A text classifier takes `input_ids` and `attention_mask`
(int64, N x L, any batch and length up to the tokenizer's `max_length`) and returns logits; the
tokenizer stays outside the graph and is written beside the export (NAME.tokenizer.json).

Before the file is kept, the exported model runs (ONNX Runtime for ONNX, torch.jit for TorchScript)
on a batch of real images (a text model: the first texts of its test split) and its outputs are compared with adaptflow's own inference: logits
within `LOGITS_TOLERANCE` (fp32), or boxes matched one to one at IoU >= `BOX_IOU` with the same
classes. A failed check writes nothing. A JSON file beside the export records its opset, input
shape, preprocessing, classes and the check; with a run to attach to (a registered model, a
registered run folder) both are logged as artifacts of the model version's run, under `exports/`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from adaptflow.errors import UserError

log = logging.getLogger(__name__)

FORMATS = {"onnx": ".onnx", "torchscript": ".torchscript"}
#: The ONNX opset of classifiers (torch's exporter, ONNX Runtime 1.16 and later) and Faster R-CNN (torch's TorchScript-based one).
OPSET, FRCNN_OPSET = 18, 17
#: Largest |logit difference| an fp32 export may show, per unit of the largest |logit| (at least 1); an fp16 export must
#: also keep every top-1 class, within HALF_TOLERANCE.
LOGITS_TOLERANCE = 1e-4
HALF_TOLERANCE = 5e-2
#: Boxes of an exported detector must overlap PyTorch's by this IoU, with the same class.
BOX_IOU = 0.99
#: Real images each check runs on, and the score from which a detector's boxes are compared.
CHECK_IMAGES = 16
CHECK_CONF = 0.25
#: Real texts a text classifier's check runs on, tokenized in batches of CHECK_TEXT_BATCH (so batch size and length vary).
CHECK_TEXTS, CHECK_TEXT_BATCH = 32, 8


class ExportError(UserError, ValueError):
    """A model that cannot be exported as asked, or whose export does not match PyTorch; nothing was kept."""


@dataclass(frozen=True)
class ModelSource:
    """A model to export: its file, where it came from, and the MLflow run its exports belong to (or None)."""

    path: Path
    uri: str
    run_id: str | None = None

    @property
    def name(self) -> str:
        """A file name for its exports: NAME-vVERSION for a registered model, the run folder's name, or the file's stem."""
        if self.uri.startswith("models:/"):
            name, version = self.uri.removeprefix("models:/").rsplit("/", 1)
            return f"{name}-v{version}"
        return Path(self.uri).name if Path(self.uri).is_dir() else self.path.stem


@dataclass(frozen=True)
class Exported:
    """An export that passed its check: the file, its description (JSON), and the run it was logged to."""

    path: Path
    metadata: Path
    check: dict[str, Any]
    run_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}


def resolve_model(model: str, tracking_uri: str | None = None) -> ModelSource:
    """`models:/NAME@ALIAS` (or `/VERSION`), a run folder (its `finetune/model.pt`), or a model file."""
    from adaptflow.pretrained import fetch_pretrained

    if model.startswith("models:/"):
        from mlflow import MlflowClient

        ref = fetch_pretrained(model, tracking_uri=tracking_uri, field="MODEL")
        name, version = ref.uri.removeprefix("models:/").rsplit("/", 1)
        run_id = MlflowClient(tracking_uri).get_model_version(name, version).run_id
        return ModelSource(Path(ref.path), ref.uri, run_id)
    path = Path(model)
    if path.is_dir():
        file = path / "finetune" / "model.pt"
        if not file.is_file():
            raise ExportError(f"{path}: a folder without finetune/model.pt; give a run folder (runs/<name>), a model file, "
                              "or models:/NAME@champion")
        registration = path / "register" / "registration.json"
        run_id = json.loads(registration.read_text()).get("run_id") if registration.is_file() else None
        return ModelSource(file, str(path), run_id)
    if not path.is_file():
        raise ExportError(f"{model}: no such file or folder; give models:/NAME@ALIAS, a run folder or a model file")
    return ModelSource(path, str(path), None)


def recorded_test_split(source: ModelSource, tracking_uri: str | None = None) -> Path | None:
    """The target test split the model was measured on, as its run recorded it (`data.root`, `data.target` among the MLflow
    run's params, or a run folder's config.yaml); None when nothing records it."""
    data: dict[str, Any] = {}
    config = source.path.parent.parent / "config.yaml"
    if Path(source.uri).is_dir() and config.is_file():
        import yaml

        data = (yaml.safe_load(config.read_text()) or {}).get("data", {})
    elif source.run_id:
        from mlflow import MlflowClient

        params = MlflowClient(tracking_uri).get_run(source.run_id).data.params
        data = {key: params.get(f"data.{key}") for key in ("root", "target")}
    if not data.get("root") or not data.get("target"):
        return None
    from adaptflow import env

    return env.project_path(data["root"]) / data["target"] / "test"


def read_model(path: Path) -> tuple[str, nn.Module, dict[str, Any]]:
    """("classifier" | "yolo" | "fasterrcnn" | "text", the model in eval mode, its metadata) for an adaptflow model file."""
    from adaptflow.detection.models import CHECKPOINT_FORMAT as DETECTOR, load_detector
    from adaptflow.models import CHECKPOINT_FORMAT as CLASSIFIER, load_checkpoint, load_weights_only
    from adaptflow.text.encoder import TEXT_FORMAT, load_text_checkpoint

    blob = load_weights_only(path, False, "Export the models adaptflow writes (a run's finetune/model.pt, or a registered version)")
    kind = blob.get("format") if isinstance(blob, dict) else None
    if kind == CLASSIFIER:
        model, meta = load_checkpoint(path)
        return "classifier", model.eval(), meta
    if kind == DETECTOR:
        model, meta = load_detector(path)
        return meta["family"], model.eval(), meta
    if kind == TEXT_FORMAT:
        model, meta, _ = load_text_checkpoint(path)
        return "text", model.eval(), meta
    raise ExportError(f"{path}: not an adaptflow model file (a classifier, text classifier or detector checkpoint); export a run's finetune/model.pt "
                      "or a registered version")


def check_images(folder: Path, size: int, window: Any = None, limit: int = CHECK_IMAGES) -> torch.Tensor:
    """The first `limit` images under `folder`, decoded as training decoded them: uint8 N x 3 x size x size."""
    from adaptflow.data.folders import decode_image
    from adaptflow.predict import image_files

    files = image_files(folder)[:limit]
    return torch.from_numpy(np.stack([decode_image(p, size, window) for p in files])).permute(0, 3, 1, 2).contiguous()


def check_texts(split: Path, limit: int = CHECK_TEXTS) -> list[str]:
    """The first `limit` texts of `split`: a CSV or JSONL file with a text column, or a split's path without its suffix
    (`<domain>/test` -> test.csv or test.jsonl), read and checked as training reads splits."""
    from adaptflow.text.data import TEXT_SUFFIXES, read_rows
    from adaptflow.validate import DataValidationError, Report

    files = [split] if split.is_file() else [split.with_suffix(s) for s in TEXT_SUFFIXES if split.with_suffix(s).is_file()]
    if not files:
        raise ExportError(f"{split}: no {split.name}.csv or {split.name}.jsonl to check the text export on; give --images FILE "
                          "(a CSV or JSONL file with a text column)")
    report = Report()
    rows = read_rows(files[0], report, labeled=False)
    if not report.ok:
        raise DataValidationError(report, "found before exporting; nothing was written")
    if not rows.texts:
        raise ExportError(f"{files[0]}: no texts to check the export on; give --images FILE with some")
    return rows.texts[:limit]


def export_model(source: ModelSource, fmt: str, images: Path, output: Path | None = None, *, half: bool = False,
                 dynamic: bool = False, tracking_uri: str | None = None) -> Exported:
    """Export `source` as `fmt`, check it on the images under `images` (the target's test split; a text model: the texts
    of that split's file), write it with its JSON (a text model: and its tokenizer), and log them to the source's run
    when it has one."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: use one of {', '.join(FORMATS)}")
    kind, model, meta = read_model(source.path)
    if half and kind == "text":
        raise ExportError("--half: a text classifier exports in fp32 only; export without --half")
    if half and not torch.cuda.is_available() and kind != "classifier":
        raise ExportError(f"--half: a {kind} exports in fp16 on a CUDA GPU only (Ultralytics and torchvision's detection ops "
                          "run fp16 there); export without --half here, or on a GPU machine")
    output = Path(output or Path("exports") / f"{source.name}{'-fp16' if half else ''}{FORMATS[fmt]}")
    if output.suffix != FORMATS[fmt]:
        output = output.with_suffix(FORMATS[fmt])
    if kind == "text":
        batch: Any = check_texts(images)
    else:
        from adaptflow.data.pixels import recorded_window

        batch = check_images(images, int(meta["image_size"]), recorded_window(meta))
    task = {"classifier": "classification", "text": "text_classification"}.get(kind, "detection")
    tokenizer = output.with_name(f"{output.stem}.tokenizer.json") if kind == "text" else None
    with tempfile.TemporaryDirectory(prefix="adaptflow-export-") as tmp:
        staged = Path(tmp) / output.name
        exporter = {"classifier": _classifier, "yolo": _yolo, "fasterrcnn": _fasterrcnn, "text": _text}[kind]
        info = exporter(model, meta, fmt, staged, batch, half=half, dynamic=dynamic)
        description = {
            "format": fmt, "file": output.name, "model": source.uri, "task": task,
            "family": kind, "arch": meta["arch"], "classes": list(meta["classes"]), "precision": "fp16" if half else "fp32",
            **info, **({"tokenizer": tokenizer.name} if tokenizer else {}),
            "check": {**info["check"], "texts" if tokenizer else "images": str(images), "count": len(batch)},
            "versions": _versions(fmt, kind),
        }
        output.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(staged, output)
    if tokenizer:  # the tokenizer as `tokenizers.Tokenizer.from_file` reads it; truncation and padding as training set them
        tokenizer.write_text(_tokens(meta).tokenizer.to_str())
    metadata = output.with_name(output.name + ".json")
    metadata.write_text(json.dumps(description, indent=2) + "\n")
    if source.run_id:
        from adaptflow.config import TrackingConfig
        from adaptflow.tracking import client

        c = client(TrackingConfig(uri=tracking_uri))
        for path in (output, metadata, *([tokenizer] if tokenizer else [])):
            c.log_artifact(source.run_id, str(path), f"exports/{fmt}")
    log.info("exported %s to %s (%s)", source.uri, output, description["check"]["summary"])
    return Exported(output, metadata, description["check"], source.run_id)


def _versions(fmt: str, kind: str) -> dict[str, str]:
    import importlib.metadata as md

    names = ["torch", *(["onnx", "onnxruntime"] if fmt == "onnx" else []), *(["ultralytics"] if kind == "yolo" else []),
             *(["transformers", "tokenizers"] if kind == "text" else [])]
    return {name: md.version(name) for name in names}


def _preprocessing(meta: dict[str, Any], size: int) -> dict[str, Any]:
    return {"color": "RGB", "resize": f"the whole image to {size} x {size}, bilinear (no crop, no letterbox)",
            "scale": "pixel values / 255 (float in [0, 1])", "layout": "NCHW", "normalization": "inside the model",
            **({"window": meta["window"]} if meta.get("window") else {})}


@contextlib.contextmanager
def _quiet() -> Any:
    """torch's exporters warn about tracing details that do not apply here (constant shapes are intended)."""
    loggers = [logging.getLogger(name) for name in ("onnxscript", "onnx_ir", "torch.onnx")]
    levels = [logger.level for logger in loggers]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for logger in loggers:
            logger.setLevel(logging.WARNING)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels, strict=True):
                logger.setLevel(level)


# --- classifiers ---------------------------------------------------------------------------------


class ScaledInput(nn.Module):
    """A classifier taking images in [0, 1]: the normalisation training applies (`train.Normalizer`) is part of it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD

        self.model = model
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model((images - self.mean) / self.std)


def _classifier(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, images: torch.Tensor, *, half: bool,
                dynamic: bool) -> dict[str, Any]:
    from adaptflow.training import predict

    expected = predict(model, images, device="cpu").numpy()  # what adaptflow's evaluation and serving compute
    net = ScaledInput(model.float().to(memory_format=torch.contiguous_format)).eval()
    dtype = torch.float16 if half else torch.float32
    device = "cuda" if half and torch.cuda.is_available() else "cpu"
    net = net.to(device, dtype)
    size = int(meta["image_size"])
    example = torch.zeros(2 if dynamic else 1, 3, size, size, dtype=dtype, device=device)
    with _quiet(), torch.no_grad():
        if fmt == "onnx":
            shapes = {"images": {0: torch.export.Dim("batch", min=1, max=1024)}} if dynamic else None
            torch.onnx.export(net, (example,), str(path), dynamo=True, opset_version=OPSET, input_names=["images"],
                              output_names=["logits"], dynamic_shapes=shapes, verbose=False, optimize=True,
                              external_data=False)  # one file: weights inside the graph (under 2 GB)
        else:
            torch.jit.trace(net, example).save(str(path))
    run = _runner(fmt, path, device)
    x = images.float().div(255).to(dtype)
    got = np.concatenate([run(x[i : i + 1] if not dynamic else x[i : i + 8]) for i in range(0, len(x), 8 if dynamic else 1)])
    check = _logits_check(fmt, got, expected, HALF_TOLERANCE if half else LOGITS_TOLERANCE, f"{len(x)} images",
                          "Export in fp32 (without --half)" if half else "Report it with the model file")
    shape = ["batch" if dynamic else 1, 3, size, size]
    return {"opset": OPSET if fmt == "onnx" else None, "input": {"name": "images", "shape": shape, "dtype": str(dtype).removeprefix("torch.")},
            "output": {"name": "logits", "shape": [shape[0], len(meta["classes"])], "meaning": "class scores before softmax"},
            "preprocessing": _preprocessing(meta, size),
            "check": check}


def _logits_check(fmt: str, got: np.ndarray, expected: np.ndarray, limit: float, what: str, advice: str) -> dict[str, Any]:
    """The export's logits against PyTorch's: within `limit` of their scale, every top-1 class the same; else ExportError."""
    diff = float(np.abs(got.astype(np.float32) - expected).max())
    agree = float((got.argmax(1) == expected.argmax(1)).mean())
    # float32 sums in another order differ by about 1e-5 of the logits' scale (eager PyTorch at batch 1 and batch 16 by 1e-4
    # on the demo's logits of up to 10): the limit is relative to that scale, and never tighter than LOGITS_TOLERANCE.
    tolerance = limit * max(1.0, float(np.abs(expected).max()))
    summary = f"logits max abs diff {diff:.2e} (limit {tolerance:.2e}), top-1 agreement {agree:.3f} on {what}"
    if diff > tolerance or agree < 1.0:
        raise ExportError(f"the {fmt} export does not match PyTorch: {summary}; nothing was written. {advice}")
    return {"logits_max_abs_diff": diff, "tolerance": tolerance, "top1_agreement": agree, "summary": summary}


def _runner(fmt: str, path: Path, device: str = "cpu"):  # noqa: ANN202 - a function of a batch
    """A function running the exported file on its input tensors (in the graph's order), returning its first output as numpy."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *xs: session.run(None, {n: x.cpu().numpy() for n, x in zip(names, xs, strict=True)})[0]
    loaded = torch.jit.load(str(path), map_location=device)

    def run(*xs: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            out = loaded(*(x.to(device) for x in xs))
        return (out[0] if isinstance(out, tuple | list) else out).float().cpu().numpy()

    return run


# --- text classifiers ----------------------------------------------------------------------------------


class TokenInput(nn.Module):
    """A text classifier taking the tokenizer's `input_ids` and `attention_mask`: the transformer, mean pooling over the
    unmasked tokens, the head (what `TextEncoder` computes from padded ids, with the mask given instead of derived)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.transformer = model.backbone._transformer
        self.head = model.head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        from adaptflow.text.encoder import mean_pool

        hidden = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(mean_pool(hidden, attention_mask))


def _tokens(meta: dict[str, Any]) -> Any:
    from adaptflow.text.encoder import Tokens

    return Tokens(meta["tokenizer"], int(meta["max_length"]), int(meta["pad_id"]), meta["pad_token"])


def _text(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, texts: list[str], *, half: bool,
          dynamic: bool) -> dict[str, Any]:
    from adaptflow.text.stages import predict_ids

    tokens = _tokens(meta)
    expected = predict_ids(model, tokens(texts), tokens.pad_id, device="cpu").numpy()  # what evaluation and serving compute
    net = TokenInput(model.float()).eval()

    def inputs(batch: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = tokens(batch).long()
        return ids, (ids != tokens.pad_id).long()

    # two rows of different lengths: the example carries padding, so no branch on an all-ones mask is traced in
    example = inputs(["a short text", "a longer text, padding the short one with a few more tokens"])
    with _quiet(), torch.no_grad():
        if fmt == "onnx":
            batch, length = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("sequence", min=1, max=tokens.max_length)
            torch.onnx.export(net, example, str(path), dynamo=True, opset_version=OPSET, input_names=["input_ids", "attention_mask"],
                              output_names=["logits"], dynamic_shapes={"input_ids": {0: batch, 1: length}, "attention_mask": {0: batch, 1: length}},
                              verbose=False, optimize=True, external_data=False)
        else:
            torch.jit.trace(net, example).save(str(path))
    run = _runner(fmt, path)
    got = np.concatenate([run(*inputs(texts[i : i + CHECK_TEXT_BATCH])) for i in range(0, len(texts), CHECK_TEXT_BATCH)])
    check = _logits_check(fmt, got, expected, LOGITS_TOLERANCE, f"{len(texts)} texts", "Report it with the model file")
    spec = {"shape": ["batch", "sequence"], "dtype": "int64"}
    return {"opset": OPSET if fmt == "onnx" else None,
            "inputs": [{"name": "input_ids", **spec}, {"name": "attention_mask", **spec}],
            "output": {"name": "logits", "shape": ["batch", len(meta["classes"])], "meaning": "class scores before softmax"},
            "max_length": tokens.max_length, "pad_id": tokens.pad_id, "pad_token": tokens.pad_token,
            "preprocessing": {"tokenizer": "the tokenizer file beside the export (tokenizers.Tokenizer.from_file), truncating at "
                                           "max_length and padding each batch to its longest row with pad_id",
                              "attention_mask": "1 for a token, 0 for padding", "pooling": "inside the model"},
            "check": check}


# --- detectors -------------------------------------------------------------------------------------


def match_boxes(expected: list[dict[str, torch.Tensor]], got: list[dict[str, torch.Tensor]], iou: float = BOX_IOU) -> tuple[int, int]:
    """(boxes matched, boxes in all): each image's boxes paired one to one, same class, by IoU >= `iou` (greedy, best first)."""
    from torchvision.ops import box_iou

    matched = total = 0
    for a, b in zip(expected, got, strict=True):
        total += max(len(a["boxes"]), len(b["boxes"]))
        if not len(a["boxes"]) or not len(b["boxes"]):
            continue
        overlap = box_iou(a["boxes"], b["boxes"]) * (a["labels"][:, None] == b["labels"][None, :])
        while True:
            best = overlap.max()
            if best < iou:
                break
            i, j = divmod(int(overlap.argmax()), overlap.shape[1])
            matched += 1
            overlap[i, :] = 0
            overlap[:, j] = 0
    return matched, total


def _box_check(fmt: str, expected: list[dict[str, torch.Tensor]], got: list[dict[str, torch.Tensor]]) -> dict[str, Any]:
    matched, total = match_boxes(expected, got)
    summary = f"{matched} of {total} boxes matched (IoU >= {BOX_IOU}, same class, score >= {CHECK_CONF}) on {len(expected)} images"
    if matched != total:
        raise ExportError(f"the {fmt} export does not match PyTorch: {summary}; nothing was written")
    if total == 0:
        log.warning("the model finds no box scoring %s or more on the check images: the export's check compared nothing", CHECK_CONF)
    return {"boxes": total, "matched": matched, "iou": BOX_IOU, "conf": CHECK_CONF, "summary": summary}


def _kept(outputs: list[dict[str, torch.Tensor]], conf: float = CHECK_CONF) -> list[dict[str, torch.Tensor]]:
    return [{k: v[o["scores"] >= conf] for k, v in o.items()} for o in outputs]


def _yolo(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, images: torch.Tensor, *, half: bool,
          dynamic: bool) -> dict[str, Any]:
    from adaptflow.detection import yolo

    size = int(meta["image_size"])
    expected = _kept(yolo.predict(model, images, len(images), "cpu", conf=CHECK_CONF))
    native = path.with_name("model.pt")
    yolo.save_ultralytics(native, model, arch=meta["arch"], classes=meta["classes"], image_size=size)
    ultralytics = yolo.ultralytics()
    options = {"simplify": False} if fmt == "onnx" else {}
    with _quiet():
        made = Path(ultralytics.YOLO(str(native), task="detect").export(format=fmt, imgsz=size, half=half, dynamic=dynamic,
                                                                        device=0 if half else "cpu", batch=1, verbose=False, **options))
    shutil.move(made, path)
    from ultralytics.utils.nms import non_max_suppression

    run = _runner(fmt, path, "cuda" if half else "cpu")
    x = images.float().div(255)
    raw = np.concatenate([run(x[i : i + 1].to(torch.float16 if half else torch.float32)).astype(np.float32) for i in range(len(x))])
    with torch.no_grad():  # the head's raw output too: a model that finds no box on the check images is still compared
        reference = model.float().eval()(x)[0].numpy()
    raw_diff = float(np.abs(raw - reference).max())
    raw_limit = (HALF_TOLERANCE if half else LOGITS_TOLERANCE) * max(1.0, float(np.abs(reference).max()))
    if raw_diff > raw_limit:
        raise ExportError(f"the {fmt} export does not match PyTorch: its raw head output differs by up to {raw_diff:.2e} "
                          f"(limit {raw_limit:.2e}); nothing was written")
    got = []
    for det in non_max_suppression(torch.from_numpy(raw), CHECK_CONF, 0.7, max_det=100):
        got.append({"boxes": det[:, :4].clamp(0, size), "scores": det[:, 4], "labels": det[:, 5].long()})
    opset = None
    if fmt == "onnx":
        import onnx

        opset = next(o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx"))
    shape = ["batch" if dynamic else 1, 3, "height" if dynamic else size, "width" if dynamic else size]
    return {"opset": opset, "input": {"name": "images", "shape": shape, "dtype": "float16" if half else "float32"},
            "output": {"name": "output0", "shape": [shape[0], 4 + len(meta["classes"]), "anchors"],
                       "meaning": "Ultralytics' raw head: cx, cy, w, h in input pixels, then one score per class; apply NMS "
                                  "(ultralytics.utils.nms.non_max_suppression, conf 0.25, iou 0.7)"},
            "preprocessing": _preprocessing(meta, size), "ultralytics_weights": "model.pt of the registered version (YOLO(path) loads it)",
            "check": {**_box_check(fmt, expected, got), "raw_max_abs_diff": raw_diff, "raw_limit": raw_limit}}


class _SingleImage(nn.Module):
    """A torchvision Faster R-CNN for one float image 1 x 3 x H x W: (boxes, labels, scores), labels from 0 as adaptflow counts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.model([images[0]])[0]
        return out["boxes"], out["labels"] - 1, out["scores"]


def _fasterrcnn(model: nn.Module, meta: dict[str, Any], fmt: str, path: Path, images: torch.Tensor, *, half: bool,
                dynamic: bool) -> dict[str, Any]:
    from adaptflow.detection import frcnn

    size = int(meta["image_size"])
    expected = _kept(frcnn.predict(model, images, len(images), "cpu"))
    net = _SingleImage(model).eval()
    example = images[:1].float().div(255)
    try:
        with _quiet(), torch.no_grad():
            if fmt == "onnx":
                torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=FRCNN_OPSET, input_names=["images"],
                                  output_names=["boxes", "labels", "scores"],
                                  dynamic_axes={"boxes": {0: "detections"}, "labels": {0: "detections"}, "scores": {0: "detections"}})
            else:
                torch.jit.script(model).save(str(path))
    except Exception as exc:  # noqa: BLE001 - any exporter failure is the refusal the user gets
        raise ExportError(f"Faster R-CNN does not export to {fmt} here ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                          "serve the registered model (mlflow models serve) instead") from None
    got = []
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        for i in range(len(images)):
            boxes, labels, scores = session.run(None, {"images": images[i : i + 1].float().div(255).numpy()})
            got.append({"boxes": torch.from_numpy(boxes), "labels": torch.from_numpy(labels).long(), "scores": torch.from_numpy(scores)})
    else:
        loaded = torch.jit.load(str(path))
        for i in range(len(images)):
            with torch.no_grad():
                out = loaded([images[i].float().div(255)])[1][0]
            got.append({"boxes": out["boxes"], "labels": out["labels"] - 1, "scores": out["scores"]})
    shape = [1, 3, size, size]
    return {"opset": FRCNN_OPSET if fmt == "onnx" else None, "input": {"name": "images", "shape": shape, "dtype": "float32"},
            "output": {"name": "boxes, labels, scores", "shape": [["detections", 4], ["detections"], ["detections"]],
                       "meaning": "xyxy boxes in input pixels, class indices (from 0), scores; NMS is inside the model"},
            "preprocessing": _preprocessing(meta, size), "check": _box_check(fmt, expected, _kept(got))}

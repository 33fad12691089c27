"""A model as the registry holds it: logged to its run as an MLflow pyfunc (the task's serving code, its
checkpoint and, for YOLO, Ultralytics' own weights file), with a signature, pinned pip requirements and a model
card, then registered and passed through the champion gate.

This is the top of the tracking package: it uses the run (`runs`) and registry (`registry`) modules, and it
depends on the serving code (`adaptflow.serving`, `adaptflow.detection.serving`, `adaptflow.text.serving`),
never the other way round.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from adaptflow.config import RegistryConfig, TrackingConfig
from adaptflow.tracking.gate import require_metric
from adaptflow.tracking.registry import champion, gate_version, recorded_metrics
from adaptflow.tracking.runs import log_metrics, set_tags
from adaptflow.tracking.store import TAG, ULTRALYTICS_FILE, client, retrying, scoped_tracking_uri, tracking_uri

log = logging.getLogger(__name__)

#: What every registered model's pyfunc imports besides adaptflow, pinned to the versions it was trained and checked with.
SERVING_PACKAGES = ("torch", "torchvision", "numpy", "pandas", "pillow", "mlflow")
#: What a model of a family needs on top (EfficientNet-Lite is timm's; YOLO is Ultralytics'; the text encoders are
#: transformers models with a fast tokenizer).
FAMILY_PACKAGES = {"efficientnet_lite": ("timm",), "yolo": ("ultralytics",), "minilm": ("transformers", "tokenizers")}


@dataclass(frozen=True)
class Registration:
    """What the registry gate decided for one model version."""

    name: str
    version: str
    alias: str
    decision: str
    reason: str
    run_id: str
    model_uri: str

    def to_dict(self) -> dict:
        return asdict(self)


def register_model(
    cfg: RegistryConfig,
    tracking: TrackingConfig,
    run_id: str,
    checkpoint: str | Path,
    metrics: dict[str, float],
    lineage: dict[str, str],
    artifacts: Iterable[str | Path] = (),
    champion_metrics: dict[str, float] | None = None,
) -> Registration:
    """Log the model to the run, register it, and move aliases through the champion gate.

    Keyed by (run, model hash): calling it again for the same run and model returns the
    version registered the first time, and moves no alias.
    """
    import mlflow
    from mlflow.models import ModelSignature, infer_signature
    from mlflow.types import ColSpec, Schema

    from adaptflow.io import sha256_file

    require_metric(cfg, metrics)
    c = client(tracking)
    model_sha = sha256_file(checkpoint)
    run_key = hashlib.sha256(f"{run_id}:{model_sha}".encode()).hexdigest()[:24]
    existing = c.search_model_versions(f"name='{cfg.model_name}' and tags.`{TAG}run_key`='{run_key}'")
    if existing:
        mv = existing[0]
        log.info("model already registered as %s version %s", cfg.model_name, mv.version)
        return Registration(cfg.model_name, str(mv.version), mv.tags.get(f"{TAG}alias", ""), mv.tags.get(f"{TAG}decision", ""),
                            mv.tags.get(f"{TAG}reason", ""), run_id, f"models:/{cfg.model_name}/{mv.version}")

    log_metrics(tracking, run_id, metrics)
    for path in artifacts:
        c.log_artifact(run_id, str(path))
    serving = _serving(lineage.get("task", "classification"))
    example, spec = _model_input(checkpoint)  # a batch of 2: the batch dimension stays free
    params = getattr(serving, "PARAMS", None)  # inference options a caller may pass, with their defaults
    # Any batch size and any image size: the model resizes to the size it was trained at. The output
    # table's columns are declared (a detector's has no rows for a blank image to infer them from).
    signature = ModelSignature(inputs=Schema([spec]),
                               outputs=Schema([ColSpec(kind, name) for name, kind in serving.COLUMNS.items()]),
                               params=infer_signature(example, params=params).params)

    def log_model(artifacts: dict[str, str]):  # noqa: ANN202
        with mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name="model",
                python_model=str(Path(serving.__file__)),
                artifacts=artifacts,
                signature=signature,
                input_example=example,
                pip_requirements=requirements(checkpoint),
            )

    with model_artifacts(checkpoint) as artifacts, scoped_tracking_uri(tracking_uri(tracking)):
        info = retrying(log_model, artifacts, what="log_model")
    tags = {f"{TAG}{k}": str(v) for k, v in lineage.items()}
    tags |= {f"{TAG}run_key": run_key, f"{TAG}model_sha256": model_sha}
    tags |= {f"{TAG}metric.{k}": repr(float(v)) for k, v in metrics.items()}
    with scoped_tracking_uri(tracking_uri(tracking)):
        version = retrying(mlflow.register_model, info.model_uri, cfg.model_name, tags=tags, what="register_model").version
    before = champion(cfg, tracking)
    alias, decision, reason = gate_version(cfg, tracking, str(version), metrics, champion_metrics, lineage.get("validation_digest", ""))
    compared = (str(before.version), champion_metrics or recorded_metrics(before)) if before is not None else None
    card = model_card(cfg.model_name, str(version), metrics, lineage, compared, decision, reason)
    retrying(c.update_model_version, cfg.model_name, str(version), description=card, what="update_model_version")
    set_tags(tracking, run_id, {"registered_model": f"{cfg.model_name}/{version}", "decision": decision, "reason": reason})
    log.info("%s version %s: %s (%s)", cfg.model_name, version, decision, reason)
    return Registration(cfg.model_name, str(version), alias, decision, reason, run_id, f"models:/{cfg.model_name}/{version}")


def model_card(
    name: str,
    version: str,
    metrics: dict[str, float],
    lineage: dict[str, str],
    champion_before: tuple[str, dict[str, float]] | None,
    decision: str,
    reason: str,
) -> str:
    """A model version's description (markdown, shown on its MLflow page): what it was made from, its metrics
    against the champion it was gated against, and how to load, export and serve it."""
    uri = f"models:/{name}/{version}"
    header = "| metric | this version |" + (f" champion v{champion_before[0]} |" if champion_before else "")
    rows = [header, "|---|---|" + ("---|" if champion_before else "")]
    for key, value in sorted(metrics.items()):
        if isinstance(value, int | float):
            other = champion_before[1].get(key) if champion_before else None
            rows.append(f"| {key} | {value:.4f} |" + ((f" {other:.4f} |" if other is not None else " |") if champion_before else ""))
    source = lineage.get("source_domain") or "none"
    weights = lineage.get("pretrained_uri", "")
    package = f" (package {lineage['pretrained_package']})" if lineage.get("pretrained_package") else ""
    return "\n".join([
        f"**{lineage.get('task', 'classification')}**: `{lineage.get('arch', '')}` adapted to `{lineage.get('target_domain', '')}` "
        f"(source domain: {source}). Gate: **{decision}**: {reason}.",
        "",
        "**Made from**",
        "",
        f"- data: DVC version `{lineage.get('data_version', '')}` of `{lineage.get('data_path', '')}`",
        f"- pretrained weights: `{weights}`{package}, sha256 `{lineage.get('pretrained_sha256', '')}`",
        f"- code: git commit `{lineage.get('git_commit', '')}`, config digest `{lineage.get('config_digest', '')}` "
        f"(the run's config.yaml artifact), started by `{lineage.get('origin', '')}`",
        "",
        "**Metrics**" + (" (the champion's as the gate compared them)" if champion_before else " (no champion before it)"),
        "",
        *rows,
        "",
        "**Use it**",
        "",
        f"- load: `mlflow.pyfunc.load_model(\"{uri}\").predict(images)`: a batch of images of any size, as the model's "
        "signature and input example say; a table of predictions comes back",
        f"- predict a folder: `adaptflow predict FOLDER --model {uri}`",
        f"- export: `adaptflow export {uri} --format onnx`",
        f"- serve: `mlflow models serve -m {uri}`; the current champion, whichever version it is: "
        f"`mlflow models serve -m models:/{name}@champion`",
    ])


def _serving(task: str):  # noqa: ANN202 - a module
    """The pyfunc code file for a task's models (its `COLUMNS` and `PARAMS` shape the signature)."""
    if task == "detection":
        from adaptflow.detection import serving
    elif task == "text_classification":
        from adaptflow.text import serving
    else:
        from adaptflow import serving
    return serving


def _model_input(checkpoint: str | Path):  # noqa: ANN202 - (example, TensorSpec)
    """(an input example, its spec) for an adaptflow model file (classifier or detector), read without building the
    model (MLflow's check of the example loads the model itself): any batch and image size of uint8 RGB images, or
    for a model trained with `data.window`, float32 raw values of single-channel images."""
    import numpy as np
    import torch
    from mlflow.types import TensorSpec

    from adaptflow.data.pixels import recorded_window

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if "tokenizer" in meta:  # a text model: a column of strings
        from adaptflow.text.serving import model_input

        return model_input()
    size = int(meta["image_size"])
    if recorded_window(meta) is not None:
        return np.zeros((2, size, size), dtype=np.float32), TensorSpec(np.dtype(np.float32), (-1, -1, -1))
    return np.zeros((2, size, size, 3), dtype=np.uint8), TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))


@contextlib.contextmanager
def model_artifacts(checkpoint: str | Path) -> Iterator[dict[str, str]]:
    """The files a registered model carries: adaptflow's checkpoint, and for a YOLO detector the same weights as Ultralytics
    saves them (`yolo.save_ultralytics`), so that `YOLO(path)` and the `yolo` command open the registered model."""
    import tempfile

    import torch

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    if meta.get("family") != "yolo":
        yield {"checkpoint": str(checkpoint)}
        return
    from adaptflow.detection import yolo
    from adaptflow.detection.models import load_detector

    model, meta = load_detector(checkpoint)
    with tempfile.TemporaryDirectory(prefix="adaptflow-ultralytics-") as tmp:
        native = yolo.save_ultralytics(Path(tmp) / ULTRALYTICS_FILE, model, arch=meta["arch"], classes=meta["classes"],
                                       image_size=int(meta["image_size"]))
        yield {"checkpoint": str(checkpoint), "ultralytics": str(native)}


def requirements(checkpoint: str | Path) -> list[str]:
    """The pip requirements of a registered model: adaptflow at this exact version (a wheel of the project:
    `pip wheel --no-deps .`, from your package index or `--find-links`), and pinned, the packages its serving code
    imports and the ones its architecture needs (timm for EfficientNet-Lite, ultralytics for YOLO, transformers for text)."""
    import importlib.metadata as md

    import torch

    meta = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    arch = str(meta.get("arch", ""))
    family = meta.get("family") or next((key for key in FAMILY_PACKAGES if arch.startswith(key)), "")
    names = (*SERVING_PACKAGES, *FAMILY_PACKAGES.get(family, ()))
    return [f"adaptflow=={md.version('adaptflow')}", *(f"{name}=={md.version(name).split('+')[0]}" for name in names)]

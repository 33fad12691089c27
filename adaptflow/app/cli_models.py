"""The model commands: `adaptflow fetch`, `predict`, `export` and `adaptflow registry ...` (list, promote, roll back)."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from adaptflow.app.cli_common import (
    DEFAULT_CONFIG, MODELS, ConfigOption, JsonOption, Overrides, app, read_config, registry_app, show, tracked_config,
)


@registry_app.command("list")
def registry_list(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, as_json: JsonOption = False) -> None:
    """Every version with its aliases, metrics, data version and gate decision."""
    from adaptflow.console import print_rows
    from adaptflow.tracking.registry import versions

    cfg = tracked_config(config, overrides)
    rows = versions(cfg.registry, cfg.tracking)
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
    elif not rows:
        typer.echo(f"{cfg.registry.model_name}: no versions")
    else:
        print_rows(rows)


@registry_app.command("promote")
def registry_promote(
    version: str,
    reason: Annotated[str, typer.Option(help="Why, recorded on the version")] = "promoted by hand",
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
) -> None:
    """Make VERSION the champion (the one it replaces is remembered for rollback)."""
    from adaptflow.tracking.registry import promote

    cfg = tracked_config(config, overrides)
    previous = promote(cfg.registry, cfg.tracking, version, reason)
    if previous == version:
        typer.echo(f"{cfg.registry.model_name}: v{version} is already the champion; nothing changed")
    else:
        typer.echo(f"{cfg.registry.model_name}: champion v{previous or '-'} -> v{version}")


@registry_app.command("rollback")
def registry_rollback(
    reason: Annotated[str, typer.Option(help="Why, recorded on both versions")],
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
) -> None:
    """Move the champion alias back to the version the current champion replaced."""
    from adaptflow.tracking.registry import rollback

    cfg = tracked_config(config, overrides)
    old, new = rollback(cfg.registry, cfg.tracking, reason)
    typer.echo(f"{cfg.registry.model_name}: champion v{old} -> v{new} ({reason})")


@app.command(rich_help_panel=MODELS)
def fetch(
    uri: Annotated[str, typer.Argument(help="package:NAME, torchvision:ARCH[:WEIGHTS], ultralytics:ASSET.pt, an http(s) URL, "
                                            "models:/NAME@ALIAS or a local path")],
    sha256: Annotated[str | None, typer.Option(help="expected sha256")] = None,
    from_file: Annotated[Path | None, typer.Option("--from", help="torchvision: import this copy of the weights (offline), "
                                                   "checked against the published hash")] = None,
    as_json: JsonOption = False,
) -> None:
    """Resolve a pretrained URI to a verified local file and print where it is."""
    from adaptflow.weights import fetch_pretrained, import_torchvision

    ref = import_torchvision(uri, from_file) if from_file is not None else fetch_pretrained(uri, sha256)
    show(ref.to_dict(), as_json, "pretrained weights")


@app.command("predict", rich_help_panel=MODELS)
def predict_images(
    images: Annotated[Path, typer.Argument(help="Folder of images to classify or detect objects in (any depth), or a CSV or JSONL file with a text column for a text classifier")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV (or .json) to write: path, class, score; a detector adds "
                                         "x1, y1, x2, y2 in the image's pixels, one row per box")] = Path("predictions.csv"),
    model: Annotated[str | None, typer.Option(help="models:/NAME@ALIAS or /VERSION, a run folder, a model file or an exported .onnx; "
                                              "default: the registry's champion")] = None,
    conf: Annotated[float, typer.Option(min=0.0, max=1.0, help="Detectors: the lowest score of a box written")] = 0.25,
    save_images: Annotated[Path | None, typer.Option(help="Detectors: a folder for copies of the images with their boxes drawn")] = None,
    check: Annotated[bool, typer.Option("--check/--no-check", help="Check whether the images look like the target's test split "
                                        "(data.target), on the model's features")] = True,
    batch_size: Annotated[int, typer.Option(min=1)] = 256,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N")] = "auto",
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
) -> None:
    """Classify every image under IMAGES, or detect objects in it, with a registered or local model (or an exported ONNX
    file), decoded as training decoded its images."""
    from adaptflow.data import split_dir
    from adaptflow.predict import CHECK_MIN_IMAGES, model_kind, predict_any
    from adaptflow.weights import fetch_pretrained
    from adaptflow.tracking.store import require_server, tracking_uri

    cfg = read_config(config, overrides)
    uri = model or f"models:/{cfg.registry.model_name}@champion"
    if uri.startswith("models:/"):
        require_server(cfg.tracking)
    if Path(uri).is_dir() and (Path(uri) / "finetune" / "model.pt").is_file():  # a run folder
        uri = str(Path(uri) / "finetune" / "model.pt")
    if not uri.endswith(".onnx"):
        ref = fetch_pretrained(uri, tracking_uri=tracking_uri(cfg.tracking), field="--model")
        path, uri = ref.path, ref.uri
    else:
        path = uri
    from adaptflow.text.predict import is_text_input, predict_file

    if is_text_input(images):  # a CSV or JSONL file of texts, for a text classifier
        counts = predict_file(path, images, output, batch_size)
        typer.echo(f"{counts.total()} texts -> {output} ({uri}): " + ", ".join(f"{c} {n}" for c, n in sorted(counts.items())))
        return
    reference = split_dir(cfg.data, cfg.data.target, "test")
    detector = model_kind(path) != "classifier"
    result = predict_any(path, images, output, batch_size=batch_size, device=device, conf=conf, save_images=save_images,
                         reference=reference if check and reference.is_dir() else None)
    counted = "boxes" if detector else "images"
    typer.echo(f"{result.counts.total()} {counted} -> {output} ({uri}): " + ", ".join(f"{c} {n}" for c, n in sorted(result.counts.items())))
    if save_images is not None:
        typer.echo(f"images with their boxes drawn: {save_images}")
    if result.check is not None:
        if not detector:
            typer.echo(f"mean score {result.mean_score:.3f} (on {result.check.reference}: {result.check.reference_mean_score:.3f}; "
                       "scores stay high on images from another domain)")
        typer.echo(str(result.check))
    elif check:
        typer.echo(f"no domain check: it compares with {reference}, leaving out the images predicted, and needs "
                   f"{CHECK_MIN_IMAGES} or more on each side")


class ExportFormat(str, Enum):
    """What `adaptflow export` writes."""

    onnx = "onnx"
    torchscript = "torchscript"


@app.command("export", rich_help_panel=MODELS)
def export_model(
    model: Annotated[str, typer.Argument(help="models:/NAME@ALIAS or /VERSION, a run folder (runs/NAME), or a model file")],
    format: Annotated[ExportFormat, typer.Option("--format", "-f", help="onnx or torchscript")] = ExportFormat.onnx,  # noqa: A002
    half: Annotated[bool, typer.Option("--half", help="fp16 weights and inputs (detectors: on a CUDA GPU)")] = False,
    dynamic: Annotated[bool, typer.Option("--dynamic", help="Any batch size (YOLO: and image size) instead of batch 1")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="File to write (default: exports/NAME.onnx)")] = None,
    images: Annotated[Path | None, typer.Option(help="Real images (a text model: a CSV or JSONL file of texts) to check the export "
                                                     "on (default: the target test split the model's run recorded, else data.target's)")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
) -> None:
    """Export a classifier, text classifier or detector to ONNX or TorchScript, checked against PyTorch on real images or
    texts, and log it to the model version's run (exports/FORMAT/, with a JSON of its opset, inputs and preprocessing; a
    text model's tokenizer beside it)."""
    from adaptflow.data import split_dir
    from adaptflow.export import export_model as export, recorded_test_split, resolve_model
    from adaptflow.tracking.store import require_server, tracking_uri

    cfg = read_config(config, overrides)
    if model.startswith("models:/"):
        require_server(cfg.tracking)
    uri = tracking_uri(cfg.tracking)
    source = resolve_model(model, uri)
    folder = images or recorded_test_split(source, uri) or split_dir(cfg.data, cfg.data.target, "test")
    result = export(source, format.value, folder, output, half=half, dynamic=dynamic, tracking_uri=uri)
    typer.echo(f"{result.path} ({result.metadata.name}): check passed, {result.check['summary']}")
    if result.run_id:
        typer.echo(f"logged to MLflow run {result.run_id} under exports/{format.value}/")

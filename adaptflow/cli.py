"""The `adaptflow` command: stages for DVC (no orchestrator), flows for Prefect, and the demo.

Every command that takes a config reads `params.yaml` (or `--config FILE`) and then applies
`section.key=value` overrides, e.g. `adaptflow run transfer finetune.epochs=5`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from adaptflow import env
from adaptflow.errors import EXIT_CODES, ExitCode, RunFailed, ServiceUnavailable, UserError, exit_code_of

#: The help's panels, in the order it lists them.
PANELS = RUN, STAGES, DATA, MODELS, BENCHMARK, OPS = ("Run", "Stages (one step, no orchestrator: what dvc.yaml runs)", "Data",
                                                      "Models", "Benchmark and sweeps", "Operations")
EPILOG = "Exit status: " + "; ".join(f"{int(code)} {meaning.split(':')[0]}" for code, meaning in EXIT_CODES.items()) + \
         " (docs/cli.md). Shell completion: adaptflow --install-completion."



class _PanelOrder(TyperGroup):
    """Lists commands panel by panel (in PANELS' order), each panel's in the order they are defined."""

    def list_commands(self, ctx: typer.Context) -> list[str]:
        rank = {panel: i for i, panel in enumerate(PANELS)}
        return sorted(super().list_commands(ctx), key=lambda name: rank.get(getattr(self.commands[name], "rich_help_panel", None), len(rank)))


app = typer.Typer(cls=_PanelOrder, no_args_is_help=True, add_completion=True, help=__doc__, epilog=EPILOG)
data_app = typer.Typer(no_args_is_help=True, help="Build, version and add to the data.")
app.add_typer(data_app, name="data", rich_help_panel=DATA)
registry_app = typer.Typer(no_args_is_help=True, help="The model registry: list versions, promote, roll back.")
app.add_typer(registry_app, name="registry", rich_help_panel=MODELS)
stack_app = typer.Typer(no_args_is_help=True, help="The production stack on 127.0.0.1 (PostgreSQL, S3, the Prefect and MLflow "
                                                   "servers, a worker): up, status, down.")
app.add_typer(stack_app, name="stack", rich_help_panel=OPS)

ConfigOption = Annotated[Path, typer.Option("--config", "-c", help="YAML config (params.yaml format)")]
Overrides = Annotated[list[str] | None, typer.Argument(help="section.key=value overrides", show_default=False)]
RunDir = Annotated[Path, typer.Option("--run-dir", help="Run folder the stage reads and writes")]

DEFAULT_CONFIG = Path("params.yaml")
DETECTION_CONFIG = Path("configs/detection.yaml")
IMAGENET_CONFIG = Path("configs/imagenet.yaml")


class Split(str, Enum):
    """The splits of a domain the pipeline reads."""

    train = "train"
    val = "val"
    test = "test"
    unlabeled = "unlabeled"


def _config(path: Path, overrides: list[str] | None):  # noqa: ANN202 - RunConfig, imported lazily
    from adaptflow.config import load_config

    return load_config(path if path.exists() or path != DEFAULT_CONFIG else None, overrides or [])


def _stage_config(path: Path, overrides: list[str] | None):  # noqa: ANN202 - RunConfig, imported lazily
    """The config of a command that computes: this process, and those it starts, get its thread budget (`threads`)."""
    cfg = _config(path, overrides)
    env.apply_threads(cfg.threads)
    return cfg


def _tracked_config(path: Path, overrides: list[str] | None):  # noqa: ANN202 - RunConfig, imported lazily
    """The config of a command that talks to MLflow, whose server is checked to answer first."""
    from adaptflow.tracking.store import require_server

    cfg = _config(path, overrides)
    require_server(cfg.tracking)
    return cfg


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts) instead of a table")]


def _usage(option: str, message: str) -> None:
    """An option that cannot work as written: exit 2 with the usage, as for an unknown option."""
    raise typer.BadParameter(message, param_hint=option)


#: What the command line itself raises to end a command (typer vendors its own click).
_COMMAND_LINE_EXITS = (typer.Exit, typer.Abort, next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


@contextmanager
def _run_failures() -> Iterator[None]:
    """Inside a stage or flow, an error that is not the user's input (a UserError) is a failed run: exit 6."""
    try:
        yield
    except (UserError, FileNotFoundError, *_COMMAND_LINE_EXITS):
        raise
    except Exception as exc:
        raise RunFailed(f"{type(exc).__name__}: {exc}") from exc


def _show(result: dict, as_json: bool, title: str = "") -> None:
    """A command's result: a table on a terminal or by default, JSON with --json."""
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    from adaptflow.console import print_mapping

    print_mapping(result, title)


def _servers_answer(tracking) -> None:  # noqa: ANN001 - TrackingConfig
    """Before a flow starts: the Prefect server and the MLflow server it reports to answer (where set)."""
    from adaptflow.tracking.store import require_server

    _prefect_api()
    require_server(tracking)


def _prefect_api(required: str = "", outcome: str = "") -> str | None:
    """The Prefect API the flows report to (PREFECT_API_URL, from the environment or the active Prefect
    profile), checked to answer before any work; None when unset: the flows start a temporary local
    one, unless `required` says why this command needs a server. `outcome`: what a failed check left undone."""
    from prefect.settings import get_current_settings

    from adaptflow.io import unreachable

    url = get_current_settings().api.url
    if not url:
        if required:
            raise ServiceUnavailable(f"{required} needs a Prefect server: start one (`make ui`) and export "
                                     "PREFECT_API_URL=http://127.0.0.1:4200/api")
        return None
    reason = unreachable(f"{url.rstrip('/')}/health")
    if reason:
        raise ServiceUnavailable(f"no Prefect server answers at PREFECT_API_URL={url} ({reason}); start it (`make ui`, or "
                                 f"`make stack`), or unset PREFECT_API_URL to run on a temporary local server{outcome}")
    return url


@data_app.command("build")
def data_build(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    force: Annotated[bool, typer.Option(help="Replace domain folders even where they hold files the build does not write")] = False,
) -> None:
    """Build the demo domains under data.root, byte-identical every time: MNIST -> UCI digits
    (classification) and digit scenes on flat backgrounds -> on photographs (detection)."""
    from adaptflow.data import build_all

    cfg = _config(config, overrides)
    typer.echo(f"built {build_all(env.project_path(cfg.data.root), force=force)}")


@data_app.command("version")
def data_version(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, push: bool = True, as_json: JsonOption = False) -> None:
    """`dvc add` and `dvc push` the data folder; print its version."""
    from adaptflow.versioning import version_data

    _show(version_data(_config(config, overrides).data, push=push).to_dict(), as_json, "data version")


@data_app.command("add")
def data_add(
    source: Annotated[Path, typer.Argument(help="Folder of new labeled images: CLASS/IMAGE, or images/ and labels/ for detection")],
    split: Annotated[Split, typer.Option(help="Split to add them to")] = Split.train,
    domain: Annotated[str | None, typer.Option(help="Domain folder to add them to (default: data.target; e.g. the source)")] = None,
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
) -> None:
    """Add new labeled images to a domain (the target by default), then announce it (a Prefect event that triggers retraining)."""
    from adaptflow.data import split_dir
    from adaptflow.data.ingest import add_images
    from adaptflow.detection.ingest import add_detection_images

    # Another domain is added to as the config's target would be: its name is checked as data.target is.
    cfg = _config(config, [*(overrides or []), *([f"data.target={domain}"] if domain else [])])
    target = cfg.data.target
    api = _prefect_api(outcome="; nothing was added")  # first: a retry after a lost announcement would add nothing, and announce nothing
    dest = split_dir(cfg.data, target, split.value)
    if cfg.task == "detection":
        from adaptflow.detection.data import read_names

        added = add_detection_images(source, dest, len(read_names(dest.parent)))
    else:
        added = add_images(source, dest, cfg.data.window)
    typer.echo(f"added {sum(added.values())} images to {target}/{split.value}: {added}")
    if not added:
        return
    if api is None:
        typer.echo("no PREFECT_API_URL: no event sent; run `adaptflow run retrain` to retrain on it")
        return
    from prefect.events import emit_event

    emit_event(
        event="adaptflow.data.added",
        resource={"prefect.resource.id": f"adaptflow.data.{target}", "prefect.resource.name": target},
        payload={"split": split.value, "added": added},
    )
    typer.echo("event adaptflow.data.added sent: the retrain deployment will pick it up")


@data_app.command("import")
def data_import(
    target: Annotated[Path, typer.Argument(help="Your dataset: split folders (train and test; also unlabeled, val; or names such as "
                                                "train_labeled, testing) of class folders of images")],
    name: Annotated[str, typer.Option(help="The dataset's name: its domain folder, its config (configs/NAME.yaml), its registered model")],
    source: Annotated[Path | None, typer.Option(help="A source domain's folder (labeled, the same classes): pretrain on it, then adapt; "
                                                     "without it, runs start from ImageNet weights")] = None,
    split: Annotated[list[str] | None, typer.Option(help="THEIRS=OURS maps a split folder (OURS: train, unlabeled, test, val)")] = None,
    overrides: Overrides = None,
) -> None:
    """Make your folders a dataset of the project: copied under data.root with the split names the pipeline reads, checked,
    and given a config whose linked settings agree; then it prints the commands that train and register it."""
    from adaptflow.data.importer import DatasetImportError, import_dataset

    mapping = {}
    for item in split or []:
        theirs, sep, ours = item.partition("=")
        if not sep or not theirs or not ours:
            raise DatasetImportError(f"--split '{item}': write THEIRS=OURS, e.g. --split train_labeled=train")
        mapping[theirs] = ours
    imported = import_dataset(name, target, source, mapping, overrides or [])
    for domain, counts in imported.domains.items():
        typer.echo(f"{domain}: " + ", ".join(f"{split} {n}" for split, n in counts.items()) + " images")
    config = imported.config.relative_to(env.project_root())
    typer.echo(f"config {config} (registered model: {name})\nnext:")
    if imported.source:
        typer.echo(f"  adaptflow run pretrain -c {config}     # the source model, on {imported.source}")
    typer.echo(f"  adaptflow run transfer -c {config}     # fine-tune, evaluate, register")


@registry_app.command("list")
def registry_list(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, as_json: JsonOption = False) -> None:
    """Every version with its aliases, metrics, data version and gate decision."""
    from adaptflow.console import print_rows
    from adaptflow.tracking.registry import versions

    cfg = _tracked_config(config, overrides)
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

    cfg = _tracked_config(config, overrides)
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

    cfg = _tracked_config(config, overrides)
    old, new = rollback(cfg.registry, cfg.tracking, reason)
    typer.echo(f"{cfg.registry.model_name}: champion v{old} -> v{new} ({reason})")


@app.command(rich_help_panel=OPS)
def serve(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    cron: Annotated[str, typer.Option(help="Retraining schedule (cron, UTC)")] = "0 2 * * *",
    schedule: Annotated[bool, typer.Option("--schedule/--no-schedule", help="Turn the retraining schedule on")] = False,
    detection: Annotated[Path, typer.Option(help="Detection config; its deployments are served too when the file exists")] = DETECTION_CONFIG,
    imagenet: Annotated[Path, typer.Option(help="Config of the runs that start from ImageNet weights; its deployments are served "
                                                "too when the file exists")] = IMAGENET_CONFIG,
) -> None:
    """Serve the pretrain, transfer, retrain (also -detection and -imagenet), benchmark and sweep deployments from this process
    (needs PREFECT_API_URL)."""
    _prefect_api(required="serve")
    from adaptflow.config import load_config
    from flows.deployments import serve as serve_deployments

    serve_deployments(_config(config, overrides), cron, schedule, load_config(detection) if detection.exists() else None,
                      load_config(imagenet) if imagenet.exists() else None)


def prefect_server_env(host: str, port: int) -> dict[str, str]:
    """Settings for a Prefect server on `host:port` whose UI calls its API on that same port: by default the UI
    asks PREFECT_API_URL (often another server's, exported earlier) or port 4200, and then shows only an error."""
    address = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # a browser cannot call 0.0.0.0
    base = f"http://{address}:{port}"
    return {"PREFECT_SERVER_API_HOST": host, "PREFECT_SERVER_API_PORT": str(port), "PREFECT_API_URL": f"{base}/api",
            "PREFECT_UI_API_URL": f"{base}/api", "PREFECT_UI_URL": base}


@app.command(rich_help_panel=OPS)
def ui(
    prefect_port: int = 4200,
    mlflow_port: int = 5000,
    host: Annotated[str, typer.Option(help="Address to bind; keep 127.0.0.1 unless you mean to expose them")] = "127.0.0.1",
) -> None:
    """Start the Prefect server and the MLflow UI on the project's stores; Ctrl-C stops both."""
    import subprocess

    from adaptflow.config import TrackingConfig
    from adaptflow.tracking.store import tracking_uri

    bin_dir = Path(sys.executable).parent
    procs = [
        subprocess.Popen([str(bin_dir / "prefect"), "server", "start", "--host", host, "--port", str(prefect_port)],
                         env=os.environ | prefect_server_env(host, prefect_port)),
        # One worker process (MLflow's default is four) serves one person's browser.
        subprocess.Popen([str(bin_dir / "mlflow"), "ui", "--backend-store-uri", tracking_uri(TrackingConfig()),
                          "--default-artifact-root", env.default_artifact_location(), "--host", host, "--port", str(mlflow_port),
                          "--workers", "1"], env=env.MLFLOW_SERVER_DEFAULTS | os.environ),
    ]
    def stop(*_: object) -> None:
        raise KeyboardInterrupt  # a terminated `adaptflow ui` stops its servers too

    signal.signal(signal.SIGTERM, stop)
    typer.secho(f"Prefect UI: http://{host}:{prefect_port}    MLflow UI: http://{host}:{mlflow_port}", bold=True)
    typer.echo(f"Point flows and `adaptflow serve` at this server: export PREFECT_API_URL=http://{host}:{prefect_port}/api")
    try:
        for proc in procs:
            proc.wait()
    except KeyboardInterrupt:
        pass
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


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
    from adaptflow.pretrained import fetch_pretrained, import_torchvision

    ref = import_torchvision(uri, from_file) if from_file is not None else fetch_pretrained(uri, sha256)
    _show(ref.to_dict(), as_json, "pretrained weights")


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
    from adaptflow.pretrained import fetch_pretrained
    from adaptflow.tracking.store import require_server, tracking_uri

    cfg = _config(config, overrides)
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

    cfg = _config(config, overrides)
    if model.startswith("models:/"):
        require_server(cfg.tracking)
    uri = tracking_uri(cfg.tracking)
    source = resolve_model(model, uri)
    folder = images or recorded_test_split(source, uri) or split_dir(cfg.data, cfg.data.target, "test")
    result = export(source, format.value, folder, output, half=half, dynamic=dynamic, tracking_uri=uri)
    typer.echo(f"{result.path} ({result.metadata.name}): check passed, {result.check['summary']}")
    if result.run_id:
        typer.echo(f"logged to MLflow run {result.run_id} under exports/{format.value}/")


@app.command("validate", rich_help_panel=DATA)
def validate_data(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    data_only: Annotated[bool, typer.Option("--data-only", help="Check only the data folders a run reads (before a source model, "
                                                              "server or GPU exists)")] = False,
) -> None:
    """Check the data and config before spending compute; exit 3 listing each problem and its fix (4: only the tracking
    server does not answer)."""
    from adaptflow.validate import validate

    report = validate(_config(config, overrides), "data" if data_only else "transfer")
    typer.echo(f"ok: {report.checked_files} images checked, {len(report.warnings)} warnings")


@app.command(rich_help_panel=STAGES)
def pretrain(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, run_dir: RunDir = Path("outputs"),
             as_json: JsonOption = False) -> None:
    """Stage: train the source model and publish it to pretrain.output (no orchestrator)."""
    from adaptflow.pipeline import run_pretrain
    from adaptflow.versioning import read_version

    from adaptflow.validate import validate

    cfg = _stage_config(config, overrides)
    validate(cfg, "pretrain")
    with _run_failures():
        published = run_pretrain(cfg, run_dir, read_version(cfg.data), origin="cli")
    _show(published.to_dict(), as_json, "published source model")


@app.command(rich_help_panel=STAGES)
def finetune(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, run_dir: RunDir = Path("outputs"),
             as_json: JsonOption = False) -> None:
    """Stage: fetch the pretrained model and fine-tune it on the target (no orchestrator)."""
    cfg = _stage_config(config, overrides)
    if cfg.task == "detection" and cfg.finetune.arch.startswith("yolo"):
        from adaptflow import child

        env.apply()  # the environment the trainer's process would get, set before it starts
        child.prestart(run_dir / "finetune", "adaptflow.detection.yolo:ultralytics")  # its imports overlap this one's and the checks
    from adaptflow.pipeline import write_run_record
    from adaptflow.pretrained import fetch_pretrained
    from adaptflow.stages import for_task
    from adaptflow.tracking.store import tracking_uri
    from adaptflow.validate import validate
    from adaptflow.versioning import read_version

    validate(cfg, "finetune")
    pretrained = fetch_pretrained(cfg.pretrained.uri, cfg.pretrained.sha256, allow_pickle=cfg.pretrained.allow_pickle, tracking_uri=tracking_uri(cfg.tracking))
    with _run_failures():
        write_run_record(cfg, read_version(cfg.data), pretrained, run_dir, origin="cli")
        model = for_task(cfg.task).finetune(cfg.finetune, cfg.data, pretrained, run_dir / "finetune")
    _show(model.to_dict(), as_json, "fine-tuned model")


@app.command(rich_help_panel=STAGES)
def evaluate(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, run_dir: RunDir = Path("outputs"),
             as_json: JsonOption = False) -> None:
    """Stage: measure the fine-tuned model of a run folder (no orchestrator)."""
    from adaptflow.pipeline import read_run_record
    from adaptflow.pretrained import PretrainedRef
    from adaptflow.stages import for_task

    cfg = _stage_config(config, overrides)
    pretrained = PretrainedRef(**read_run_record(run_dir)["pretrained"])
    with _run_failures():
        metrics = for_task(cfg.task).evaluate(cfg.evaluate, cfg.data, run_dir / "finetune" / "model.pt", pretrained, run_dir / "evaluate",
                                              cfg.finetune.device)
    _show(metrics, as_json, "metrics")


@app.command(rich_help_panel=STAGES)
def register(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", "--from-run-dir", help="Finished run folder to register")] = Path("outputs"),
    as_json: JsonOption = False,
) -> None:
    """Stage: register a run folder's model in MLflow through the champion gate (safe to repeat)."""
    from adaptflow.pipeline import register_run

    cfg = _stage_config(config, overrides)  # an unreachable store fails with the command that registers the run later
    with _run_failures():
        registration = register_run(cfg, run_dir)
    _show(registration.to_dict(), as_json, "registration")


class Flow(str, Enum):
    """The flows `adaptflow run` starts."""

    pretrain = "pretrain"
    transfer = "transfer"
    retrain = "retrain"


@app.command(rich_help_panel=RUN)
def run(
    flow: Annotated[Flow, typer.Argument(help="The flow: pretrain (the source model), transfer (fine-tune, evaluate, register) "
                                              "or retrain (transfer when the data changed)")],
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    as_json: JsonOption = False,
) -> None:
    """Run a Prefect flow (ephemeral local API unless PREFECT_API_URL is set)."""
    cfg = _stage_config(config, overrides)
    result = _run_flow(flow, cfg)
    _show(result, as_json, f"{flow.value} flow")


def _run_flow(flow: Flow, cfg) -> dict:  # noqa: ANN001 - RunConfig
    _servers_answer(cfg.tracking)  # the flows check MLflow too (their first task); here it costs no server start
    if flow is Flow.transfer:
        from flows.transfer import transfer as flow_fn
    elif flow is Flow.pretrain:
        from flows.pretrain import pretrain as flow_fn
    else:
        from flows.retrain import retrain as flow_fn
    with _run_failures():
        return flow_fn(config=cfg)


RunnerOption = Annotated[str | None, typer.Option(help="Where task runs execute: thread, dask or ray (ray needs the ray extra: pip install 'adaptflow\\[ray]')")]
AddressOption = Annotated[str | None, typer.Option(help="Scheduler address of a running Dask (or Ray) cluster; empty: start a local one")]
GpuPoolOption = Annotated[str | None, typer.Option(help="Cap trainings by the Prefect limit gpu-POOL (created with one slot per GPU)")]


def _execution(runner: str | None, address: str | None, gpu_pool: str | None, default_runner: str) -> dict:
    """Execution settings given on the command line, as spec fields (`--address` goes to the runner's own field)."""
    chosen = runner or default_runner
    values = {"runner": runner, "gpu_pool": gpu_pool}
    if runner is not None:  # a preset's address for another runner no longer applies
        values |= {f"{other}_address": "" for other in ("dask", "ray") if other != runner}
    if address is not None:
        if chosen not in ("dask", "ray"):
            _usage("--address", f"it is for runner dask or ray (runner is {chosen}); add --runner dask")
        values[f"{chosen}_address"] = address
    return {k: v for k, v in values.items() if v is not None}


def _presets() -> list[str]:
    """The benchmark's shipped preset names, read from the package's folder without importing the benchmark."""
    from adaptflow.benchmark.presets import preset_names

    return preset_names()


def _complete_preset(incomplete: str) -> list[str]:
    return [name for name in _presets() if name.startswith(incomplete)]


@app.command(rich_help_panel=BENCHMARK)
def benchmark(
    preset: Annotated[str, typer.Option(help=f"A preset, one of: {', '.join(_presets())}; or a YAML file of your own",
                                        autocompletion=_complete_preset)] = "quick",
    workers: Annotated[int | None, typer.Option(help="Cells run in parallel (default: the preset's)")] = None,
    output: Annotated[Path | None, typer.Option(help="Report folder (default: the preset's)")] = None,
    runner: RunnerOption = None,
    address: AddressOption = None,
    gpu_pool: GpuPoolOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the transfer-learning benchmark (a Prefect flow) and write its report (report.md, PNGs, metrics.json)."""
    from pydantic import ValidationError

    from adaptflow.benchmark import BenchmarkSpec, load_preset
    from adaptflow.config import explain
    from adaptflow.errors import ConfigError

    spec = load_preset(preset)
    update = {k: v for k, v in {"workers": workers, "output": output}.items() if v is not None}
    try:
        spec = BenchmarkSpec.model_validate(spec.model_dump() | update | _execution(runner, address, gpu_pool, spec.runner))
    except ValidationError as exc:
        raise ConfigError(f"invalid benchmark settings\n{explain(exc, BenchmarkSpec)}") from None
    from flows.benchmark import benchmark as benchmark_flow
    from flows.runners import task_runner

    task_runner(spec)  # a runner whose package is missing fails before Prefect starts a run
    command = f"adaptflow benchmark --preset {preset}"
    _servers_answer(spec.tracking)
    with _run_failures():
        result = benchmark_flow(spec=spec, command=command)
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
    else:
        from adaptflow.console import print_benchmark

        print_benchmark(result)


@app.command(rich_help_panel=BENCHMARK)
def sweep(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    grid: Annotated[list[str] | None, typer.Option(
        "--grid", "-g", help="KEY=V1,V2,...: values of one config key to try; repeat for more keys (a trial per combination)")] = None,
    metric: Annotated[str, typer.Option(help="Trial score that picks the best (higher is better); default: an unsupervised "
                                        "validator on the target's unlabeled images; target_val_accuracy: labeled images held out of training "
                                        "(data.val_fraction or a val folder); never the target test set unless asked")] = "information_maximization",
    runner: RunnerOption = None,
    workers: Annotated[int, typer.Option(help="Trials run in parallel")] = 2,
    address: AddressOption = None,
    gpu_pool: GpuPoolOption = None,
) -> None:
    """Fine-tune and evaluate every combination of the grid (a Prefect flow; nothing is registered),
    print the table and the best overrides, and the transfer command that trains and registers them."""
    from adaptflow.sweep import parse_grid, plan_trials, sweep_settings
    from adaptflow.sweep.plan import override_text
    from adaptflow.sweep.report import transfer_command

    cfg = _config(config, overrides)
    if not grid:
        _usage("--grid", "give the values to try, e.g. --grid finetune.lr=1e-3,3e-3 (repeat --grid for more keys)")
    values = parse_grid(grid)
    settings = sweep_settings(metric=metric, workers=workers, **_execution(runner, address, gpu_pool, "thread"))
    trials = plan_trials(cfg, values, settings.metric)  # every combination checked before Prefect starts
    from flows.runners import task_runner
    from flows.sweep import sweep as sweep_flow

    task_runner(settings)
    _servers_answer(cfg.tracking)
    typer.echo(f"{len(trials)} trials on {settings.runner} ({settings.workers} at a time), best by {settings.metric}")
    with _run_failures():
        result = sweep_flow(config=cfg, grid=values, settings=settings)
    from adaptflow.console import print_rows

    print_rows([{"trial": row["name"],
                 settings.metric: _or_failed(row["metrics"].get(settings.metric), row),
                 "overrides": " ".join(override_text(k, v) for k, v in row["overrides"].items())} for row in result["trials"]])
    best = result["best"]
    typer.echo(f"best: {best['name']} ({settings.metric} {best['score']:.4f}); summary {result['summary']}")
    typer.echo(f"train and register it: {transfer_command(Path(result['run_dir']))}")


def _or_failed(score: float | None, row: dict) -> float | str:
    return score if score is not None else f"failed: {row.get('error', '')[:60]}"


@app.command(rich_help_panel=RUN)
def demo(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None) -> None:
    """The whole demo: build the data, pretrain the source model, run the transfer flow, show results.

    `adaptflow demo` adapts a classifier; `adaptflow demo -c configs/detection.yaml` a YOLO detector
    (`configs/detection-fasterrcnn.yaml`: a Faster R-CNN)."""
    cfg = _stage_config(config, overrides)
    started = time.perf_counter()
    from adaptflow.data import DEMO_DOMAINS, ensure_domains

    typer.secho("1/3 the demo domains (MNIST -> UCI digits; digit scenes -> on photographs), built where missing", bold=True)
    built = ensure_domains(env.project_path(cfg.data.root), [*DEMO_DOMAINS, *filter(None, (cfg.data.source, cfg.data.target))])
    typer.echo(f"built {', '.join(built)}" if built else "present: kept as they are (`adaptflow data build` rebuilds them)")
    if cfg.task == "text_classification":  # a pretrained encoder: no source model to train first
        from adaptflow.text.report import demo_lines

        typer.secho(f"2/2 transfer flow from {cfg.pretrained.uri}: version data -> fetch -> fine-tune -> evaluate -> register", bold=True)
        result = _run_flow(Flow.transfer, cfg)
        typer.echo("\n".join(demo_lines(cfg, result, time.perf_counter() - started)))
        return
    if cfg.data.source is None:  # start from the pretrained model: compare with the same network from scratch
        typer.secho(f"2/3 transfer flow from {cfg.pretrained.uri}: version data -> fetch -> fine-tune -> evaluate -> register", bold=True)
        result = _run_flow(Flow.transfer, cfg)
        typer.secho(f"3/3 the same {cfg.finetune.arch} from scratch, on the same labels (a baseline, not registered)", bold=True)
        from adaptflow.pipeline import run_scratch_baseline

        with _run_failures():
            scratch = run_scratch_baseline(cfg, Path(result["run_dir"]) / "scratch")
        _print_pretrained_results(cfg, result, scratch, time.perf_counter() - started)
        return
    typer.secho(f"2/3 pretrain flow: source {cfg.pretrain.arch} on {cfg.data.source}", bold=True)
    source = _run_flow(Flow.pretrain, cfg)
    typer.secho("3/3 transfer flow: version data -> fetch -> fine-tune -> evaluate -> register", bold=True)
    result = _run_flow(Flow.transfer, cfg)
    _print_results(cfg, source, result, time.perf_counter() - started)


def _labeled(cfg) -> str:  # noqa: ANN001 - RunConfig
    if cfg.task == "detection":
        return "the labeled target split"
    return f"{cfg.data.labeled_per_class} labels per class" if cfg.data.labeled_per_class is not None else "the labeled split"


def _print_pretrained_results(cfg, result: dict, scratch: dict, seconds: float) -> None:  # noqa: ANN001 - RunConfig
    """The demo's table for a run that starts from pretrained weights and has no source domain."""
    m, reg = result["metrics"], result["registration"]
    typer.echo(f"\nResults: accuracy on the {cfg.data.target} test split ({cfg.finetune.arch}, {_labeled(cfg)}, "
               f"{cfg.data.image_size} px, data {result['data_version']})")
    from adaptflow.io import read_json

    history = read_json(Path(result["run_dir"]) / "finetune" / "history.json")
    rows = [(f"{cfg.pretrained.uri}, fine-tuned ({cfg.finetune.strategy})", m["target_accuracy"], sum(e["epoch_seconds"] for e in history)),
            ("same network from scratch", scratch["target_accuracy"], scratch["train_seconds"])]
    for label, value, spent in rows:
        typer.echo(f"  {label:<48} {value:.4f}   trained in {spent:.0f}s")
    typer.echo(f"  gain from the pretrained weights: {m['target_accuracy'] - scratch['target_accuracy']:+.4f}")
    typer.echo("  no source domain (data.source is empty): no forgetting check, no source-only row")
    typer.echo(f"  registered {reg['model_uri']} -> alias '{reg['alias']}' ({reg['reason']})")
    typer.echo(f"  run folder {result['run_dir']}   total {seconds:.0f}s")
    typer.echo("\nOpen the UIs: `make ui` (or .venv/bin/adaptflow ui): Prefect http://127.0.0.1:4200, MLflow http://127.0.0.1:5000")


def _print_results(cfg, source: dict, result: dict, seconds: float) -> None:  # noqa: ANN001 - RunConfig
    from adaptflow.tracking.store import tracking_uri

    m, reg = result["metrics"], result["registration"]
    name = "map50" if cfg.task == "detection" else "accuracy"
    rows = [
        ("source model on source test", source["published"]["metrics"].get(f"source_{name}")),
        ("source-only on target test", m.get(f"baseline_target_{name}")),
        ("fine-tuned on target test", m[f"target_{name}"]),
        ("fine-tuned on source test", m.get(f"source_{name}")),
    ]
    typer.echo(f"\nResults: {name} ({cfg.finetune.arch}, {cfg.finetune.strategy}, {_labeled(cfg)}, data {result['data_version']})")
    for label, value in rows:
        typer.echo(f"  {label:<30} {'n/a' if value is None else f'{value:.4f}'}")
    typer.echo(f"  registered {reg['model_uri']} -> alias '{reg['alias']}' ({reg['reason']})")
    typer.echo(f"  run folder {result['run_dir']}   total {seconds:.0f}s")
    uri, api = tracking_uri(cfg.tracking), os.environ.get("PREFECT_API_URL")
    typer.echo("\nOpen the UIs:")
    if uri.startswith(("http://", "https://")):  # a tracking server serves its own UI
        typer.echo(f"  MLflow:  {uri}")
    if api:
        typer.echo(f"  Prefect: {api.removesuffix('/').removesuffix('/api')}")
    if not (api and uri.startswith(("http://", "https://"))):
        typer.echo("  `make ui` (or .venv/bin/adaptflow ui) serves both on this project's stores: "
                   "Prefect http://127.0.0.1:4200, MLflow http://127.0.0.1:5000")


StackDir = Annotated[Path, typer.Option("--state-dir", envvar="ADAPTFLOW_STACK_DIR",
                                        help="Where the stack keeps its state, logs and env file")]


@stack_app.command("up")
def stack_up(
    state_dir: StackDir = Path(".stack"),
    project: Annotated[Path | None, typer.Option(help="The project the worker runs flows in (default: this one)")] = None,
    mlflow_workers: Annotated[int, typer.Option(min=1, help="MLflow server worker processes (more lose TCP_NODELAY, see "
                                                          "adaptflow/stack.py)")] = 1,
) -> None:
    """Start PostgreSQL, S3 (moto), the Prefect and MLflow servers and a worker on free loopback ports; print where they are."""
    from adaptflow import stack

    with _stack_errors():
        started = stack.start(state_dir, project, mlflow_workers=mlflow_workers)
    typer.echo(f"Prefect UI  {started.prefect_api_url.removesuffix('/api')}\nMLflow UI   {started.mlflow_url}\n"
               f"S3 (moto)   {started.s3_url}  bucket {started.bucket}\nwork pool   {started.pool} (one process worker)\n"
               f"logs        {started.logs}\n\nsource {started.state_dir / 'env'}   # then: make demo, prefect deploy --all, ...\n"
               f"{stack.stop_command(started.state_dir)}   # (make stack-down) stops everything")


@stack_app.command("down")
def stack_down(state_dir: StackDir = Path(".stack")) -> None:
    """Stop every process `stack up` started, check that none is left, and delete the cluster and its temp folder."""
    from adaptflow import stack

    with _stack_errors():
        stopped = stack.stop(state_dir)
    typer.echo(f"stopped: {', '.join(f'{p.name} (pid {p.pid})' for p in stopped)}" if stopped else f"no stack running from {state_dir}")


@stack_app.command("status")
def stack_status(state_dir: StackDir = Path(".stack"), as_json: JsonOption = False) -> None:
    """Each service's pid, port, health and log; exit 4 unless every one answers."""
    from adaptflow import stack

    services = stack.status(state_dir)
    if as_json:
        typer.echo(json.dumps(services, indent=2))
    elif services:
        from adaptflow.console import print_rows

        print_rows([{"service": name, "pid": s["pid"], "port": s["port"] or "-", "state": "up" if s["healthy"] else "DOWN",
                     "log": s["log"]} for name, s in services.items()])
    else:
        typer.echo(f"no stack running from {state_dir}")
    if not services or not all(s["healthy"] for s in services.values()):
        raise typer.Exit(ExitCode.UNREACHABLE)


@contextmanager
def _stack_errors() -> Iterator[None]:
    """A service of the stack that would not start or stop is a service down (exit 4), named with the end of its log."""
    from adaptflow.stack import StackError

    try:
        yield
    except StackError as exc:
        raise ServiceUnavailable(str(exc)) from exc


@app.command("config", rich_help_panel=OPS)
def show_config(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None) -> None:
    """Print the resolved configuration (after overrides) as YAML."""
    import yaml

    typer.echo(yaml.safe_dump(_config(config, overrides).model_dump(mode="json"), sort_keys=False))


def _versions() -> str:
    """adaptflow's version and those of the engines it drives, one per line (read without importing them)."""
    from importlib.metadata import PackageNotFoundError, version

    lines = []
    for name in ("adaptflow", "torch", "torchvision", "prefect", "mlflow", "dvc", "ultralytics"):
        try:
            lines.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            lines.append(f"{name} not installed")
    return "\n".join([*lines, f"python {sys.version.split()[0]}"])


def _print_version(value: bool) -> None:
    if value:
        typer.echo(_versions())
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the versions of adaptflow, torch, Prefect, MLflow and DVC, and exit")] = False,
) -> None:
    pass


def _terminated(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> None:
    """Entry point: offline defaults, logging, and user errors shown as one clear line."""
    env.apply()
    # SIGTERM unwinds like Ctrl-C, so that exit handlers run: Prefect stops the temporary API server it
    # started for this process in one (a flow run hands the signal back to this handler once it has
    # recorded the crash). With the default handler the process dies at once and leaves that server running.
    signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("httpx", "alembic", "mlflow.store.db.utils"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        app(prog_name="adaptflow")
    except RunFailed as exc:  # a run that stopped: where it stopped matters, so the traceback is shown
        traceback.print_exception(exc.__cause__, file=sys.stderr)
        typer.secho(f"error: the run failed: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exc.exit_code)
    except Exception as exc:
        if not isinstance(exc, (UserError, FileNotFoundError)):  # bad input, not bugs: one line
            raise
        typer.secho(f"error: {exc}", fg=typer.colors.RED, err=True)
        sys.exit(exit_code_of(exc))


if __name__ == "__main__":
    main()

"""The commands that train: `adaptflow run` (a Prefect flow), `adaptflow demo`, and the stages one at a time
(`pretrain`, `finetune`, `evaluate`, `register`: what dvc.yaml runs, with no orchestrator)."""

from __future__ import annotations

import os
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from adaptflow import env
from adaptflow.app.cli_common import (
    DEFAULT_CONFIG, RUN, STAGES, ConfigOption, JsonOption, Overrides, RunDir, app, run_failures, servers_answer, show,
    stage_config,
)


@app.command(rich_help_panel=STAGES)
def pretrain(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, run_dir: RunDir = Path("outputs"),
             as_json: JsonOption = False) -> None:
    """Stage: train the source model and publish it to pretrain.output (no orchestrator)."""
    from adaptflow import child
    from adaptflow.pipeline import run_pretrain
    from adaptflow.validate import validate
    from adaptflow.versioning import read_version

    cfg = stage_config(config, overrides)
    validate(cfg, "pretrain")
    with run_failures(), child.in_this_process():  # a stage command: trainers need no process of their own
        published = run_pretrain(cfg, run_dir, read_version(cfg.data), origin="cli")
    show(published.to_dict(), as_json, "published source model")


@app.command(rich_help_panel=STAGES)
def finetune(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, run_dir: RunDir = Path("outputs"),
             as_json: JsonOption = False) -> None:
    """Stage: fetch the pretrained model and fine-tune it on the target (no orchestrator)."""
    from adaptflow import child
    from adaptflow.pipeline import write_run_record
    from adaptflow.stages import RunStages
    from adaptflow.validate import validate
    from adaptflow.versioning import read_version

    cfg = stage_config(config, overrides)
    validate(cfg, "finetune")
    stages = RunStages(cfg)
    pretrained = stages.fetch_pretrained()
    with run_failures(), child.in_this_process():  # a stage command: trainers need no process of their own
        write_run_record(cfg, read_version(cfg.data), pretrained, run_dir, origin="cli")
        model = stages.finetune(pretrained, run_dir)
    show(model.to_dict(), as_json, "fine-tuned model")


@app.command(rich_help_panel=STAGES)
def evaluate(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None, run_dir: RunDir = Path("outputs"),
             as_json: JsonOption = False) -> None:
    """Stage: measure the fine-tuned model of a run folder (no orchestrator)."""
    from adaptflow.pipeline import read_run_record
    from adaptflow.weights import PretrainedRef
    from adaptflow.stages import RunStages

    cfg = stage_config(config, overrides)
    pretrained = PretrainedRef(**read_run_record(run_dir)["pretrained"])
    with run_failures():
        metrics = RunStages(cfg).evaluate(run_dir / "finetune" / "model.pt", pretrained, run_dir)
    show(metrics, as_json, "metrics")


@app.command(rich_help_panel=STAGES)
def register(
    config: ConfigOption = DEFAULT_CONFIG,
    overrides: Overrides = None,
    run_dir: Annotated[Path, typer.Option("--run-dir", "--from-run-dir", help="Finished run folder to register")] = Path("outputs"),
    as_json: JsonOption = False,
) -> None:
    """Stage: register a run folder's model in MLflow through the champion gate (safe to repeat)."""
    from adaptflow.pipeline import register_run

    cfg = stage_config(config, overrides)  # an unreachable store fails with the command that registers the run later
    with run_failures():
        registration = register_run(cfg, run_dir)
    show(registration.to_dict(), as_json, "registration")


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
    cfg = stage_config(config, overrides)
    result = _run_flow(flow, cfg)
    show(result, as_json, f"{flow.value} flow")


def _run_flow(flow: Flow, cfg) -> dict:  # noqa: ANN001 - RunConfig
    servers_answer(cfg.tracking)  # the flows check MLflow too (their first task); here it costs no server start
    if flow is Flow.transfer:
        from adaptflow.orchestration.flows.transfer import transfer as flow_fn
    elif flow is Flow.pretrain:
        from adaptflow.orchestration.flows.pretrain import pretrain as flow_fn
    else:
        from adaptflow.orchestration.flows.retrain import retrain as flow_fn
    with run_failures():
        return flow_fn(config=cfg)


@app.command(rich_help_panel=RUN)
def demo(config: ConfigOption = DEFAULT_CONFIG, overrides: Overrides = None) -> None:
    """The whole demo: build the data, pretrain the source model, run the transfer flow, show results.

    `adaptflow demo` adapts a classifier; `adaptflow demo -c configs/detection.yaml` a YOLO detector
    (`configs/detection-fasterrcnn.yaml`: a Faster R-CNN)."""
    cfg = stage_config(config, overrides)
    started = time.perf_counter()
    from adaptflow.data import DEMO_DOMAINS, ensure_domains

    typer.secho("1/3 the demo domains (MNIST -> UCI digits; digit scenes -> on photographs; movie -> drug reviews), built where missing", bold=True)
    built = ensure_domains(env.project_path(cfg.data.root), [*DEMO_DOMAINS, *filter(None, (cfg.data.source, cfg.data.target))])
    typer.echo(f"built {', '.join(built)}" if built else "present: kept as they are (`adaptflow data build` rebuilds them)")
    text = cfg.task == "text_classification"
    if text and cfg.pretrained.uri.startswith("package:"):  # from the encoder itself: no source model to train first
        from adaptflow.text.report import demo_lines

        typer.secho(f"2/2 transfer flow from {cfg.pretrained.uri}: version data -> fetch -> fine-tune -> evaluate -> register", bold=True)
        result = _run_flow(Flow.transfer, cfg)
        typer.echo("\n".join(demo_lines(cfg, None, result, time.perf_counter() - started)))
        return
    if cfg.data.source is None:  # start from the pretrained model: compare with the same network from scratch
        typer.secho(f"2/3 transfer flow from {cfg.pretrained.uri}: version data -> fetch -> fine-tune -> evaluate -> register", bold=True)
        result = _run_flow(Flow.transfer, cfg)
        typer.secho(f"3/3 the same {cfg.finetune.arch} from scratch, on the same labels (a baseline, not registered)", bold=True)
        from adaptflow.pipeline import run_scratch_baseline

        with run_failures():
            scratch = run_scratch_baseline(cfg, Path(result["run_dir"]) / "scratch")
        _print_pretrained_results(cfg, result, scratch, time.perf_counter() - started)
        return
    typer.secho(f"2/3 pretrain flow: source {cfg.pretrain.arch} on {cfg.data.source}", bold=True)
    source = _run_flow(Flow.pretrain, cfg)
    typer.secho("3/3 transfer flow: version data -> fetch -> fine-tune -> evaluate -> register", bold=True)
    result = _run_flow(Flow.transfer, cfg)
    if text:
        from adaptflow.text.report import demo_lines

        typer.echo("\n".join(demo_lines(cfg, source, result, time.perf_counter() - started)))
        return
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

"""What every command group of the `adaptflow` command shares: the Typer app and its help panels, the
options every command takes, reading the config, and how a command reports its result and its failures.

The command groups (`cli_run`, `cli_data`, `cli_models`, `cli_benchmark`, `cli_operations`) add their commands
to `app`; `adaptflow.app.cli` puts them together and is the entry point. Nothing here imports Prefect, torch or
MLflow at import time: `adaptflow --help` starts in a fraction of a second.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

from adaptflow import env
from adaptflow.errors import EXIT_CODES, RunFailed, ServiceUnavailable, UserError

#: The command's help.
HELP = """The `adaptflow` command: stages for DVC (no orchestrator), flows for Prefect, and the demo.

Every command that takes a config reads `params.yaml` (or `--config FILE`) and then applies
`section.key=value` overrides, e.g. `adaptflow run transfer finetune.epochs=5`.
"""
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


app = typer.Typer(cls=_PanelOrder, no_args_is_help=True, add_completion=True, help=HELP, epilog=EPILOG)
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


def read_config(path: Path, overrides: list[str] | None):  # noqa: ANN202 - RunConfig, imported lazily
    from adaptflow.config import load_config

    return load_config(path if path.exists() or path != DEFAULT_CONFIG else None, overrides or [])


def stage_config(path: Path, overrides: list[str] | None):  # noqa: ANN202 - RunConfig, imported lazily
    """The config of a command that computes: this process, and those it starts, get its thread budget (`threads`)."""
    cfg = read_config(path, overrides)
    env.apply_threads(cfg.threads)
    return cfg


def tracked_config(path: Path, overrides: list[str] | None):  # noqa: ANN202 - RunConfig, imported lazily
    """The config of a command that talks to MLflow, whose server is checked to answer first."""
    from adaptflow.tracking.store import require_server

    cfg = read_config(path, overrides)
    require_server(cfg.tracking)
    return cfg


JsonOption = Annotated[bool, typer.Option("--json", help="Print the result as JSON (for scripts) instead of a table")]


def usage(option: str, message: str) -> None:
    """An option that cannot work as written: exit 2 with the usage, as for an unknown option."""
    raise typer.BadParameter(message, param_hint=option)


#: What the command line itself raises to end a command (typer vendors its own click).
_COMMAND_LINE_EXITS = (typer.Exit, typer.Abort, next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException"))


@contextmanager
def run_failures() -> Iterator[None]:
    """Inside a stage or flow, an error that is not the user's input (a UserError) is a failed run: exit 6."""
    try:
        yield
    except (UserError, FileNotFoundError, *_COMMAND_LINE_EXITS):
        raise
    except Exception as exc:
        raise RunFailed(f"{type(exc).__name__}: {exc}") from exc


def show(result: dict, as_json: bool, title: str = "") -> None:
    """A command's result: a table on a terminal or by default, JSON with --json."""
    if as_json:
        typer.echo(json.dumps(result, indent=2, default=str))
        return
    from adaptflow.console import print_mapping

    print_mapping(result, title)


def servers_answer(tracking) -> None:  # noqa: ANN001 - TrackingConfig
    """Before a flow starts: the Prefect server and the MLflow server it reports to answer (where set)."""
    from adaptflow.tracking.store import require_server

    prefect_api()
    require_server(tracking)


def prefect_api(required: str = "", outcome: str = "") -> str | None:
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

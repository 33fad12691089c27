"""The `adaptflow` command (console script `adaptflow`, and `python -m adaptflow`): the command groups put
together, and the entry point that shows a user's error as one clear line.

Each group is a module of its own: `cli_run` (run, demo, the stages), `cli_data`, `cli_models`, `cli_benchmark`
(benchmark, sweep), `cli_operations` (serve, ui, config, stack); `cli_common` holds what they share. They are
imported in the order the help lists their commands within a panel.
"""

from __future__ import annotations

import logging
import signal
import sys
import traceback
from typing import Annotated

import typer

from adaptflow import env
from adaptflow.app import cli_benchmark, cli_data, cli_models, cli_operations, cli_run  # noqa: F401 - they add their commands
from adaptflow.app.cli_common import app
from adaptflow.errors import RunFailed, UserError, exit_code_of

__all__ = ["app", "main"]


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

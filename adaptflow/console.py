"""What the command line prints: tables of results (rich) and progress bars that stay quiet off a terminal.

Tables go to stdout. On a terminal they fit its width; piped or captured, they are plain aligned
columns that never wrap, so that `grep` and `awk` read them (`--json` gives scripts the exact values).
Progress bars go to stderr and are drawn only on a terminal: logs and captured output get none.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

from rich import box
from rich.console import Console
from rich.table import Table

#: Wide enough that no table wraps when stdout is not a terminal.
_PIPE_WIDTH = 10_000


def stdout_console() -> Console:
    """A console on stdout: boxed tables on a terminal, plain columns elsewhere."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=_PIPE_WIDTH, color_system=None, highlight=False, soft_wrap=True)


def cell(value: object) -> str:
    """A value as a table shows it: floats to 4 places, nothing for None, lists and dicts compact."""
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, Mapping):
        return ", ".join(f"{k} {cell(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(cell(v) for v in value)
    return str(value)


def _table(columns: Sequence[str], title: str = "") -> Table:
    terminal = sys.stdout.isatty()
    table = Table(title=title or None, box=box.SIMPLE_HEAD if terminal else None, pad_edge=False, show_edge=terminal,
                  header_style="bold" if terminal else "", title_justify="left")
    for column in columns:
        table.add_column(column, overflow="fold")  # a path or a digest wraps on a narrow terminal, whole
    return table


def _print(table: Table) -> None:
    console = stdout_console()
    if console.is_terminal:
        console.print(table)
        return
    with console.capture() as captured:  # plain columns: no padding after the last one
        console.print(table)
    sys.stdout.write("\n".join(line.rstrip() for line in captured.get().splitlines()) + "\n")


def print_rows(rows: Sequence[Mapping[str, object]], title: str = "") -> None:
    """Rows of the same keys as a table, one column per key."""
    table = _table(list(rows[0]), title)
    for row in rows:
        table.add_row(*(cell(v) for v in row.values()))
    _print(table)


def print_mapping(result: Mapping[str, object], title: str = "") -> None:
    """A result (a dict) as a two-column table; nested dicts become `key.subkey` rows."""
    table = _table(["", title or "value"])
    for key, value in _flatten(result):
        table.add_row(key, cell(value))
    _print(table)


def _flatten(result: Mapping[str, object], prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in result.items():
        if isinstance(value, Mapping) and value and len(value) > 1:
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def print_benchmark(result: Mapping[str, object]) -> None:
    """The benchmark's headline per target domain (from its metrics.json), then where the report is."""
    from adaptflow.io import read_json

    metrics_path = Path(str(result["report"])).with_name("metrics.json")
    metrics = read_json(metrics_path) if metrics_path.exists() else {}
    rows = [{"target": target, "source-only": m.get("source_only"), "best method": m.get("best_method"),
             "its accuracy": m.get("best_method_accuracy"), "gain over source-only": m.get("best_method_gain")}
            for target, m in metrics.items() if isinstance(m, Mapping) and "best_method" in m]
    if rows:
        print_rows(rows, f"benchmark: {result['cells']} cells (target-test accuracy, mean over seeds)")
    print_mapping(result, "benchmark")


@contextmanager
def progress(total: int | None, description: str, unit: str = "") -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr with done/total and the time left; yields `advance(n)`. Off a terminal
    (a pipe, a log file, a Prefect worker) it draws nothing and costs nothing."""
    if not sys.stderr.isatty():
        yield lambda n=1: None
        return
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    counted = [DownloadColumn(), TransferSpeedColumn()] if unit == "bytes" else [MofNCompleteColumn()]
    columns = [TextColumn("{task.description}"), BarColumn(), *counted, TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn()]
    with Progress(*columns, console=Console(stderr=True), transient=False, refresh_per_second=4) as bar, _logs_above_the_bar():
        task = bar.add_task(description, total=total)

        def advance(n: int = 1) -> None:
            bar.advance(task, n)

        yield advance


@contextmanager
def _logs_above_the_bar() -> Iterator[None]:
    """Log lines bound for the terminal go through the live bar's stderr (which prints them above it), not across it."""
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is sys.__stderr__]
    for handler in handlers:
        handler.setStream(sys.stderr)
    try:
        yield
    finally:
        for handler in handlers:
            handler.setStream(sys.__stderr__)

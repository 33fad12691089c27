"""The evidence benchmark: a grid of transfer strategies and adaptation methods, labeled target
samples per class and seeds, with from-scratch and source-only baselines, and its report.

`spec` says what to run (shipped presets: `presets/NAME.yaml`), `grid` plans its cells (a typed
record each), `cells` runs one cell (a plain function call returning small metrics), `report` turns
the results into markdown, PNG plots and a metrics file. The Prefect flow (`flows/benchmark.py`) runs
the cells as parallel task runs; the same functions run without it.

The names below load on first use, so that `adaptflow.benchmark.presets` (the command line's preset
list) does not import the spec's pydantic models.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from adaptflow.benchmark.grid import Cell, plan_cells, source_jobs
    from adaptflow.benchmark.spec import BenchmarkSpec, load_preset

_HOMES = {"BenchmarkSpec": "spec", "load_preset": "spec", "Cell": "grid", "plan_cells": "grid", "source_jobs": "grid"}
__all__ = ["BenchmarkSpec", "Cell", "load_preset", "plan_cells", "source_jobs"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)

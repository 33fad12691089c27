"""The evidence benchmark: a grid of transfer strategies and adaptation methods, labeled target
samples per class and seeds, with from-scratch and source-only baselines, and its report.

`spec` says what to run (presets: `presets/NAME.yaml`), `grid` plans its cells (a typed record each),
`cells` runs one cell (a plain function call returning small metrics), `report` turns the results into
markdown, PNG plots and a metrics file. The Prefect flow
(`flows/benchmark.py`) runs the cells as parallel task runs; the same functions run without it.
"""

from adaptflow.benchmark.grid import Cell, plan_cells, source_jobs
from adaptflow.benchmark.spec import BenchmarkSpec, load_preset

__all__ = ["BenchmarkSpec", "Cell", "load_preset", "plan_cells", "source_jobs"]

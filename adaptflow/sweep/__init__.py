"""Hyper-parameter sweeps: a grid of config values, each combination fine-tuned and evaluated by
the pipeline's own stage functions, the best picked by a score that does not use the target test
set (an unsupervised validator by default).

`plan` expands and validates the grid, `trial` runs one combination (a plain function call that
returns small metrics), `report` picks the best and writes the table. The Prefect flow
(`flows/sweep.py`) runs the trials as task runs on threads, Dask or Ray.
"""

from adaptflow.sweep.plan import DEFAULT_GRID, Grid, SweepSettings, Trial, canonical_grid, parse_grid, plan_trials, sweep_settings

__all__ = ["DEFAULT_GRID", "Grid", "SweepSettings", "Trial", "canonical_grid", "parse_grid", "plan_trials", "sweep_settings"]

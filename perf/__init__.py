"""Benchmarks: `python -m perf.bench` (the `bench` Makefile target), `python -m perf.cuda`
(`bench-cuda`, on a GPU), `python -m perf.stack` (the local stack's limits, for infra/SCALING.md)."""

from __future__ import annotations

import logging
import sys


def progress_log(logger: logging.Logger, tag: str) -> None:
    """Timestamped progress lines on stderr. Prefect reconfigures the root logger (WARNING) when
    imported, so the benchmark keeps a handler of its own."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s {tag}: %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False

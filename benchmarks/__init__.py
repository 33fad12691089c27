"""Benchmarks: `python -m benchmarks.bench` (the `bench` Makefile target)."""

"""Entry point of the `benchmark` flow (prefect.yaml: `flows/benchmark.py:benchmark`); the flow is `adaptflow.orchestration.flows.benchmark`."""

from adaptflow.orchestration.flows.benchmark import benchmark

__all__ = ["benchmark"]

"""Entry point of the `sweep` flow (prefect.yaml: `flows/sweep.py:sweep`); the flow is `adaptflow.orchestration.flows.sweep`."""

from adaptflow.orchestration.flows.sweep import sweep

__all__ = ["sweep"]

"""Entry point of the `retrain` flow (prefect.yaml: `flows/retrain.py:retrain`); the flow is `adaptflow.orchestration.flows.retrain`."""

from adaptflow.orchestration.flows.retrain import retrain

__all__ = ["retrain"]

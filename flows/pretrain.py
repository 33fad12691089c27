"""Entry point of the `pretrain` flow (prefect.yaml: `flows/pretrain.py:pretrain`); the flow is `adaptflow.orchestration.flows.pretrain`."""

from adaptflow.orchestration.flows.pretrain import pretrain

__all__ = ["pretrain"]

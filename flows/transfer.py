"""Entry point of the `transfer` flow (prefect.yaml: `flows/transfer.py:transfer`); the flow is `adaptflow.orchestration.flows.transfer`."""

from adaptflow.orchestration.flows.transfer import transfer

__all__ = ["transfer"]

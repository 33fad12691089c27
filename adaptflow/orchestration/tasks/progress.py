"""A Prefect progress artifact that follows training epoch by epoch."""

from __future__ import annotations

from collections.abc import Callable

from prefect.artifacts import create_progress_artifact, update_progress_artifact

EpochCallback = Callable[[int, dict[str, float]], None]


def epoch_progress(epochs: int, what: str, then: EpochCallback | None = None) -> EpochCallback:
    """A training callback that moves a progress artifact (0 to 100% of `epochs`) as each epoch
    finishes, then calls `then` (e.g. the MLflow epoch logger)."""
    artifact_id = create_progress_artifact(0.0, description=f"{what}: 0/{epochs} epochs")

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        loss = record.get("train_loss")
        shown = f", train_loss {loss:.4g}" if isinstance(loss, float) else ""
        update_progress_artifact(artifact_id, 100.0 * min(epoch, epochs) / epochs, description=f"{what}: {epoch}/{epochs} epochs{shown}")
        if then is not None:
            then(epoch, record)

    return on_epoch

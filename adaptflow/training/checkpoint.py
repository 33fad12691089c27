"""The training state on disk: written atomically after every epoch (and every N steps), read back only
by a run of the same configuration (its fingerprint), so that a retried or killed run resumes exactly."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from adaptflow.io import atomic_write, write_json

log = logging.getLogger(__name__)


def save_state(path: Path, state: dict) -> None:
    """Write the training state atomically, then a small `<name>.json` saying where training stands."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)
    write_json(path.with_suffix(".json"), {"epoch": state["epoch"], "step": state["step"]})


def load_state(path: Path | None, fingerprint: str) -> dict | None:
    """The state saved at `path` by a run with the same `fingerprint`; None when there is none (or it is another run's)."""
    if path is None or not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it belongs to another configuration", path)
        return None
    return state

"""The model registry's state: the champion gate applied to a registered version (taking turns with every other
run through a lock or a lease), promotion and rollback by hand, and the versions as a table. The decision itself
is `adaptflow.tracking.gate.decide`; this module reads the champion it needs and moves the aliases it decides."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from typing import Any

from adaptflow.config import RegistryConfig, TrackingConfig
from adaptflow.env import sqlite_file, store_not_made
from adaptflow.errors import UserError
from adaptflow.tracking.gate import CHALLENGER, CHAMPION, Champion, decide
from adaptflow.tracking.store import TAG, RetryingClient, TrackingUnavailable, client, tracking_uri

log = logging.getLogger(__name__)


class RegistryError(UserError, ValueError):
    """A registry operation that cannot be done as asked; the message says why."""


def gate_version(
    cfg: RegistryConfig,
    tracking: TrackingConfig,
    version: str,
    metrics: dict[str, float],
    champion_metrics: dict[str, float] | None = None,
    validation_digest: str = "",
) -> tuple[str, str, str]:
    """Give `version` the champion alias or the challenger alias as `gate.decide` says, taking turns with every
    other run gating the same model, and record the decision on the version's tags. Returns (alias, decision, reason).

    `champion_metrics` are the champion's metrics measured again on the same test sets; without them the
    champion's recorded metrics are used."""
    with _gate_lock(tracking, cfg.model_name):
        current = champion(cfg, tracking)
        held = None if current is None else Champion(
            str(current.version), champion_metrics or recorded_metrics(current), current.tags.get(f"{TAG}validation_digest", ""))
        decision = decide(cfg, version, metrics, held, validation_digest)
        c = client(tracking)
        if current is None:
            c.set_registered_model_alias(cfg.model_name, CHAMPION, version)
        elif decision.promoted:
            _move_champion(c, cfg, version, current.version)
            c.set_model_version_tag(cfg.model_name, version, f"{TAG}previous_champion", str(current.version))
        else:
            before = c.get_registered_model(cfg.model_name).aliases.get(CHALLENGER)
            c.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
            if before is not None and str(before) != str(version):
                c.set_model_version_tag(cfg.model_name, str(before), f"{TAG}alias", "former challenger")
        for key, value in {"alias": decision.alias, "decision": decision.decision, "reason": decision.reason}.items():
            c.set_model_version_tag(cfg.model_name, version, f"{TAG}{key}", value)
    return decision.alias, decision.decision, decision.reason


def _gate_lock(tracking: TrackingConfig, model_name: str):  # noqa: ANN202 - a context manager
    """Runs sharing a store take turns at the gate (read champion, compare, move alias): a file lock
    beside a SQLite store, a lease held in the registry itself for a tracking server (`registry_lease`)."""
    from filelock import FileLock

    path = sqlite_file(tracking_uri(tracking))
    return FileLock(f"{path}.gate.lock") if path else registry_lease(tracking, model_name)


#: How long a gate lease lasts: a holder that died (kill -9) blocks the gate at most this long.
LEASE_SECONDS = 120.0
#: How long a run waits for the gate before giving up.
LEASE_WAIT_SECONDS = 900.0
LEASE_SUFFIX = ".gate-lease"


@contextlib.contextmanager
def registry_lease(tracking: TrackingConfig, model_name: str, *, seconds: float = LEASE_SECONDS,
                   wait: float = LEASE_WAIT_SECONDS) -> Iterator[None]:
    """Hold the gate of `model_name` on a tracking server: a registered model named
    `<model_name>.gate-lease` exists while someone holds it. Creating a registered model is atomic
    on the server (its name is a primary key: a second create fails with RESOURCE_ALREADY_EXISTS),
    so exactly one run at a time holds it, whichever machine it runs on. The lease carries its
    holder's token and expiry (tags); a lease past its expiry (its holder was killed) is deleted by
    the next run that waits for it. Waiters retry with jittered backoff. Limit: the holder must
    finish the gate within `seconds` (a few registry calls; the model upload happens before)."""
    import random
    import uuid

    from mlflow.exceptions import MlflowException

    c = client(tracking)
    name = f"{model_name}{LEASE_SUFFIX}"
    token = uuid.uuid4().hex
    deadline = time.monotonic() + wait
    delay = 0.05
    while True:
        try:
            c.create_registered_model(name, tags={f"{TAG}lease_token": token, f"{TAG}lease_expires": f"{time.time() + seconds:.3f}"},
                                      description=f"held while one run moves the aliases of {model_name}; deleted after")
            break
        except MlflowException as exc:
            # RESOURCE_DOES_NOT_EXIST: the create raced the holder's delete (the server writes the model and its
            # tags in two steps); a lease left without tags reads as expired below and is cleared.
            if exc.error_code not in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
                raise
        holder = _lease_holder(c, name)
        if holder is not None and holder[0] == token:  # our create went through, then a retry saw it
            break
        if holder is not None and holder[1] < time.time():
            log.warning("gate lease of %s expired (its holder stopped without releasing it): taking it over", model_name)
            _release(c, name, holder[0])
            continue
        if time.monotonic() > deadline:
            raise RegistryError(f"waited {wait:.0f}s for the gate of {model_name}, held by another run; if no run is "
                                f"registering, delete the registered model '{name}'")
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)
    try:
        yield
    finally:
        _release(c, name, token)


def _lease_holder(c: RetryingClient, name: str) -> tuple[str, float] | None:
    """(token, expiry) of the lease `name`, or None when nobody holds it."""
    from mlflow.exceptions import MlflowException

    try:
        tags = c.get_registered_model(name).tags
    except MlflowException:
        return None
    try:
        return tags.get(f"{TAG}lease_token", ""), float(tags.get(f"{TAG}lease_expires", "0"))
    except ValueError:
        return tags.get(f"{TAG}lease_token", ""), 0.0


def _release(c: RetryingClient, name: str, token: str) -> None:
    """Delete the lease `name` if `token` still holds it."""
    from mlflow.exceptions import MlflowException

    holder = _lease_holder(c, name)
    if holder is None or holder[0] != token:
        return
    try:
        c.delete_registered_model(name)
    except MlflowException as exc:  # gone already
        log.debug("lease %s: %s", name, exc)


def champion(cfg: RegistryConfig, tracking: TrackingConfig):  # noqa: ANN201 - ModelVersion | None
    """The version holding the champion alias, or None."""
    from mlflow.exceptions import MlflowException

    if store_not_made(tracking_uri(tracking)):
        return None
    try:
        return client(tracking).get_model_version_by_alias(cfg.model_name, CHAMPION)
    except TrackingUnavailable:
        raise
    except MlflowException:
        return None


def recorded_metrics(version) -> dict[str, float]:  # noqa: ANN001 - ModelVersion
    """The metrics a version was registered with (its `adaptflow.metric.*` tags)."""
    prefix = f"{TAG}metric."
    return {k.removeprefix(prefix): float(v) for k, v in version.tags.items() if k.startswith(prefix)}


def _move_champion(c: RetryingClient, cfg: RegistryConfig, version: str, loser: str | int | None, lost: str = "former champion") -> None:
    """Give `version` the champion alias, and keep each version's `alias` tag true to it: the version that
    held the alias (`loser`) no longer says champion."""
    c.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    c.set_model_version_tag(cfg.model_name, str(version), f"{TAG}alias", CHAMPION)
    if loser is not None and str(loser) != str(version):
        c.set_model_version_tag(cfg.model_name, str(loser), f"{TAG}alias", lost)


def promote(cfg: RegistryConfig, tracking: TrackingConfig, version: str, reason: str) -> str:
    """Make `version` the champion by hand, remembering the one it replaces; returns that one.

    Promoting the champion itself changes nothing (its record of what it replaced stays, for rollback)."""
    if store := store_not_made(tracking_uri(tracking)):
        raise RegistryError(f"{cfg.model_name} has no version {version}: nothing is registered yet (no store at {store})")
    current = champion(cfg, tracking)
    c = client(tracking)
    try:
        c.get_model_version(cfg.model_name, version)
    except Exception as exc:  # MlflowException: RESOURCE_DOES_NOT_EXIST
        raise RegistryError(f"{cfg.model_name} has no version {version}") from exc
    previous = str(current.version) if current is not None else ""
    if previous == str(version):
        return previous
    _move_champion(c, cfg, version, previous or None)
    if str(c.get_registered_model(cfg.model_name).aliases.get(CHALLENGER, "")) == str(version):
        c.delete_registered_model_alias(cfg.model_name, CHALLENGER)
    for key, value in {"previous_champion": previous, "decision": "promoted by hand", "reason": reason}.items():
        c.set_model_version_tag(cfg.model_name, version, f"{TAG}{key}", value)
    return previous


def rollback(cfg: RegistryConfig, tracking: TrackingConfig, reason: str) -> tuple[str, str]:
    """Move `champion` back to the version it replaced; returns (from, to)."""
    current = champion(cfg, tracking)
    if current is None:
        raise RegistryError(f"{cfg.model_name} has no champion to roll back")
    previous = current.tags.get(f"{TAG}previous_champion")
    if not previous:
        raise RegistryError(f"{cfg.model_name} v{current.version} replaced no earlier champion: nothing to roll back to")
    c = client(tracking)
    _move_champion(c, cfg, previous, current.version, lost="rolled back")
    c.set_model_version_tag(cfg.model_name, str(current.version), f"{TAG}rolled_back", reason)
    c.set_model_version_tag(cfg.model_name, previous, f"{TAG}reason", f"restored by rollback: {reason}")
    return str(current.version), previous


def versions(cfg: RegistryConfig, tracking: TrackingConfig) -> list[dict[str, Any]]:
    """Every version of the model, newest first, with its aliases, metrics, data version and decision."""
    if store_not_made(tracking_uri(tracking)):
        return []
    c = client(tracking)
    found = c.search_model_versions(f"name='{cfg.model_name}'")
    aliases: dict[str, list[str]] = {}
    if found:
        for alias, version in c.get_registered_model(cfg.model_name).aliases.items():
            aliases.setdefault(str(version), []).append(alias)
    rows = []
    for mv in found:
        metrics = recorded_metrics(mv)
        rows.append({
            "version": int(mv.version),
            "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
            cfg.metric: metrics.get(cfg.metric),
            **({cfg.guard_metric: metrics.get(cfg.guard_metric)} if cfg.guard_metric else {}),
            "data_version": mv.tags.get(f"{TAG}data_version", "")[:12],
            "decision": mv.tags.get(f"{TAG}decision", ""),
            "reason": mv.tags.get(f"{TAG}rolled_back") and f"rolled back: {mv.tags[f'{TAG}rolled_back']}" or mv.tags.get(f"{TAG}reason", ""),
        })
    return sorted(rows, key=lambda r: -r["version"])


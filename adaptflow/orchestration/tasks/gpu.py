"""GPU pools: training task runs take one slot per GPU they train on of the Prefect global
concurrency limit `gpu-<pool>`, so that however many workers a runner has, trainings never ask
a pool for more GPUs than it has.

Prefect 3 skips a limit that does not exist, with only a warning, when `strict` is off. So the
limit is created on first use, with one slot per GPU the training process sees (at least one: a
pool on a CPU-only host lets one training run at a time), and slots are then taken with
`strict=True`, so that a limit deleted meanwhile fails the task instead of lifting the cap. A
limit that exists is left as its owner set it: for a pool that spans machines, create it with the
total first, `prefect gcl create gpu-<pool> --limit <GPUs in the pool>`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.concurrency.sync import concurrency
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

from adaptflow.execution import visible_gpus

log = logging.getLogger(f"adaptflow.{__name__}")  # under adaptflow: its lines reach the flow run's log


def limit_name(pool: str) -> str:
    return f"gpu-{pool}"


def ensure_gpu_limit(pool: str, slots: int | None = None) -> int:
    """The slot count of the pool's limit, creating it with `slots` (default: the GPUs this
    process sees, at least 1) when it is missing."""
    name = limit_name(pool)
    with get_client(sync_client=True) as client:
        try:
            limit = client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            wanted = slots if slots is not None else max(1, visible_gpus())
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=wanted))
                log.info("created global concurrency limit %s with %d slot(s)", name, wanted)
            except ObjectAlreadyExists:  # another worker created it first
                pass
            limit = client.read_global_concurrency_limit_by_name(name)
    if not limit.active:
        log.warning("global concurrency limit %s is inactive: trainings in pool %s are not capped", name, pool)
    return limit.limit


@contextmanager
def gpu_slot(pool: str | None, gpus: int = 1) -> Iterator[None]:
    """Hold `gpus` slots of the pool's limit for the block (nothing when `pool` is None); the
    task run holding them is shown as their holder in the UI."""
    if pool is None:
        yield
        return
    slots = ensure_gpu_limit(pool)
    if gpus > slots:  # the server would keep the run waiting for ever
        raise RuntimeError(f"this training needs {gpus} GPUs but pool {pool} has {slots}: raise its limit with "
                           f"`prefect gcl update {limit_name(pool)} --limit {gpus}`, or train on fewer devices")
    run = TaskRunContext.get()
    holder = ConcurrencyLeaseHolder(type="task_run", id=run.task_run.id) if run else None
    with concurrency(limit_name(pool), occupy=gpus, strict=True, holder=holder):
        yield

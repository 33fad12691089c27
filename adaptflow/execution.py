"""Where a grid's task runs execute (threads, a Dask cluster, a Ray cluster) and which GPU pool
its training takes turns on. Plain settings and checks: the Prefect task runners are built from
them in `adaptflow/orchestration/flows/runners.py`, and the pool's slots are taken in
`adaptflow/orchestration/tasks/gpu.py`.

The settings are field types rather than a sub-model, so that the benchmark preset keeps its
flat `workers:` key and the sweep's settings read the same way.
"""

from __future__ import annotations

from typing import Annotated, Literal, Protocol

from pydantic import Field

Runner = Literal["thread", "dask", "ray"]

RunnerField = Annotated[Runner, Field(
    description="Where the grid's task runs execute: thread (threads of the flow's process), dask (a Dask cluster: a "
    "local one of `workers` processes, or the one at dask_address), ray (a Ray cluster; needs adaptflow[ray])",
)]
DaskAddressField = Annotated[str, Field(
    description="runner dask: scheduler address (tcp://HOST:8786) of a running cluster; empty: a LocalCluster of "
    "`workers` processes on 127.0.0.1, started and stopped with the run",
)]
RayAddressField = Annotated[str, Field(
    description="runner ray: address of a running Ray cluster (ray://HOST:10001 or auto); empty: a local Ray instance of `workers` CPUs",
)]
GpuPoolField = Annotated[str, Field(
    pattern=r"^[A-Za-z0-9_-]*$",
    description="Prefect global concurrency limit gpu-<pool> that training tasks take one slot of (created on first use "
    "with one slot per visible GPU, at least 1); empty: pool 'default' when training on CUDA, no limit on the CPU",
)]


class ExecutionSettings(Protocol):
    """What a task runner is built from (fields of BenchmarkSpec and SweepSettings)."""

    runner: Runner
    workers: int
    dask_address: str
    ray_address: str


def check_addresses(settings: ExecutionSettings) -> None:
    """An address only means something to its own runner: refuse one given to another runner."""
    for name, runner in (("dask_address", "dask"), ("ray_address", "ray")):
        if getattr(settings, name) and settings.runner != runner:
            raise ValueError(f"{name} is set but runner is {settings.runner}; set runner: {runner} or clear {name}")


def gpu_pool_for(device: str, pool: str) -> str | None:
    """The GPU pool a training run takes a slot of: `pool` when set, else `default` when `device`
    is CUDA here (auto resolves in the process that trains), else None (no limit)."""
    if pool:
        return pool
    if device.startswith("cuda"):
        return "default"
    if device == "auto":
        import torch

        return "default" if torch.cuda.is_available() else None
    return None


def visible_gpus() -> int:
    """CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0

"""The Prefect task runner a grid runs on, built from its settings (`runner`, `workers`, addresses).

Prefect fixes a flow's task runner in its decorator, so a deployment run from the UI could not
choose one. The benchmark and sweep flows therefore run their grid as a subflow and give it the
runner their parameters ask for: `grid_flow.with_options(task_runner=task_runner(settings))`.
"""

from __future__ import annotations

import importlib

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from adaptflow.config import ConfigError
from adaptflow.execution import ExecutionSettings


def local_cluster_kwargs(workers: int) -> dict:
    """A Dask LocalCluster of `workers` processes with one thread each, on loopback only and
    without a dashboard (so nothing listens beyond 127.0.0.1)."""
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": None}


def _integration(module: str, name: str, extra: str, instead: str) -> type[TaskRunner]:
    """A cluster runner's class from its Prefect integration; missing, an error naming the extra that installs it."""
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError:
        raise ConfigError(f"runner {extra} needs {module.split('.')[0].replace('_', '-')}, which is not installed: "
                          f"pip install 'adaptflow[{extra}]' (or use runner: {instead})") from None


def task_runner(settings: ExecutionSettings) -> TaskRunner:
    """Threads, a Dask cluster or a Ray cluster; a runner whose package is missing fails here,
    before anything runs, with the extra to install."""
    if settings.runner == "thread":
        return ThreadPoolTaskRunner(max_workers=settings.workers)
    if settings.runner == "dask":
        dask = _integration("prefect_dask", "DaskTaskRunner", "dask", "thread")
        if settings.dask_address:
            return dask(address=settings.dask_address)
        return dask(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(settings.workers))
    if settings.runner == "ray":
        ray = _integration("prefect_ray.task_runners", "RayTaskRunner", "ray", "dask or thread")
        if settings.ray_address:
            return ray(address=settings.ray_address)
        return ray(init_kwargs={"num_cpus": settings.workers, "include_dashboard": False})
    raise ConfigError(f"unknown runner '{settings.runner}': use thread, dask or ray")

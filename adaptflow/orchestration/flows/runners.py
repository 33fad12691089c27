"""The Prefect task runner a grid runs on, built from its settings (`runner`, `workers`, addresses).

Prefect fixes a flow's task runner in its decorator, so a deployment run from the UI could not
choose one. The benchmark and sweep flows therefore run their grid as a subflow and give it the
runner their parameters ask for: `grid_flow.with_options(task_runner=task_runner(settings))`.
"""

from __future__ import annotations

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from adaptflow.config import ConfigError
from adaptflow.execution import ExecutionSettings


def local_cluster_kwargs(workers: int) -> dict:
    """A Dask LocalCluster of `workers` processes with one thread each, on loopback only and
    without a dashboard (so nothing listens beyond 127.0.0.1)."""
    return {"n_workers": workers, "threads_per_worker": 1, "processes": True, "host": "127.0.0.1", "dashboard_address": None}


def task_runner(settings: ExecutionSettings) -> TaskRunner:
    """Threads, a Dask cluster or a Ray cluster; a runner whose package is missing fails here,
    before anything runs, with the extra to install."""
    if settings.runner == "thread":
        return ThreadPoolTaskRunner(max_workers=settings.workers)
    if settings.runner == "dask":
        try:
            from prefect_dask import DaskTaskRunner
        except ImportError:
            raise ConfigError("runner dask needs prefect-dask, which is not installed: pip install 'adaptflow[dask]' "
                              "(or use runner: thread)") from None
        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_class="distributed.LocalCluster", cluster_kwargs=local_cluster_kwargs(settings.workers))
    if settings.runner == "ray":
        try:
            from prefect_ray.task_runners import RayTaskRunner
        except ImportError:
            raise ConfigError("runner ray needs prefect-ray, which is not installed: pip install 'adaptflow[ray]' "
                              "(or use runner: dask or thread)") from None
        if settings.ray_address:
            return RayTaskRunner(address=settings.ray_address)
        return RayTaskRunner(init_kwargs={"num_cpus": settings.workers, "include_dashboard": False})
    raise ConfigError(f"unknown runner '{settings.runner}': use thread, dask or ray")

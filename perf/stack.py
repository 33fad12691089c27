"""What the local production stack sustains, measured: `python -m perf.stack`.

Starts the stack of `adaptflow.app.stack` (PostgreSQL, S3 on moto, the Prefect and MLflow servers
on PostgreSQL, a process worker) in a temporary folder, or uses a running one (`--state-dir`),
and measures, from this process as a client on the same machine:

1. Prefect: flow runs per minute of a no-op flow run in this process against the server (every
   run creates a flow run and reports its states and logs through the API), sequentially and
   from 4 threads; and no-op runs of a deployment executed by the process worker (each one a
   new Python process), submitted at once.
2. MLflow: calls per second of `log_metric` in a loop (sequential and 4 threads) and of
   `log_batch` with 1000 metrics per call.
3. Artifacts: MB/s of a 20 MB file uploaded and downloaded through the MLflow server's artifact
   proxy into S3, over the same file put straight into the bucket with boto3.

Every timed block records the cores this process tree (the stack's servers included: they are
its children) and other processes used meanwhile, as `perf.bench` does. The machine may be
shared: quote ratios and orders of magnitude, not absolute times. Results: a final block on
stdout and `reports/stack-bench.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect import flow

from perf import progress_log
from perf.bench import Timed

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "stack-bench.json"
MB = 1024 * 1024

log = logging.getLogger("perf.stack")


@flow(name="noop", persist_result=False)
def noop(i: int = 0) -> int:
    """A flow that does nothing: what is measured is the orchestration around it."""
    return i


def _rate(count: int, timed: Timed, per: float = 1.0) -> float:
    return count / timed.seconds * per


def service_cpu_s(stack) -> dict[str, float]:  # noqa: ANN001 - adaptflow.app.stack.Stack
    """CPU seconds each service of the stack used so far, its child processes included (PostgreSQL
    is not a child of this process: pg_ctl detaches it, so Timed counts it among the others)."""
    import psutil

    from adaptflow.app.stack import process_tree

    def cpu_s(pid: int) -> float:  # its own CPU time and that of its children it has waited for
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.Error:  # ended since the tree was listed
            return 0.0
        return times.user + times.system + times.children_user + times.children_system

    return {p.name: sum(cpu_s(pid) for pid in process_tree(p.pid)) for p in stack.procs}


class Measured(Timed):
    """Timed, plus the cores each service of the stack used during the block."""

    service_cores: dict[str, float]

    def __init__(self, stack) -> None:  # noqa: ANN001 - adaptflow.app.stack.Stack
        self.stack = stack

    def __enter__(self) -> Measured:
        self._services = service_cpu_s(self.stack)
        super().__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        super().__exit__(*exc)
        after = service_cpu_s(self.stack)
        self.service_cores = {k: (v - self._services.get(k, 0.0)) / self.seconds for k, v in after.items()}

    def describe(self) -> str:
        servers = ", ".join(f"{k} {v:.2f}" for k, v in self.service_cores.items())
        outside = self.other_cores - self.service_cores.get("postgres", 0.0)
        return (f"{self.seconds:.1f} s (cores: this process {self.own_cores - sum(v for k, v in self.service_cores.items() if k != 'postgres'):.2f}; "
                f"servers {servers}; processes outside the stack {max(0.0, outside):.2f})")

    def to_dict(self) -> dict[str, Any]:
        return {**super().to_dict(), "service_cores": self.service_cores}


# ---------------------------------------------------------------------------------------------
# Prefect
# ---------------------------------------------------------------------------------------------


def bench_prefect_inprocess(stack, runs: int, threads: int) -> dict[str, Any]:  # noqa: ANN001
    """`runs` no-op flow runs in this process, from `threads` threads.

    Each run ends by joining its heartbeat thread, which sleeps in 1 s steps (Prefect 3.9
    `flow_engine._send_heartbeats`): a floor of up to 1 s per run in its own thread, whatever the
    server does. What the server sustains shows with more threads."""
    noop(-1)  # warm-up: client, flow registration
    with Measured(stack) as timed:
        if threads == 1:
            for i in range(runs):
                noop(i)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(noop, range(runs)))
    result = {"runs": runs, "threads": threads, "runs_per_min": _rate(runs, timed, 60), **timed.to_dict()}
    log.info("prefect in-process, %d thread(s): %.0f runs/min, %s", threads, result["runs_per_min"], timed.describe())
    return result


def bench_prefect_worker(stack, runs: int, timeout: float = 600) -> dict[str, Any]:  # noqa: ANN001
    """`runs` runs of a no-op deployment, submitted at once, executed by the process worker."""
    from prefect import Flow
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    deployment = Flow.from_source(source=str(REPO), entrypoint="perf/stack.py:noop").deploy(
        name="noop-bench", work_pool_name=stack.pool, print_next_steps=False, ignore_warnings=True)
    with Measured(stack) as timed:
        ids = [run_deployment(deployment, parameters={"i": i}, timeout=0).id for i in range(runs)]
        deadline = time.monotonic() + timeout
        with get_client(sync_client=True) as client:
            while True:
                states = [client.read_flow_run(i).state for i in ids]
                if all(s is not None and s.is_final() for s in states) or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            finished = [client.read_flow_run(i) for i in ids]
    completed = [r for r in finished if r.state and r.state.is_completed()]
    latency = [(r.end_time - r.expected_start_time).total_seconds() for r in completed if r.end_time and r.expected_start_time]
    result = {"runs": runs, "completed": len(completed), "runs_per_min": _rate(len(completed), timed, 60),
              "median_latency_s": statistics.median(latency) if latency else None, **timed.to_dict()}
    log.info("prefect via the worker: %d/%d completed, %.1f runs/min, median submit-to-done %.1fs, %s", len(completed),
             runs, result["runs_per_min"], result["median_latency_s"] or float("nan"), timed.describe())
    return result


# ---------------------------------------------------------------------------------------------
# MLflow
# ---------------------------------------------------------------------------------------------


def bench_mlflow(stack, calls: int, batch_calls: int, threads: int = 4) -> dict[str, Any]:  # noqa: ANN001
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    client = MlflowClient(stack.mlflow_url)
    experiment = client.get_experiment_by_name("stack-bench") or client.get_experiment(client.create_experiment("stack-bench"))
    run_id = client.create_run(experiment.experiment_id, run_name="log-calls").info.run_id
    client.log_metric(run_id, "warmup", 0.0)

    with Measured(stack) as seq:
        for i in range(calls):
            client.log_metric(run_id, "loss", 1.0 / (i + 1), step=i)
    log.info("mlflow log_metric, sequential: %.0f calls/s, %s", _rate(calls, seq), seq.describe())

    def worker(t: int) -> None:
        for i in range(calls // threads):
            client.log_metric(run_id, f"loss_{t}", float(i), step=i)

    with Measured(stack) as par:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, range(threads)))
    log.info("mlflow log_metric, %d threads: %.0f calls/s, %s", threads, _rate(calls // threads * threads, par), par.describe())

    now = int(time.time() * 1000)
    with Measured(stack) as batch:
        for c in range(batch_calls):
            client.log_batch(run_id, metrics=[Metric(f"m{k}", float(k), now, c) for k in range(1000)])
    log.info("mlflow log_batch (1000 metrics each): %.1f calls/s, %s", _rate(batch_calls, batch), batch.describe())
    client.set_terminated(run_id)
    return {
        "log_metric": {"calls": calls, "calls_per_s": _rate(calls, seq), **seq.to_dict()},
        "log_metric_threads": {"threads": threads, "calls": calls // threads * threads,
                               "calls_per_s": _rate(calls // threads * threads, par), **par.to_dict()},
        "log_batch": {"calls": batch_calls, "metrics_per_call": 1000, "calls_per_s": _rate(batch_calls, batch),
                      "metrics_per_s": _rate(batch_calls * 1000, batch), **batch.to_dict()},
    }


def bench_artifacts(stack, size_mb: int, rounds: int) -> dict[str, Any]:  # noqa: ANN001 - adaptflow.app.stack.Stack
    """A `size_mb` file through the MLflow artifact proxy (upload, download) and straight to S3 (upload)."""
    from mlflow import MlflowClient

    from adaptflow.app.stack import s3_client

    client = MlflowClient(stack.mlflow_url)
    experiment = client.get_experiment_by_name("stack-bench")
    s3 = s3_client(stack)
    up, down, direct = [], [], []
    with tempfile.TemporaryDirectory(prefix="stack-bench-") as folder:
        work = Path(folder)
        blob = work / "blob.bin"
        blob.write_bytes(os.urandom(size_mb * MB))
        for r in range(rounds):
            run_id = client.create_run(experiment.experiment_id, run_name=f"artifact-{r}").info.run_id
            with Measured(stack) as t_up:
                client.log_artifact(run_id, str(blob))
            with Measured(stack) as t_down:
                client.download_artifacts(run_id, "blob.bin", str(work / f"down-{r}"))
            with Measured(stack) as t_direct:
                s3.upload_file(str(blob), stack.bucket, f"bench/blob-{r}.bin")
            up.append(t_up.seconds)
            down.append(t_down.seconds)
            direct.append(t_direct.seconds)
            log.info("artifact %d MB: proxy upload %s, proxy download %s, direct S3 upload %s", size_mb,
                     t_up.describe(), t_down.describe(), t_direct.describe())
    result = {
        "size_mb": size_mb, "rounds": rounds,
        "proxy_upload_mb_per_s": size_mb / statistics.median(up),
        "proxy_download_mb_per_s": size_mb / statistics.median(down),
        "direct_s3_upload_mb_per_s": size_mb / statistics.median(direct),
        "seconds": {"proxy_upload": up, "proxy_download": down, "direct_s3_upload": direct},
    }
    result["proxy_over_direct_upload_time"] = statistics.median(up) / statistics.median(direct)
    return result


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.stack", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, help="use the stack running from this folder (default: start one)")
    parser.add_argument("--flow-runs", type=int, default=48, help="no-op flow runs per Prefect measurement (default 48)")
    parser.add_argument("--worker-runs", type=int, default=8, help="no-op deployment runs through the worker (default 8)")
    parser.add_argument("--metric-calls", type=int, default=400, help="log_metric calls (default 400)")
    parser.add_argument("--batch-calls", type=int, default=20, help="log_batch calls of 1000 metrics (default 20)")
    parser.add_argument("--artifact-mb", type=int, default=20, help="artifact size in MB (default 20)")
    parser.add_argument("--artifact-rounds", type=int, default=3, help="artifact rounds, median reported (default 3)")
    parser.add_argument("--mlflow-workers", type=int, default=1, help="MLflow server workers when starting a stack (default 1)")
    args = parser.parse_args(argv)
    progress_log(log, "stack-bench")

    from prefect.context import refresh_global_settings_context

    from adaptflow.app import stack as local_stack

    started = time.perf_counter()
    own = args.state_dir is None
    state_dir = Path(tempfile.mkdtemp(prefix="adaptflow-stack-bench-")) if own else args.state_dir
    if own:
        t0 = time.perf_counter()
        (state_dir / "project").mkdir()  # where the worker runs flows: the no-op flow needs nothing there
        stack = local_stack.start(state_dir, state_dir / "project", mlflow_workers=args.mlflow_workers)
        start_s = time.perf_counter() - t0
    else:
        stack = local_stack.Stack.load(state_dir.resolve())
        if stack is None or not stack.started:
            parser.error(f"no running stack in {state_dir}")
        start_s = None
    try:
        os.environ.update(stack.client_env())
        refresh_global_settings_context()  # Prefect read its settings at import: point every thread at the stack
        result: dict[str, Any] = {"stack_start_s": start_s, "mlflow_workers": args.mlflow_workers if own else None}
        result["prefect_inprocess"] = {threads: bench_prefect_inprocess(stack, args.flow_runs, threads) for threads in (1, 4, 16)}
        result["prefect_worker"] = bench_prefect_worker(stack, args.worker_runs)
        result["mlflow"] = bench_mlflow(stack, args.metric_calls, args.batch_calls)
        result["artifacts"] = bench_artifacts(stack, args.artifact_mb, args.artifact_rounds)
    finally:
        if own:
            local_stack.stop(state_dir)
            shutil.rmtree(state_dir, ignore_errors=True)
    result["machine"] = {"cpus": os.cpu_count(), "load_average": os.getloadavg()}
    result["total_seconds"] = time.perf_counter() - started
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2, default=str) + "\n")

    flows, wrk = result["prefect_inprocess"], result["prefect_worker"]
    seq = flows[1]
    m, a = result["mlflow"], result["artifacts"]
    print()
    if start_s is not None:
        print(f"stack start (5 services, ready):            {start_s:.0f} s")
    print(f"prefect no-op flow runs, in-process:        {seq['runs_per_min']:.0f}/min sequential, {flows[4]['runs_per_min']:.0f}/min "
          f"from 4 threads, {flows[16]['runs_per_min']:.0f}/min from 16 ({seq['runs']} runs each; Prefect server "
          f"{flows[16]['service_cores']['prefect']:.2f} cores, PostgreSQL {flows[16]['service_cores']['postgres']:.2f} at 16 threads)")
    print(f"prefect no-op runs via the process worker:  {wrk['runs_per_min']:.1f}/min ({wrk['completed']}/{wrk['runs']} submitted "
          f"at once, median submit-to-done {wrk['median_latency_s'] or float('nan'):.1f} s)")
    print(f"mlflow log_metric:                          {m['log_metric']['calls_per_s']:.0f} calls/s sequential, "
          f"{m['log_metric_threads']['calls_per_s']:.0f} calls/s from 4 threads (MLflow server "
          f"{m['log_metric_threads']['service_cores']['mlflow']:.2f} cores, PostgreSQL {m['log_metric_threads']['service_cores']['postgres']:.2f}; "
          f"{result['mlflow_workers']} server worker(s))")
    print(f"mlflow log_batch (1000 metrics per call):   {m['log_batch']['calls_per_s']:.1f} calls/s = "
          f"{m['log_batch']['metrics_per_s']:.0f} metrics/s ({m['log_batch']['metrics_per_s'] / m['log_metric']['calls_per_s']:.0f}x log_metric)")
    print(f"artifact {a['size_mb']} MB via the MLflow proxy:         upload {a['proxy_upload_mb_per_s']:.0f} MB/s, "
          f"download {a['proxy_download_mb_per_s']:.0f} MB/s; straight to S3 {a['direct_s3_upload_mb_per_s']:.0f} MB/s "
          f"(proxy upload takes {a['proxy_over_direct_upload_time']:.2f}x the time; median of {a['rounds']})")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; results in {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

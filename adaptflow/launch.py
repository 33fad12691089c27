"""Train on several devices: torchrun workers started from the calling process, and what each runs.

The caller (a Prefect task, a DVC stage, a test) never joins a process group. With `devices` > 1
it starts

    python -m torch.distributed.run --standalone --nproc_per_node N -m adaptflow.launch JOB_DIR

where every worker builds the same `FitJob` from the same JSON spec and runs the one training
loop under DDP (`adaptflow.training.fit`). Rank 0 checkpoints as usual, appends each epoch's record
to `JOB_DIR/epochs.jsonl` (the caller relays them to its own `on_epoch`, so MLflow logging stays
in the caller), and finally leaves the trained weights in `JOB_DIR/result.pt`, which the caller
loads into its model only once every worker has exited cleanly. A failing worker writes
`JOB_DIR/error-rank<R>.json`; the caller raises `WorkerFailed` with the first failure's message,
and the stage publishes nothing (no model.pt).
"""

from __future__ import annotations

import importlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist

from adaptflow import env
from adaptflow.child import Emitter, Relay, watch
from adaptflow.config import ConfigError, TrainSettings
from adaptflow.data.folders import ImageSet
from adaptflow.distributed import devices_problem, launched_by_torchrun
from adaptflow.io import atomic_write, read_json, write_json
from adaptflow.models import Classifier
from adaptflow.training import EpochCallback, EpochScore, epoch_line, fit, resolve_device

log = logging.getLogger(__name__)

#: How long a stopped torchrun gets to stop its workers before it is killed.
STOP_GRACE_SECONDS = 30


class WorkerFailed(RuntimeError):
    """A training worker failed; the message is the worker's own error."""


@dataclass
class FitJob:
    """Everything one `fit` call needs (the checkpoint lives in `work_dir/train_state.pt`), and the
    model's architecture for the stage that saves it."""

    model: Classifier
    arch: str
    train: ImageSet
    settings: TrainSettings  # the stage's section (pretrain, finetune), as the loop takes it
    work_dir: Path
    fingerprint: str
    unlabeled: ImageSet | None = None
    score: EpochScore | None = None  # scores each epoch (`fit`'s `score`)

    def run(self, on_epoch: EpochCallback | None = None, progress: bool = True) -> list[dict[str, float]]:
        """`fit` this job in this process (data-parallel when it is a torchrun worker); returns the epochs' records."""
        return fit(self.model, self.train, self.settings, state_path=self.work_dir / "train_state.pt", fingerprint=self.fingerprint,
                   on_epoch=on_epoch, progress=progress, unlabeled=self.unlabeled, score=self.score)


#: Builds a FitJob from a JSON-able spec; a module-level function, so that workers can import it by name.
Builder = Callable[[dict], FitJob]


def fit_on_devices(
    job: FitJob, build: Builder, spec: dict, devices: int, section: str, on_epoch: EpochCallback | None = None
) -> list[dict[str, float]]:
    """Train `job` (which `build(spec)` made): here on one device, else in `devices` torchrun
    workers that each make the same job with `build(spec)`. Either way the trained weights end up
    in `job.model` and the per-epoch history is returned.

    `section` (pretrain, finetune) names the config section in error messages.
    """
    if devices == 1:
        return job.run(on_epoch)
    if launched_by_torchrun():
        raise ConfigError(f"{section}.devices={devices}: adaptflow starts its own torchrun workers; run the stage as a plain "
                          "process (not under torchrun)")
    problem = devices_problem(section, job.settings.device, devices)
    if problem:
        raise ConfigError("; ".join(problem))
    result = launch(build, spec, devices, job.work_dir / "workers", on_epoch)
    job.model.load_state_dict(result["model"])
    job.model.eval()
    return result["history"]


def launch(build: Builder, spec: dict, devices: int, job_dir: Path, on_epoch: EpochCallback | None = None) -> dict:
    """Run `build(spec)` in `devices` torchrun workers; returns rank 0's {"model": state dict, "history": epochs}.

    Raises WorkerFailed with the first failing worker's message. `job_dir` (torchrun's log folder
    included) is emptied first and removed after a success; after a failure it keeps the workers' log.
    """
    shutil.rmtree(job_dir, ignore_errors=True)
    job_dir.mkdir(parents=True)
    write_json(job_dir / "job.json", {"build": f"{build.__module__}:{build.__qualname__}", "spec": spec})
    # torchrun's own log folder goes in the job folder too (by default it leaves one in the system temp folder per run).
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={devices}",
           f"--log-dir={job_dir / 'torchrun'}", "-m", "adaptflow.launch", str(job_dir)]
    log.info("training on %d devices: %s", devices, " ".join(cmd))
    with open(job_dir / "workers.log", "wb") as out:
        # A session of its own: a Ctrl-C reaches the caller alone, which then stops torchrun (and so the workers) itself.
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=worker_env(devices))
        watch(proc, Relay(job_dir / "epochs.jsonl", partial(_relay_epoch, on_epoch)), stop=_stop)
    if proc.returncode != 0:
        raise WorkerFailed(failure_message(job_dir, proc.returncode))
    result = torch.load(job_dir / "result.pt", map_location="cpu", weights_only=True)
    shutil.rmtree(job_dir, ignore_errors=True)
    return result


def worker_env(devices: int) -> dict[str, str]:
    """The workers' environment: this process's thread budget shared among them (CPU workers on one
    machine would otherwise each start a thread per core)."""
    budget = env.threads_in_use() or env.resolve_threads("auto")
    return os.environ | {var: str(max(1, budget // devices)) for var in env.THREAD_VARS}


def _relay_epoch(on_epoch: EpochCallback | None, row: dict) -> None:
    log.info("%s", epoch_line(row["epoch"], None, row["record"]))
    if on_epoch is not None:
        on_epoch(row["epoch"], row["record"])


def failure_message(job_dir: Path, returncode: int) -> str:
    """The first worker error (by time), or the tail of the workers' log when no worker could report one."""
    errors = sorted((read_json(p) for p in job_dir.glob("error-rank*.json")), key=lambda e: e["time"])
    log_path = job_dir / "workers.log"
    if errors:
        first = errors[0]
        return (f"training worker rank {first['rank']} failed: {first['type']}: {first['message']}\n"
                f"{first['traceback'].rstrip()}\n(all workers' output: {log_path})")
    tail = log_path.read_text(errors="replace").splitlines()[-30:] if log_path.exists() else []
    return f"torchrun exited with code {returncode} before any worker reported an error; last lines of {log_path}:\n" + "\n".join(tail)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to torchrun (it stops its workers), SIGKILL if it does not exit in time."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# --- inside a worker ------------------------------------------------------------------------------


def worker(job_dir: Path) -> None:
    """One torchrun worker: join the process group, build the job, train, and (rank 0) leave the result."""
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    logging.basicConfig(level=logging.INFO, format=f"[rank {rank}] %(levelname)s %(name)s: %(message)s")
    # torchrun stops the other workers with SIGTERM when one fails: unwind, so that pending atomic writes clean up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        job_file = read_json(job_dir / "job.json")
        module, _, name = job_file["build"].partition(":")
        job: FitJob = getattr(importlib.import_module(module), name)(job_file["spec"])
        device = resolve_device(job.settings.device)
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(minutes=10))
        history = job.run(on_epoch=_append_to(job_dir / "epochs.jsonl") if rank == 0 else None, progress=False)
        if rank == 0:
            with atomic_write(job_dir / "result.pt") as tmp:
                torch.save({"model": {k: v.cpu() for k, v in job.model.state_dict().items()}, "history": history}, tmp)
        dist.destroy_process_group()
    except SystemExit:  # stopped by torchrun: the worker that failed reports why
        raise
    except BaseException as exc:
        write_json(job_dir / f"error-rank{rank}.json", {
            "rank": rank, "time": time.time(), "type": type(exc).__name__, "message": str(exc),
            "traceback": "".join(traceback.format_exception(exc)[-6:]),
        })
        raise


def _append_to(path: Path) -> EpochCallback:
    emit = Emitter(str(path))
    return lambda epoch, record: emit({"epoch": epoch, "record": record})


if __name__ == "__main__":
    worker(Path(sys.argv[1]))

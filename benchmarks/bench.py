"""Two overhead ratios, measured in one run on this machine: `python -m benchmarks.bench`.

1. Flow overhead: the Prefect transfer flow end to end, over the bare core functions doing the
   same work (`adaptflow.pipeline.run_transfer`). The Prefect server is started once, before
   timing (its start is a one-time process cost, reported on its own line), then core and flow
   runs alternate. Every run gets a fresh project root (git + DVC repo with its own remote, its own
   MLflow store, the same demo data and source model), so no run finds state left by another.
2. Training loop throughput: images/s of `adaptflow.train.fit` over a minimal bare torch loop
   (same model, data tensors, batch size, optimizer, per-batch normalisation, threads).

Results go to stdout (a final block) and to `reports/bench.json`. Times are only reported,
never asserted on. Progress is logged to stderr.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "bench.json"

log = logging.getLogger("benchmarks.bench")

#: The transfer run that is timed: big enough that the work dominates scheduling noise.
FLOW_OVERRIDES = ["finetune.epochs=15", "data.labeled_per_class=10"]
#: Untimed warm-up runs of both paths (imports, first MLflow/DVC/Prefect calls in the process).
WARMUP_OVERRIDES = ["finetune.epochs=2", "finetune.lp_epochs=1", "data.labeled_per_class=10"]
#: Other processes using more CPU than this (in cores) during a timed run are reported.
CONTENDED_CORES = 0.2
#: The source model every transfer run starts from, trained once.
PRETRAIN_OVERRIDES = ["pretrain.epochs=1"]


def _setup_logging() -> None:
    # Prefect reconfigures the root logger (WARNING) when imported: keep our own handler.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s bench: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


# ---------------------------------------------------------------------------------------------
# CPU accounting: how much of the machine other processes took while a run was timed
# ---------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU seconds all processors spent busy since boot (Linux /proc/stat), or None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_tree_s() -> float | None:
    """CPU seconds used by this process and all its descendants, live or already reaped."""
    stats: dict[int, tuple[int, float]] = {}
    try:
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                text = (entry / "stat").read_text()
            except OSError:
                continue  # exited meanwhile
            rest = text[text.rfind(")") + 2 :].split()  # fields after "pid (comm)"
            # rest[1] = ppid; rest[11..14] = utime, stime, cutime, cstime
            stats[int(entry.name)] = (int(rest[1]), sum(int(v) for v in rest[11:15]) / _TICK)
    except OSError:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += stats.get(pid, (0, 0.0))[1]
        todo.extend(children.get(pid, []))
    return total


class Timed:
    """Wall time of a block, with the CPU this process tree used and what other processes used."""

    def __enter__(self) -> Timed:
        self._machine, self._own, self._t0 = _machine_busy_s(), _own_tree_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        machine, own = _machine_busy_s(), _own_tree_s()
        if None in (machine, own, self._machine, self._own):
            self.own_cores = self.other_cores = float("nan")
            return
        self.own_cores = (own - self._own) / self.seconds
        self.other_cores = max(0.0, (machine - self._machine) - (own - self._own)) / self.seconds


def wait_for_quiet(max_wait_s: float, window_s: float = 1.0) -> float:
    """Wait, up to `max_wait_s`, until other processes use under CONTENDED_CORES; returns the seconds waited.

    The machine may be shared (someone's test suite): with 2 cores, one busy neighbour slows a
    2-thread torch process several-fold, so timed runs start only on a quiet machine when possible.
    """
    t0 = time.perf_counter()
    while True:
        with Timed() as probe:
            time.sleep(window_s)
        waited = time.perf_counter() - t0
        if not probe.other_cores > CONTENDED_CORES:
            return waited
        if waited >= max_wait_s:
            log.warning("other processes still use %.2f cores after %.0f s of waiting; timing anyway", probe.other_cores, waited)
            return waited


def _cmd(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed in {cwd}:\n{(result.stderr or result.stdout).strip()}")


def _dvc(*args: str, cwd: Path) -> None:
    _cmd([sys.executable, "-m", "dvc", *args], cwd)


def use_root(root: Path) -> None:
    """Make `root` the project folder (read on every call by adaptflow.env)."""
    os.environ["ADAPTFLOW_ROOT"] = str(root)


def init_project(root: Path) -> Path:
    """An empty project: git repo, DVC repo with analytics off and a local default remote."""
    root.mkdir(parents=True)
    _cmd(["git", "init", "-q"], root)
    _dvc("init", "-q", cwd=root)
    _dvc("config", "core.analytics", "false", cwd=root)
    _dvc("remote", "add", "-d", "local", str(root / "remote"), cwd=root)
    return root


def make_template(base: Path) -> Path:
    """The project every run copies: demo data and the published source model."""
    from adaptflow.config import load_config
    from adaptflow.data.demo import build_demo_data
    from adaptflow.pretrain import pretrain

    template = init_project(base / "template")
    use_root(template)
    t0 = time.perf_counter()
    build_demo_data(template / "data")
    log.info("demo data built in %.1f s", time.perf_counter() - t0)
    cfg = load_config(None, PRETRAIN_OVERRIDES)
    t0 = time.perf_counter()
    published = pretrain(cfg.pretrain, cfg.data, template / "work")
    log.info("source model pretrained in %.1f s (source accuracy %.3f)", time.perf_counter() - t0, published.source_accuracy)
    return template


def fresh_root(base: Path, template: Path, name: str) -> Path:
    """A new project root holding a copy of the template's data and source model, nothing else."""
    root = init_project(base / name)
    shutil.copytree(template / "data", root / "data")
    shutil.copytree(template / "models", root / "models")
    use_root(root)
    return root


# ---------------------------------------------------------------------------------------------
# 1. Flow overhead
# ---------------------------------------------------------------------------------------------


def run_core(cfg, root: Path, name: str) -> Timed:
    from adaptflow.pipeline import run_transfer

    with Timed() as timed:
        run_transfer(cfg, root / "runs" / name, origin="bench")
    return timed


def run_flow(cfg) -> Timed:
    from flows.transfer import transfer

    with Timed() as timed:
        transfer(config=cfg)
    return timed


def _describe(timed: Timed) -> str:
    return f"{timed.seconds:.1f} s (this process tree {timed.own_cores:.2f} cores, other processes {timed.other_cores:.2f} cores)"


def bench_flow(base: Path, template: Path, rounds: int, quiet_wait_s: float) -> dict:
    from adaptflow.config import load_config

    cfg = load_config(None, FLOW_OVERRIDES)
    warm_cfg = load_config(None, WARMUP_OVERRIDES)

    t0 = time.perf_counter()
    import flows.transfer  # noqa: F401 - Prefect and the tasks, imported once (untimed)
    from prefect.testing.utilities import prefect_test_harness

    import_s = time.perf_counter() - t0
    log.info("imported Prefect and the flow in %.1f s", import_s)

    with ExitStack() as stack:
        log.info("starting the Prefect server (one-time cost, not in the ratio)")
        t0 = time.perf_counter()
        stack.enter_context(prefect_test_harness(server_startup_timeout=90))
        server_s = time.perf_counter() - t0
        log.info("Prefect server up in %.1f s", server_s)

        # Untimed warm-ups: first MLflow store, first pyfunc log, Prefect's client and workers.
        root = fresh_root(base, template, "warmup-core")
        warm_core = run_core(warm_cfg, root, "bench-core").seconds
        log.info("warm-up core run (%s): %.1f s", " ".join(WARMUP_OVERRIDES), warm_core)
        fresh_root(base, template, "warmup-flow")
        warm_flow = run_flow(warm_cfg).seconds
        log.info("warm-up flow run (%s): %.1f s", " ".join(WARMUP_OVERRIDES), warm_flow)

        core_runs: list[Timed] = []
        flow_runs: list[Timed] = []
        for i in range(rounds):
            root = fresh_root(base, template, f"core-{i}")
            wait_for_quiet(quiet_wait_s)
            core_runs.append(run_core(cfg, root, "bench-core"))
            log.info("round %d/%d core: %s", i + 1, rounds, _describe(core_runs[-1]))
            fresh_root(base, template, f"flow-{i}")
            wait_for_quiet(quiet_wait_s)
            flow_runs.append(run_flow(cfg))
            log.info("round %d/%d flow: %s", i + 1, rounds, _describe(flow_runs[-1]))

    core_s, flow_s = [r.seconds for r in core_runs], [r.seconds for r in flow_runs]
    core, flow = statistics.median(core_s), statistics.median(flow_s)
    return {
        "ratio": flow / core,
        "flow_median_s": flow,
        "core_median_s": core,
        "flow_runs_s": flow_s,
        "core_runs_s": core_s,
        "runs_each": rounds,
        "core_runs_own_cores": [r.own_cores for r in core_runs],
        "flow_runs_own_cores": [r.own_cores for r in flow_runs],
        "core_runs_other_cores": [r.other_cores for r in core_runs],
        "flow_runs_other_cores": [r.other_cores for r in flow_runs],
        "prefect_server_start_s": server_s,
        "prefect_import_s": import_s,
        "warmup_core_s": warm_core,
        "warmup_flow_s": warm_flow,
        "overrides": FLOW_OVERRIDES,
    }


# ---------------------------------------------------------------------------------------------
# 2. Training loop throughput
# ---------------------------------------------------------------------------------------------


def bare_loop(model, images, labels, epochs: int, batch_size: int, lr: float, weight_decay: float) -> None:
    """The minimal loop: shuffle, index, normalise per batch, forward, cross-entropy, AdamW step."""
    import torch
    import torch.nn.functional as F

    from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    groups = [{"params": list(model.head.parameters()), "lr": lr}, {"params": list(model.backbone.parameters()), "lr": lr}]
    optimizer = torch.optim.AdamW(groups, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(0)
    model.train()
    n = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start : start + batch_size]
            x = (images[idx].float().div_(255.0) - mean) / std
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def bench_fit(template: Path, n_images: int, epochs: int, rounds: int, quiet_wait_s: float) -> dict:
    import torch

    from adaptflow.config import load_config
    from adaptflow.data import ImageSet, load_split
    from adaptflow.models import build_classifier
    from adaptflow.train import FitSettings, fit

    use_root(template)
    torch.set_flush_denormal(True)  # fit() sets it too; the bare loop must run under the same flag
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg = load_config(None, [])
    full = load_split(cfg.data, cfg.data.source, "train")
    data = ImageSet(full.images[:n_images].contiguous(), full.labels[:n_images].contiguous(), full.classes)
    n = len(data)
    batch_size, lr, weight_decay = 64, 1e-3, 1e-4

    torch.manual_seed(0)
    initial = copy.deepcopy(build_classifier("resnet18", len(data.classes)).state_dict())

    def fresh_model():
        model = build_classifier("resnet18", len(data.classes))
        model.load_state_dict(initial)
        return model

    def ours(k_epochs: int, subset: ImageSet) -> Timed:
        model = fresh_model()
        settings = FitSettings(epochs=k_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                               strategy="finetune", augment=False, device="cpu")
        with Timed() as timed:
            fit(model, subset, settings, progress=False)
        timed.images_per_s = k_epochs * len(subset) / timed.seconds
        return timed

    def bare(k_epochs: int, subset: ImageSet) -> Timed:
        model = fresh_model()
        with Timed() as timed:
            bare_loop(model, subset.images, subset.labels, k_epochs, batch_size, lr, weight_decay)
        timed.images_per_s = k_epochs * len(subset) / timed.seconds
        return timed

    def describe(timed: Timed) -> str:
        return (f"{timed.images_per_s:.1f} images/s in {timed.seconds:.1f} s (this process {timed.own_cores:.2f} cores, "
                f"other processes {timed.other_cores:.2f} cores)")

    warm = ImageSet(data.images[: 8 * batch_size], data.labels[: 8 * batch_size], data.classes)
    log.info("training loop: warm-up (ours, bare) on %d images, %d threads", len(warm), threads)
    ours(1, warm)
    bare(1, warm)
    ours_runs: list[Timed] = []
    bare_runs: list[Timed] = []
    for i in range(rounds):
        wait_for_quiet(quiet_wait_s)
        ours_runs.append(ours(epochs, data))
        log.info("round %d/%d ours: %s", i + 1, rounds, describe(ours_runs[-1]))
        wait_for_quiet(quiet_wait_s)
        bare_runs.append(bare(epochs, data))
        log.info("round %d/%d bare: %s", i + 1, rounds, describe(bare_runs[-1]))
    ours_ips, bare_ips = [r.images_per_s for r in ours_runs], [r.images_per_s for r in bare_runs]
    ours_med, bare_med = statistics.median(ours_ips), statistics.median(bare_ips)
    return {
        "ratio": ours_med / bare_med,
        "ours_median_images_per_s": ours_med,
        "bare_median_images_per_s": bare_med,
        "ours_runs_images_per_s": ours_ips,
        "bare_runs_images_per_s": bare_ips,
        "runs_each": rounds,
        "ours_runs_own_cores": [r.own_cores for r in ours_runs],
        "bare_runs_own_cores": [r.own_cores for r in bare_runs],
        "ours_runs_other_cores": [r.other_cores for r in ours_runs],
        "bare_runs_other_cores": [r.other_cores for r in bare_runs],
        "images": n,
        "epochs_per_run": epochs,
        "batch_size": batch_size,
        "arch": "resnet18",
        "image_size": cfg.data.image_size,
        "threads": threads,
        "flush_denormal": True,
    }


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--flow-rounds", type=int, default=2, help="timed (core, flow) pairs")
    parser.add_argument("--fit-rounds", type=int, default=3, help="timed (ours, bare) pairs")
    parser.add_argument("--fit-images", type=int, default=2000, help="MNIST train images per training epoch")
    parser.add_argument("--fit-epochs", type=int, default=2, help="epochs per timed training run")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="seconds to wait, before each timed run, for other processes to leave the CPUs")
    parser.add_argument("--keep", action="store_true", help="keep the temporary project roots")
    args = parser.parse_args(argv)

    _setup_logging()
    started = time.perf_counter()
    base = Path(tempfile.mkdtemp(prefix="adaptflow-bench-"))
    # Isolation: no shared tracking store, cache or Prefect server may leak into the runs.
    for key in ("MLFLOW_TRACKING_URI", "ADAPTFLOW_CACHE", "PREFECT_API_URL"):
        if os.environ.pop(key, None) is not None:
            log.info("ignoring $%s for the benchmark", key)
    os.environ["PREFECT_HOME"] = str(base / "prefect-home")
    use_root(base / "template")  # must be set before env.apply()

    from adaptflow import env

    env.apply()
    log.info("temporary projects under %s", base)
    try:
        template = make_template(base)
        fit_result = bench_fit(template, args.fit_images, args.fit_epochs, args.fit_rounds, args.quiet_wait)
        flow_result = bench_flow(base, template, args.flow_rounds, args.quiet_wait)
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)

    import torch

    total = time.perf_counter() - started
    result = {
        "flow_overhead": flow_result,
        "training_loop": fit_result,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "total_seconds": total,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")

    f, t = flow_result, fit_result
    print()
    print(f"flow end-to-end / bare core functions: {f['ratio']:.3f}  (flow {f['flow_median_s']:.1f} s, "
          f"core {f['core_median_s']:.1f} s, median of {f['runs_each']}; "
          f"one-time Prefect server start {f['prefect_server_start_s']:.1f} s not included)")
    print(f"training loop / bare torch loop (images/s): {t['ratio']:.3f}  (ours {t['ours_median_images_per_s']:.0f}, "
          f"bare {t['bare_median_images_per_s']:.0f}, median of {t['runs_each']})")
    other = max(f["core_runs_other_cores"] + f["flow_runs_other_cores"] + t["ours_runs_other_cores"] + t["bare_runs_other_cores"])
    if other == other and other > CONTENDED_CORES:  # not NaN, and above the threshold
        print(f"note: other processes used up to {other:.2f} of {os.cpu_count()} cores during timed runs; "
              f"per-run numbers are in {REPORT.relative_to(REPO)}")
    print(f"total {total:.0f} s; written to {REPORT.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

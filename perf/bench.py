"""Overhead, layout and memory ratios, measured in one run on this machine: `python -m perf.bench`.

1. Flow overhead: the Prefect transfer flow end to end (`adaptflow.orchestration.flows.transfer.transfer`), over the
   bare core functions doing the same work (`adaptflow.pipeline.run_transfer`). The Prefect
   server is started once before timing (a one-time process cost, reported on its own line),
   both paths get one untimed warm-up, then core and flow runs alternate. Every run gets a fresh
   project root (git + DVC repo with its own remote, its own MLflow store, the same demo data and
   source model), so no run finds state or caches left by another.
2. Training loop throughput: images/s of `adaptflow.training.fit` over a minimal bare torch loop
   (same model and initial weights, data tensors, batch size, optimizer, per-batch
   normalisation, memory layout, flush-denormal flag and thread count), alternating after one
   warm-up each.
3. Memory layout: images/s of `fit` and of `predict` in the channels-last layout every model runs
   in (`adaptflow.training.runtime.MEMORY_FORMAT`) over the same calls in PyTorch's default NCHW layout, for
   `small_cnn` and resnet18 at the demo's image size.
4. Image cache (`perf/image_cache.py`): the peak memory of decoding an image folder, the time
   of loading it back from the decode cache, and the memory two processes take for one cached set,
   `load_image_folder` over a plain list-stack-permute decode and a whole-file cache read.
5. Thread budget (`perf/threads.py`): the loop's images/s with `threads: auto` over torch's
   default thread count, beside one and two CPU-bound neighbour processes and without one.
6. Detector evaluation (`perf/detection_eval.py`): scoring a YOLO file on the demo's test sets
   as before (default threads, torchmetrics' per-class re-evaluations) against now.
7. Deployment (`perf/deploy.py`): CPU throughput of the exported ONNX model over eager PyTorch for
   the demo's classifier and YOLO at batch 1 and 32, and the serving round trip (p50/p95 over 200 requests
   of one image to `mlflow models serve` on loopback). `--only deploy` runs this section alone.
8. YOLO fixed cost (`perf/yolo_overhead.py`): `adaptflow finetune -c configs/detection.yaml` over plain
   Ultralytics `YOLO(weights).train(...)` with the same data, weights and settings, whole commands in fresh
   processes, 10 epochs. `--only yolo` runs this section alone.
9. Text training loop (`perf/text_throughput.py`): sentences/s of `fit` on token ids over a bare
   transformers + torch loop on the same encoder, texts, sequence length and batch size.

The machine may be shared: on 2 cores one busy neighbour slows a 2-thread torch process
several-fold. So every timed run records how much CPU other processes took meanwhile; a run
waits (a while) for a quiet machine, and a run that other processes disturbed anyway is run
again (within a time budget). Discarded runs are reported, never hidden.

Results: a final block on stdout and `reports/bench.json`. Times are reported, never asserted
on. Progress is logged to stderr.
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
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any, TypeVar

from perf import progress_log
from perf.deploy import bench_deploy, report_lines
from perf.image_cache import bench_image_cache
from perf.detection_eval import bench_detection_eval, make_model
from perf.detection_eval import summary as detection_summary
from perf.text_throughput import bench_text
from perf.text_throughput import summary as text_summary
from perf.threads import bench_threads
from perf.threads import summary as threads_summary
from perf.yolo_overhead import bench_yolo_overhead
from perf.yolo_overhead import summary as yolo_summary

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "reports" / "bench.json"

log = logging.getLogger("perf.bench")

#: The transfer run that is timed: big enough that the work dominates scheduling noise.
FLOW_OVERRIDES = ["finetune.epochs=15", "data.labeled_per_class=10"]
#: Untimed warm-up runs of both paths (first MLflow store, pyfunc logging, Prefect client...).
WARMUP_OVERRIDES = ["finetune.epochs=2", "finetune.lp_epochs=1", "data.labeled_per_class=10"]
#: The source model every transfer run starts from, trained once.
PRETRAIN_OVERRIDES = ["pretrain.epochs=1"]
#: The architectures the layout section measures: the benchmark's backbone and the pipeline's default.
LAYOUT_ARCHS = ("small_cnn", "resnet18")
#: A timed run during which other processes used more than this many cores is "contended".
CONTENDED_CORES = 0.2

T = TypeVar("T")


# ---------------------------------------------------------------------------------------------
# CPU accounting: what this process tree used, and what other processes took, during a run
# ---------------------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _machine_busy_s() -> float | None:
    """CPU seconds all processors spent busy since boot (Linux /proc/stat); None elsewhere."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[:8])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _own_tree_s() -> float | None:
    """CPU seconds of this process and all its descendants, live or already reaped.

    The Prefect server and DVC run as child processes: they count as ours.
    """
    stats: dict[int, tuple[int, float]] = {}
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return None
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        rest = text[text.rfind(")") + 2 :].split()  # the fields after "pid (comm)"
        # rest[1] is the parent pid; rest[11:15] are utime, stime, cutime, cstime
        stats[int(entry.name)] = (int(rest[1]), sum(int(v) for v in rest[11:15]) / _TICK)
    if os.getpid() not in stats:
        return None
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    total, todo = 0.0, [os.getpid()]
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo.extend(children.get(pid, []))
    return total


class Timed:
    """Wall time of a block, the cores this process tree used, and the cores other processes took."""

    seconds: float
    own_cores: float
    other_cores: float

    def __enter__(self) -> Timed:
        self._machine, self._own, self._t0 = _machine_busy_s(), _own_tree_s(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self._t0
        machine, own = _machine_busy_s(), _own_tree_s()
        if machine is None or own is None or self._machine is None or self._own is None:
            self.own_cores = self.other_cores = float("nan")
            return
        self.own_cores = (own - self._own) / self.seconds
        self.other_cores = max(0.0, (machine - self._machine) - (own - self._own)) / self.seconds

    @property
    def contended(self) -> bool:
        return self.other_cores > CONTENDED_CORES  # False when unknown (NaN)

    def describe(self) -> str:
        return f"{self.seconds:.1f} s (this process tree {self.own_cores:.2f} cores, other processes {self.other_cores:.2f})"

    def to_dict(self) -> dict[str, float]:
        return {"seconds": self.seconds, "own_cores": self.own_cores, "other_cores": self.other_cores}


class Measurer:
    """Runs timed blocks on a quiet machine when it can, and again when a neighbour disturbed one."""

    def __init__(self, deadline: float, quiet_wait_s: float, retries: int) -> None:
        self.deadline, self.quiet_wait_s, self.retries = deadline, quiet_wait_s, retries
        self.discarded: list[dict[str, Any]] = []

    def wait_for_quiet(self, window_s: float = 1.0) -> None:
        """Wait, up to quiet_wait_s and never past the deadline, until other processes leave the CPUs."""
        limit = min(self.quiet_wait_s, self.deadline - time.perf_counter())
        t0 = time.perf_counter()
        while limit > 0:
            with Timed() as probe:
                time.sleep(window_s)
            if not probe.contended:
                return
            if time.perf_counter() - t0 >= limit:
                log.info("other processes still use %.2f cores after %.0f s of waiting; timing anyway",
                         probe.other_cores, time.perf_counter() - t0)
                return

    def measure(self, label: str, prepare: Callable[[], T], run: Callable[[T], Timed]) -> Timed:
        """prepare() untimed, wait for quiet, run() timed; repeat when other processes disturbed it."""
        for attempt in range(self.retries + 1):
            arg = prepare()
            self.wait_for_quiet()
            timed = run(arg)
            last = attempt == self.retries or time.perf_counter() >= self.deadline
            if not timed.contended or last:
                timed.attempts = attempt + 1
                return timed
            log.info("%s: %s - disturbed by other processes, discarded; running it again", label, timed.describe())
            self.discarded.append({"run": label, **timed.to_dict()})
        raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------------
# Temporary projects
# ---------------------------------------------------------------------------------------------


def _cmd(args: list[str], cwd: Path) -> None:
    result = subprocess.run(args, cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(args)}` failed in {cwd}:\n{(result.stderr or result.stdout).strip()}")


def _dvc(*args: str, cwd: Path) -> None:
    _cmd([sys.executable, "-m", "dvc", *args], cwd)


def use_root(root: Path) -> None:
    """Make `root` the project folder (adaptflow.env reads it on every call)."""
    os.environ["ADAPTFLOW_ROOT"] = str(root)


def init_project(root: Path) -> Path:
    """An empty project: a git repo and a DVC repo with analytics off and a local default remote."""
    root.mkdir(parents=True)
    _cmd(["git", "init", "-q"], root)
    _dvc("init", "-q", cwd=root)
    _dvc("config", "core.analytics", "false", cwd=root)
    _dvc("remote", "add", "-d", "local", str(root / "remote"), cwd=root)
    return root


def make_template(base: Path) -> Path:
    """The project every run copies from: the demo data and the published source model."""
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
    log.info("source model pretrained (%s) in %.1f s, source accuracy %.3f",
             " ".join(PRETRAIN_OVERRIDES), time.perf_counter() - t0, published.metrics["source_accuracy"])
    return template


class Roots:
    """Fresh project roots, each a new git + DVC repo holding a copy of the template's data and model."""

    def __init__(self, base: Path, template: Path) -> None:
        self.base, self.template, self.count = base, template, 0

    def fresh(self, kind: str) -> Path:
        self.count += 1
        root = init_project(self.base / f"{self.count:02d}-{kind}")
        shutil.copytree(self.template / "data", root / "data")
        shutil.copytree(self.template / "models", root / "models")
        use_root(root)
        return root


# ---------------------------------------------------------------------------------------------
# 1. Flow overhead
# ---------------------------------------------------------------------------------------------


def run_core(cfg, root: Path) -> Timed:
    from adaptflow.pipeline import run_transfer

    with Timed() as timed:
        run_transfer(cfg, root / "runs" / "bench-core", origin="bench")
    return timed


def run_flow(cfg) -> Timed:
    from adaptflow.orchestration.flows.transfer import transfer

    with Timed() as timed:
        transfer(config=cfg)  # writes to <root>/runs/<flow run name>
    return timed


def bench_flow(roots: Roots, measurer: Measurer, rounds: int) -> dict:
    from adaptflow.config import load_config

    cfg = load_config(None, FLOW_OVERRIDES)
    warm_cfg = load_config(None, WARMUP_OVERRIDES)

    t0 = time.perf_counter()
    import adaptflow.orchestration.flows.transfer  # noqa: F401 - Prefect and the tasks, imported once, untimed
    from prefect.testing.utilities import prefect_test_harness

    import_s = time.perf_counter() - t0
    log.info("imported Prefect and the flow in %.1f s", import_s)

    with ExitStack() as stack:
        log.info("starting the Prefect server (a one-time cost, not in the ratio)")
        t0 = time.perf_counter()
        stack.enter_context(prefect_test_harness(server_startup_timeout=90))
        server_s = time.perf_counter() - t0
        log.info("Prefect server up in %.1f s", server_s)

        warm_core = run_core(warm_cfg, roots.fresh("warmup-core"))
        log.info("warm-up core run (%s): %s", " ".join(WARMUP_OVERRIDES), warm_core.describe())
        roots.fresh("warmup-flow")
        warm_flow = run_flow(warm_cfg)
        log.info("warm-up flow run (%s): %s", " ".join(WARMUP_OVERRIDES), warm_flow.describe())

        core_runs: list[Timed] = []
        flow_runs: list[Timed] = []
        for i in range(rounds):
            core_runs.append(measurer.measure(f"core {i + 1}", lambda: roots.fresh("core"), lambda root: run_core(cfg, root)))
            log.info("round %d/%d core: %s", i + 1, rounds, core_runs[-1].describe())
            flow_runs.append(measurer.measure(f"flow {i + 1}", lambda: roots.fresh("flow"), lambda _root: run_flow(cfg)))
            log.info("round %d/%d flow: %s", i + 1, rounds, flow_runs[-1].describe())

    core = statistics.median(r.seconds for r in core_runs)
    flow = statistics.median(r.seconds for r in flow_runs)
    return {
        "ratio": flow / core,
        "flow_median_s": flow,
        "core_median_s": core,
        "runs_each": rounds,
        "core_runs": [r.to_dict() for r in core_runs],
        "flow_runs": [r.to_dict() for r in flow_runs],
        "prefect_server_start_s": server_s,
        "prefect_import_s": import_s,
        "warmup_core": warm_core.to_dict(),
        "warmup_flow": warm_flow.to_dict(),
        "overrides": FLOW_OVERRIDES,
        "contended_runs": sum(r.contended for r in core_runs + flow_runs),
    }


# ---------------------------------------------------------------------------------------------
# 2. Training loop throughput
# ---------------------------------------------------------------------------------------------


def bare_loop(model, images, labels, epochs: int, batch_size: int, lr: float, weight_decay: float) -> None:
    """The minimal loop: shuffle, index a batch, normalise it (channels-last, as `fit`), forward, cross-entropy, AdamW step."""
    import torch
    import torch.nn.functional as F

    from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD
    from adaptflow.training import MEMORY_FORMAT

    model.to(memory_format=MEMORY_FORMAT)
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
            x = ((images[idx].float().div_(255.0) - mean) / std).contiguous(memory_format=MEMORY_FORMAT)
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def bench_fit(template: Path, measurer: Measurer, n_images: int, epochs: int, rounds: int) -> dict:
    import torch

    from adaptflow.config import load_config
    from adaptflow.data import ImageSet, load_split
    from adaptflow.finetune import scorer
    from adaptflow.models import build_classifier
    from adaptflow.training import EpochScore, TrainSettings, fit

    use_root(template)
    torch.set_flush_denormal(True)  # fit() sets it as well; the bare loop runs under the same flag
    threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    cfg = load_config(None, [])
    full = load_split(cfg.data, cfg.data.source, "train")
    data = ImageSet(full.images[:n_images].contiguous(), full.labels[:n_images].contiguous(), full.classes)
    warm = ImageSet(data.images[:512], data.labels[:512], data.classes)
    batch_size, lr, weight_decay = 64, 1e-3, 1e-4

    torch.manual_seed(0)
    initial = copy.deepcopy(build_classifier("resnet18", len(data.classes)).state_dict())

    def fresh_model():
        model = build_classifier("resnet18", len(data.classes))
        model.load_state_dict(initial)
        return model

    # Per-epoch scoring (finetune.keep_epoch): a labeled validation set and an unlabeled split, each a
    # quarter of the training set's size, scored after every epoch.
    held = load_split(cfg.data, cfg.data.source, "test")
    quarter = n_images // 4
    epoch_score = scorer(ImageSet(held.images[:quarter], held.labels[:quarter], held.classes),
                         ImageSet(held.images[quarter : 2 * quarter], held.labels[quarter : 2 * quarter], held.classes))

    def ours(model, k_epochs: int = epochs, subset: ImageSet = data, score: EpochScore | None = None) -> Timed:
        settings = TrainSettings(epochs=k_epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, strategy="finetune",
                               augment=False, device="cpu", keep_epoch="information_maximization" if score else "last")
        with Timed() as timed:
            fit(model, subset, settings, progress=False, score=score)
        timed.images_per_s = k_epochs * len(subset) / timed.seconds
        return timed

    def scored(model) -> Timed:
        return ours(model, score=epoch_score)

    def bare(model, k_epochs: int = epochs, subset: ImageSet = data) -> Timed:
        with Timed() as timed:
            bare_loop(model, subset.images, subset.labels, k_epochs, batch_size, lr, weight_decay)
        timed.images_per_s = k_epochs * len(subset) / timed.seconds
        return timed

    def describe(timed: Timed) -> str:
        return f"{timed.images_per_s:.1f} images/s in {timed.describe()}"

    log.info("training loop: warm-up of each on %d images; %d threads", len(warm), threads)
    ours(fresh_model(), 1, warm)
    bare(fresh_model(), 1, warm)
    runs: dict[str, list[Timed]] = {"ours": [], "bare": [], "scored": []}
    for i in range(rounds):
        for name, run in (("ours", ours), ("bare", bare), ("scored", scored)):
            runs[name].append(measurer.measure(f"{name} {i + 1}", fresh_model, run))
            log.info("round %d/%d %s: %s", i + 1, rounds, name, describe(runs[name][-1]))

    median = {name: statistics.median(r.images_per_s for r in timed) for name, timed in runs.items()}
    return {
        "ratio": median["ours"] / median["bare"],
        "ours_median_images_per_s": median["ours"],
        "bare_median_images_per_s": median["bare"],
        "scored_ratio": median["scored"] / median["ours"],
        "scored_median_images_per_s": median["scored"],
        "runs_each": rounds,
        **{f"{name}_runs": [{"images_per_s": r.images_per_s, **r.to_dict()} for r in timed] for name, timed in runs.items()},
        "images": len(data),
        "scored_images": {"validation": quarter, "unlabeled": quarter},
        "epochs_per_run": epochs,
        "batch_size": batch_size,
        "arch": "resnet18",
        "image_size": cfg.data.image_size,
        "threads": threads,
        "flush_denormal": True,
        "contended_runs": sum(r.contended for timed in runs.values() for r in timed),
    }


# ---------------------------------------------------------------------------------------------
# 3. Memory layout
# ---------------------------------------------------------------------------------------------


def bench_layout(template: Path, measurer: Measurer, n_images: int, rounds: int) -> dict:
    """fit and predict images/s in the channels-last layout over the same in NCHW, per architecture."""
    import torch

    import adaptflow.training.runtime as train
    from adaptflow.config import load_config
    from adaptflow.data import ImageSet, load_split
    from adaptflow.models import build_classifier
    from adaptflow.training import TrainSettings, fit, predict

    use_root(template)
    cfg = load_config(None, [])
    full = load_split(cfg.data, cfg.data.source, "train")
    data = ImageSet(full.images[:n_images].contiguous(), full.labels[:n_images].contiguous(), full.classes)
    settings = TrainSettings(epochs=1, batch_size=64, lr=1e-3, strategy="finetune", augment=False, device="cpu")
    chosen = train.MEMORY_FORMAT
    layouts = {"channels_last": torch.channels_last, "nchw": torch.contiguous_format}

    def timed_call(call: Callable[[Any], Any]) -> Callable[[Any], Timed]:
        def run(model) -> Timed:
            with Timed() as timed:
                call(model)
            timed.images_per_s = len(data) / timed.seconds
            return timed
        return run

    calls = {"fit": lambda model: fit(model, data, settings, progress=False), "predict": lambda model: predict(model, data.images, device="cpu")}
    result: dict[str, Any] = {"images": len(data), "image_size": cfg.data.image_size, "threads": torch.get_num_threads()}
    try:
        for arch in LAYOUT_ARCHS:
            runs: dict[str, list[Timed]] = {f"{call}_{layout}": [] for call in calls for layout in layouts}
            for i in range(rounds + 1):  # the first round warms up, untimed
                for layout, memory_format in layouts.items():
                    train.MEMORY_FORMAT = memory_format
                    for call, run in calls.items():
                        timed = measurer.measure(f"{arch} {call} {layout} {i}", lambda: build_classifier(arch, len(data.classes)), timed_call(run))
                        if i:
                            runs[f"{call}_{layout}"].append(timed)
                            log.info("layout %s %s %s: %.0f images/s in %s", arch, call, layout, timed.images_per_s, timed.describe())
            median = {name: statistics.median(r.images_per_s for r in timed) for name, timed in runs.items()}
            result[arch] = {**{f"{name}_median_images_per_s": v for name, v in median.items()},
                            **{f"{call}_ratio": median[f"{call}_channels_last"] / median[f"{call}_nchw"] for call in calls},
                            "contended_runs": sum(r.contended for timed in runs.values() for r in timed)}
    finally:
        train.MEMORY_FORMAT = chosen
    result["runs_each"] = rounds
    return result


# ---------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.bench", description=__doc__.splitlines()[0])
    parser.add_argument("--flow-rounds", type=int, default=3, help="timed (core, flow) pairs (default 3)")
    parser.add_argument("--fit-rounds", type=int, default=3, help="timed (ours, bare) pairs (default 3)")
    parser.add_argument("--fit-images", type=int, default=2000, help="MNIST train images per epoch (default 2000)")
    parser.add_argument("--cache-images", type=int, default=2000, help="photos the image cache section decodes (default 2000)")
    parser.add_argument("--fit-epochs", type=int, default=2, help="epochs per timed training run (default 2)")
    parser.add_argument("--quiet-wait", type=float, default=30.0,
                        help="seconds a timed run may wait for other processes to leave the CPUs (default 30)")
    parser.add_argument("--retries", type=int, default=1, help="re-runs of a run other processes disturbed (default 1)")
    parser.add_argument("--budget", type=float, default=330.0,
                        help="seconds after which runs no longer wait for quiet nor re-run (default 330)")
    parser.add_argument("--thread-rounds", type=int, default=3,
                        help="alternating (auto, default) rounds of the thread-budget cases, with and without a neighbour (default 3)")
    parser.add_argument("--deploy-rounds", type=int, default=3, help="timed (ONNX, eager) pairs per model and batch (default 3)")
    parser.add_argument("--deploy-threads", type=int, default=None, help="threads of both runtimes in the deployment section "
                        "(default: torch's; 1 on a busy machine, where two threads wait on each other)")
    parser.add_argument("--yolo-rounds", type=int, default=3, help="alternating (adaptflow, Ultralytics) rounds of the YOLO section (default 3)")
    parser.add_argument("--only", choices=("all", "deploy", "yolo"), default="all",
                        help="deploy: only the deployment section; yolo: only the YOLO fixed-cost section")
    parser.add_argument("--keep", action="store_true", help="keep the temporary projects")
    args = parser.parse_args(argv)

    for name in ("perf.bench", "perf.threads", "perf.detection_eval", "perf.yolo_overhead", "perf.text_throughput"):
        progress_log(logging.getLogger(name), "bench")
    started = time.perf_counter()
    measurer = Measurer(started + args.budget, args.quiet_wait, args.retries)
    base = Path(tempfile.mkdtemp(prefix="adaptflow-bench-"))
    # Isolation: no shared tracking store, decode cache or Prefect server may leak into the runs.
    for key in ("MLFLOW_TRACKING_URI", "ADAPTFLOW_CACHE", "PREFECT_API_URL"):
        if os.environ.pop(key, None) is not None:
            log.info("ignoring $%s for the benchmark", key)
    os.environ["PREFECT_HOME"] = str(base / "prefect-home")
    use_root(base / "template")  # ADAPTFLOW_ROOT must be set before env.apply()

    from adaptflow import env

    env.apply()
    log.info("temporary projects under %s", base)
    try:
        if args.only == "deploy":
            use_root(base / "deploy")
            deploy_result = bench_deploy(base / "deploy", measurer, args.deploy_rounds, args.deploy_threads)
            for line in ["", *report_lines(deploy_result)]:
                print(line)
            REPORT.parent.mkdir(parents=True, exist_ok=True)
            (REPORT.parent / "bench-deploy.json").write_text(json.dumps(deploy_result, indent=2) + "\n")
            return 0
        if args.only == "yolo":
            use_root(base / "yolo")
            yolo_result = bench_yolo_overhead(base / "yolo", args.yolo_rounds)
            for line in ["", *yolo_summary(yolo_result)]:
                print(line)
            REPORT.parent.mkdir(parents=True, exist_ok=True)
            (REPORT.parent / "bench-yolo.json").write_text(json.dumps(yolo_result, indent=2) + "\n")
            return 0
        template = make_template(base)
        threads_result = bench_threads(template, args.thread_rounds)
        from adaptflow.data import ensure_domains

        ensure_domains(template / "data", ["mnist_scenes", "photo_scenes"])
        detection_result = bench_detection_eval(template, make_model(base / "yolov8n.pt", "yolov8n", REPO / "configs" / "detection.yaml", template),
                                                rounds=args.thread_rounds)
        use_root(base / "yolo")
        yolo_result = bench_yolo_overhead(base / "yolo", args.yolo_rounds)
        use_root(template)
        fit_result = bench_fit(template, measurer, args.fit_images, args.fit_epochs, args.fit_rounds)
        text_result = bench_text(rounds=args.fit_rounds)
        layout_result = bench_layout(template, measurer, args.fit_images, args.fit_rounds)
        flow_result = bench_flow(Roots(base, template), measurer, args.flow_rounds)
        cache_result = bench_image_cache(base, args.cache_images)
        use_root(base / "deploy")
        deploy_result = bench_deploy(base / "deploy", measurer, args.deploy_rounds, args.deploy_threads)
    finally:
        if args.keep:
            log.info("kept %s", base)
        else:
            shutil.rmtree(base, ignore_errors=True)

    import torch

    total = time.perf_counter() - started
    result = {
        "flow_overhead": flow_result,
        "training_loop": fit_result,
        "text_training_loop": text_result,
        "memory_layout": layout_result,
        "image_cache": cache_result,
        "thread_budget": threads_result,
        "detection_evaluation": detection_result,
        "yolo_fixed_cost": yolo_result,
        "deployment": deploy_result,
        "discarded_runs": measurer.discarded,
        "contended_cores_threshold": CONTENDED_CORES,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "platform": platform.platform()},
        "total_seconds": total,
    }
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(result, indent=2) + "\n")

    f, t = flow_result, fit_result
    report = REPORT.relative_to(REPO)
    print()
    print(f"flow end-to-end / bare core functions: {f['ratio']:.3f}  (flow {f['flow_median_s']:.1f} s, "
          f"core {f['core_median_s']:.1f} s, median of {f['runs_each']}; "
          f"one-time Prefect server start {f['prefect_server_start_s']:.1f} s not included)")
    print(f"training loop / bare torch loop (images/s): {t['ratio']:.3f}  (ours {t['ours_median_images_per_s']:.0f}, "
          f"bare {t['bare_median_images_per_s']:.0f}, median of {t['runs_each']})")
    print(f"training with per-epoch scoring / without (images/s): {t['scored_ratio']:.3f}  (validation and unlabeled sets "
          f"each a quarter of the training set's size, scored after every epoch)")
    for arch in LAYOUT_ARCHS:
        a = layout_result[arch]
        print(f"channels-last / NCHW layout, {arch} at {layout_result['image_size']} px (images/s): fit {a['fit_ratio']:.2f}, "
              f"predict {a['predict_ratio']:.2f}  (fit {a['fit_channels_last_median_images_per_s']:.0f} against "
              f"{a['fit_nchw_median_images_per_s']:.0f}, predict {a['predict_channels_last_median_images_per_s']:.0f} against "
              f"{a['predict_nchw_median_images_per_s']:.0f}, median of {layout_result['runs_each']})")
    c, mib = cache_result, "{:.0f} MiB".format
    print(f"image cache, {c['images']} photos at {c['image_size']} px ({mib(c['ours']['dataset_mib'])}), adaptflow / plain: decode peak "
          f"memory {c['decode_peak_ratio']:.2f} ({mib(c['ours']['decode_peak_growth_mib'])} against {mib(c['plain']['decode_peak_growth_mib'])}), "
          f"cached load time {c['cached_load_ratio']:.2f}, two processes' memory for one cached set {c['two_processes_ratio']:.2f} "
          f"({mib(c['ours']['two_processes_pss_mib'])} against {mib(c['plain']['two_processes_pss_mib'])})")
    for line in [*text_summary(text_result), *threads_summary(threads_result), *detection_summary(detection_result), *yolo_summary(yolo_result), *report_lines(deploy_result)]:
        print(line)
    kept = f["contended_runs"] + t["contended_runs"] + sum(layout_result[arch]["contended_runs"] for arch in LAYOUT_ARCHS)
    if measurer.discarded or kept:
        print(f"note: other processes shared the CPUs: {len(measurer.discarded)} disturbed run(s) discarded and re-run, "
              f"{kept} kept run(s) still disturbed (details in {report})")
    print(f"total {total:.0f} s; written to {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

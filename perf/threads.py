"""The thread budget under contention: `python -m perf.threads` (also part of `make bench`).

One epoch of the classifier loop (`adaptflow.training.fit`, `small_cnn` on MNIST at the demo's 32 px), each
run a fresh process, with torch's default thread count (one per core of the host: the old behaviour)
against `threads: auto` (`adaptflow.env.apply_threads`): first beside CPU-bound neighbours (other torch
processes computing at their default thread count, as other jobs on a shared machine or CI runner do; one,
then two of them: the ratio depends on the load), then with no neighbour. The two sides alternate within each round (the first side alternates too), and
every round is reported: the machine may be shared with other work.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from perf import progress_log

log = logging.getLogger("perf.threads")

SIDES = ("default", "auto")
#: A CPU-bound neighbour: a torch job at its default thread count, as another user's training would be.
NEIGHBOUR = "import torch\na = torch.randn(256, 256)\nwhile True:\n    a = torch.tanh(a @ a * 0.01)\n"


def worker(side: str, images: int) -> dict:
    """One epoch in this process with `side`'s thread count; returns images/s and the count."""
    import torch

    from adaptflow import env
    from adaptflow.config import load_config
    from adaptflow.data import ImageSet, load_split
    from adaptflow.models import build_classifier
    from adaptflow.training import TrainSettings, fit

    if side == "auto":
        env.apply_threads("auto")
    cfg = load_config(None, [])
    full = load_split(cfg.data, cfg.data.source, "train")
    data = ImageSet(full.images[:images].contiguous(), full.labels[:images].contiguous(), full.classes)
    settings = TrainSettings(epochs=1, batch_size=64, lr=1e-3, strategy="finetune", device="cpu")
    torch.manual_seed(0)
    fit(build_classifier("small_cnn", len(data.classes)), ImageSet(data.images[:128], data.labels[:128], data.classes), settings,
        progress=False)  # warm-up: first-call allocations and kernel selection
    model = build_classifier("small_cnn", len(data.classes))
    t0 = time.perf_counter()
    fit(model, data, settings, progress=False)
    seconds = time.perf_counter() - t0
    return {"side": side, "threads": torch.get_num_threads(), "seconds": seconds, "images_per_s": images / seconds}


def _run_side(side: str, images: int, root: Path) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")}
    clean["ADAPTFLOW_ROOT"] = str(root)
    out = subprocess.run([sys.executable, "-m", "perf.threads", "--worker", side, "--images", str(images)],
                         capture_output=True, text=True, env=clean, cwd=Path(__file__).resolve().parents[1])
    if out.returncode != 0:
        raise RuntimeError(f"benchmark worker ({side}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def case_name(neighbours: int) -> str:
    return "idle" if neighbours == 0 else "contention" if neighbours == 1 else f"contention_{neighbours}"


def bench_threads(root: Path, rounds: int = 3, images: int = 2000, neighbours: tuple[int, ...] = (1, 2)) -> dict:
    """The contention cases (each count of `neighbours`) and the idle case, `rounds` alternating rounds each;
    ratios of median images/s, auto / default."""
    result: dict = {"images": images, "arch": "small_cnn", "epochs_per_run": 1, "usable_cpus": None, "rounds": rounds,
                    "neighbours": [n for n in neighbours if n > 0]}
    from adaptflow import env

    result["usable_cpus"] = env.usable_cpus()
    for count in [*result["neighbours"], 0]:
        case = case_name(count)
        started = [subprocess.Popen([sys.executable, "-c", NEIGHBOUR]) for _ in range(count)]
        try:
            if started:
                time.sleep(2.0)  # the neighbours' torch is loaded and computing
            runs: dict[str, list[dict]] = {side: [] for side in SIDES}
            for i in range(rounds):
                for side in SIDES if i % 2 == 0 else SIDES[::-1]:
                    row = _run_side(side, images, root) | {"load_average": os.getloadavg()[0]}
                    runs[side].append(row)
                    log.info("%s round %d/%d %s: %.0f images/s with %d thread(s) (%.1f s)", case, i + 1, rounds, side,
                             row["images_per_s"], row["threads"], row["seconds"])
        finally:
            for neighbour in started:
                neighbour.kill()
                neighbour.wait()
        median = {side: statistics.median(r["images_per_s"] for r in runs[side]) for side in SIDES}
        result[case] = {"ratio": median["auto"] / median["default"], **{f"{side}_median_images_per_s": median[side] for side in SIDES},
                        **{f"{side}_runs": runs[side] for side in SIDES}}
    return result


def summary(r: dict) -> list[str]:
    """The printed lines: each case's ratio with its raw rounds."""
    lines = []
    counts = r.get("neighbours", [1])
    for count in [*counts, 0]:
        case = case_name(count)
        label = "no neighbour" if count == 0 else "beside a CPU-bound neighbour" if count == 1 else f"beside {count} CPU-bound neighbours"
        c = r[case]
        raw = "; ".join(f"{side} " + ", ".join(f"{x['images_per_s']:.0f}" for x in c[f"{side}_runs"]) + f" ({c[f'{side}_runs'][0]['threads']} thr.)"
                        for side in SIDES)
        lines.append(f"threads auto / torch default, {label} (images/s): {c['ratio']:.2f}  (median auto "
                     f"{c['auto_median_images_per_s']:.0f}, default {c['default_median_images_per_s']:.0f}; raw rounds: {raw})")
    return lines


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what `platform` says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.threads", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per case (default 3)")
    parser.add_argument("--images", type=int, default=2000, help="MNIST training images per epoch (default 2000)")
    parser.add_argument("--neighbours", default="1,2", help="CPU-bound neighbour counts of the contention cases (default 1,2)")
    parser.add_argument("--root", type=Path, default=None, help="project folder holding data/mnist (default: $ADAPTFLOW_ROOT or .)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.images)))
        return 0
    progress_log(log, "bench threads")
    root = (args.root or Path(os.environ.get("ADAPTFLOW_ROOT") or ".")).resolve()
    result = bench_threads(root, args.rounds, args.images, tuple(int(n) for n in args.neighbours.split(",") if n.strip()))
    result["machine"] = {"cpu": cpu_model(), "cpus": os.cpu_count()}
    print(json.dumps(result, indent=2) if os.environ.get("BENCH_JSON") else "\n".join(summary(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

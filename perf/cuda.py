"""Training-loop throughput on a CUDA device, as measured ratios: `python -m perf.cuda`.

For each case (architecture, image size, batch size), on random uint8 images of that size:

- `fit`: `adaptflow.training.fit` as the pipeline runs it on a GPU (bf16 autocast, channels-last,
  the images resident on the device, fused optimizer).
- `bare`: a minimal torch loop with the same model and initial weights, optimizer, precision,
  memory format, per-batch normalisation and batch order: the ceiling for `fit`'s own overhead.
- `bare_foreach`: `bare` with the optimizer's multi-tensor (non-fused) update.
- `bare_cudnn_benchmark`: `bare` with cuDNN choosing convolution kernels by timing them.
- `host`: `fit` with the images left in host memory, the path of a dataset larger than its
  share of the GPU's free memory (`adaptflow.data.feed`): pinned buffers, copies on a side stream.

Runs alternate over the variants, after an untimed warm-up of each; the median of `--rounds`
runs is reported. The case's arithmetic (FLOPs of one forward and backward pass, counted by
torch) over a bf16 matrix product timed in the same run gives the share of the chip's matmul
rate the loop reaches. Results: a table on stdout and a JSON file (`--out`). Times are reported,
never asserted on.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from perf import progress_log

log = logging.getLogger("perf.cuda")

#: (architecture, image size, batch size, images per epoch)
CASES = [("resnet18", 32, 64, 16384), ("resnet18", 224, 256, 4096), ("resnet50", 224, 256, 2048)]
VARIANTS = ("fit", "bare", "bare_foreach", "bare_cudnn_benchmark", "host")


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """bf16 n x n x n matrix products per second, in TFLOP/s (mean of `reps` after three warm-ups)."""
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    torch.cuda.synchronize()
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e12


def step_flops(model: torch.nn.Module, batch: int, size: int) -> float:
    """FLOPs of one forward and backward pass over a batch (convolutions and matrix products)."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(batch, 3, size, size, device="cuda").contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter, torch.autocast("cuda", dtype=torch.bfloat16):
        model(x).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def bare_loop(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch: int, *,
              fused: bool = True, seed: int = 0) -> None:
    """The least a bf16, channels-last training loop can do, with `fit`'s AdamW settings."""
    from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN, device="cuda").view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device="cuda").view(1, 3, 1, 1)
    model.to("cuda", memory_format=torch.channels_last).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4, fused=fused, foreach=None if fused else True)
    generator = torch.Generator().manual_seed(seed)
    n = len(labels)
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator).to("cuda")
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            x = ((images[idx].float().div_(255.0) - mean) / std).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    torch.cuda.synchronize()


def run_case(arch: str, size: int, batch: int, n: int, rounds: int, seconds: float) -> dict:
    import adaptflow.data.feed as feed
    import adaptflow.training as train
    from adaptflow.data import ImageSet
    from adaptflow.models import build_classifier

    classes = 10
    g = torch.Generator().manual_seed(0)
    host = ImageSet(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8),
                    torch.randint(0, classes, (n,), generator=g), tuple(str(c) for c in range(classes)))
    resident = (host.images.cuda(), host.labels.cuda())
    torch.manual_seed(0)
    initial = copy.deepcopy(build_classifier(arch, classes).state_dict())

    def fresh() -> torch.nn.Module:
        model = build_classifier(arch, classes)
        model.load_state_dict(initial)
        return model

    def fit(model: torch.nn.Module, epochs: int, resident_share: float) -> None:
        settings = train.TrainSettings(epochs=epochs, batch_size=batch, lr=1e-3, device="cuda", precision="bf16")
        before, feed.RESIDENT_SHARE = feed.RESIDENT_SHARE, resident_share
        try:
            train.fit(model, host, settings, progress=False)
        finally:
            feed.RESIDENT_SHARE = before
        torch.cuda.synchronize()

    def cudnn_benchmark(model: torch.nn.Module, epochs: int) -> None:
        before, torch.backends.cudnn.benchmark = torch.backends.cudnn.benchmark, True
        try:
            bare_loop(model, *resident, epochs, batch)
        finally:
            torch.backends.cudnn.benchmark = before

    runs: dict[str, Callable[[torch.nn.Module, int], None]] = {
        "fit": lambda m, e: fit(m, e, feed.RESIDENT_SHARE),
        "bare": lambda m, e: bare_loop(m, *resident, e, batch),
        "bare_foreach": lambda m, e: bare_loop(m, *resident, e, batch, fused=False),
        "bare_cudnn_benchmark": cudnn_benchmark,
        "host": lambda m, e: fit(m, e, 0.0),
    }

    def timed(name: str, epochs: int) -> float:
        model = fresh()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        runs[name](model, epochs)
        return time.perf_counter() - t0

    for name in VARIANTS:  # warm-up: cuDNN's plans, the allocator's pools, lazy module loading
        timed(name, 1)
    epochs = max(1, math.ceil(seconds / timed("bare", 1)))
    images_per_s: dict[str, list[float]] = {name: [] for name in VARIANTS}
    peak_gib: dict[str, float] = {}
    for r in range(rounds):
        for name in VARIANTS:
            images_per_s[name].append(epochs * n / timed(name, epochs))
            peak_gib[name] = torch.cuda.max_memory_allocated() / 2**30
        log.info("%s %dpx batch %d round %d/%d: %s", arch, size, batch, r + 1, rounds,
                 ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in images_per_s.items()))
    median = {name: statistics.median(v) for name, v in images_per_s.items()}
    flops = step_flops(fresh().to("cuda", memory_format=torch.channels_last), batch, size) / batch
    return {
        "arch": arch, "image_size": size, "batch_size": batch, "images": n, "epochs_per_run": epochs, "rounds": rounds,
        "images_per_s": median, "runs": images_per_s, "peak_memory_gib": peak_gib,
        "ratios": {name: median[name] / median["bare"] for name in VARIANTS if name != "bare"},
        "train_gflop_per_image": flops / 1e9,
        "fit_tflops": median["fit"] * flops / 1e12,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.cuda", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed runs of each variant per case (default 3)")
    parser.add_argument("--seconds", type=float, default=2.0, help="about how long one timed run lasts (default 2)")
    parser.add_argument("--out", type=Path, default=Path("reports/cuda.json"), help="where the JSON result goes")
    args = parser.parse_args(argv)
    progress_log(log, "cuda")
    if not torch.cuda.is_available():
        parser.error("no CUDA device: this benchmark measures the GPU training path")

    started = time.perf_counter()
    peak = matmul_tflops()
    log.info("%s: bf16 matmul %.0f TFLOP/s", torch.cuda.get_device_name(), peak)
    cases = [run_case(*case, args.rounds, args.seconds) for case in CASES]
    for case in cases:
        case["fit_share_of_matmul"] = case["fit_tflops"] / peak
    result = {
        "device": torch.cuda.get_device_name(), "matmul_bf16_tflops": peak, "cases": cases,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda},
        "total_seconds": time.perf_counter() - started,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"\n{result['device']}, torch {torch.__version__}: bf16 matmul {peak:.0f} TFLOP/s")
    print(f"{'case':<22}" + "".join(f"{v:>22}" for v in VARIANTS) + f"{'fit TFLOP/s':>14}{'of matmul':>11}")
    for c in cases:
        row = f"{c['arch']} {c['image_size']}px b{c['batch_size']}"
        cells = "".join(f"{c['images_per_s'][v]:>13.0f}/s ({c['images_per_s'][v] / c['images_per_s']['bare']:.2f})" for v in VARIANTS)
        print(f"{row:<22}{cells}{c['fit_tflops']:>14.1f}{c['fit_share_of_matmul']:>10.1%}")
    print(f"(ratios to `bare`; written to {args.out})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

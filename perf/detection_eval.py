"""Detector evaluation, before and after: `python -m perf.detection_eval` (also part of `make bench`).

Scores one detector file on the demo's test sets (target and source), as the evaluate stage's `measure`
does: load the file, decode the test images, predict, compute the COCO report. `previous` is how it
ran before (torch's default thread count, the report from torchmetrics' MeanAveragePrecision, which
re-runs the COCO evaluation once per class); `adaptflow` is how it runs now (the thread budget, one
COCO evaluation by pycocotools). Each run is a fresh process (imports and thread pools count), the
sides alternate, every round is reported, and the two sides' metrics are compared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from perf import progress_log

log = logging.getLogger("perf.detection_eval")
SIDES = ("previous", "adaptflow")
REPO = Path(__file__).resolve().parents[1]


def worker(side: str, model_path: str, config: str) -> dict:
    t0 = time.perf_counter()
    from adaptflow import env

    if side == "adaptflow":
        env.apply_threads("auto")
    import torch

    from adaptflow.config import load_config
    from adaptflow.detection import stages
    from adaptflow.detection.metrics import detection_report, torchmetrics_report
    from adaptflow.detection.models import load_detector, predict

    cfg = load_config(config, [])
    started = time.perf_counter()
    model, meta = load_detector(model_path)
    tests = stages._test_sets(cfg.data, meta["classes"])
    report = detection_report if side == "adaptflow" else torchmetrics_report
    metrics = {}
    for name, test in tests.items():
        result = report(predict(model, meta["arch"], test.images, cfg.evaluate.batch_size, "cpu"), test.targets(), test.classes)
        metrics |= {f"{name}_map50": result["map50"], f"{name}_map50_95": result["map50_95"]}
    seconds = time.perf_counter() - started
    return {"side": side, "seconds": seconds, "imports_seconds": started - t0, "threads": torch.get_num_threads(),
            "images": sum(len(t) for t in tests.values()), "metrics": metrics}


def _run(side: str, model_path: Path, config: Path, root: Path) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")} | {"ADAPTFLOW_ROOT": str(root)}
    out = subprocess.run([sys.executable, "-m", "perf.detection_eval", "--worker", side, "--model", str(model_path),
                          "--config", str(config)], capture_output=True, text=True, env=clean, cwd=REPO)
    if out.returncode != 0:
        raise RuntimeError(f"detection evaluation worker ({side}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def make_model(path: Path, arch: str, config: Path, root: Path) -> Path:
    """A detector file of `arch` for the config's target classes, from its initial weights (seed 0), unless `path` exists."""
    if path.exists():
        return path
    code = ("import sys, torch\nfrom adaptflow.config import load_config\nfrom adaptflow.detection import stages\n"
            "from adaptflow.detection.models import build_detector, save_detector\n"
            f"cfg = load_config({str(config)!r}, [])\nclasses = stages.domain_classes(cfg.data, cfg.data.target)\n"
            f"torch.manual_seed(0)\nmodel = build_detector({arch!r}, len(classes), cfg.data.image_size)\n"
            f"save_detector({str(path)!r}, model, arch={arch!r}, classes=classes, image_size=cfg.data.image_size)\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO, env=os.environ | {"ADAPTFLOW_ROOT": str(root)},
                   capture_output=True)
    return path


def bench_detection_eval(root: Path, model_path: Path, config: Path = REPO / "configs" / "detection.yaml", rounds: int = 3) -> dict:
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            row = _run(side, model_path, config, root) | {"load_average": os.getloadavg()[0]}
            runs[side].append(row)
            log.info("detector evaluation round %d/%d %s: %.1f s with %d thread(s)", i + 1, rounds, side, row["seconds"], row["threads"])
    median = {side: statistics.median(r["seconds"] for r in runs[side]) for side in SIDES}
    first = {side: runs[side][0]["metrics"] for side in SIDES}
    return {"speedup": median["previous"] / median["adaptflow"], **{f"{side}_median_s": median[side] for side in SIDES},
            "max_metric_difference": max(abs(first["previous"][k] - first["adaptflow"][k]) for k in first["previous"]),
            "metrics": first["adaptflow"], "model": str(model_path), "images": runs["adaptflow"][0]["images"], "rounds": rounds,
            **{f"{side}_runs": runs[side] for side in SIDES}}


def summary(r: dict) -> list[str]:
    raw = "; ".join(f"{side} " + ", ".join(f"{x['seconds']:.1f}" for x in r[f"{side}_runs"]) + f" s ({r[f'{side}_runs'][0]['threads']} thr.)"
                    for side in SIDES)
    return [f"detector evaluation, previous / now (time, {r['images']} test images): {r['speedup']:.2f}x faster  (median previous "
            f"{r['previous_median_s']:.1f} s, now {r['adaptflow_median_s']:.1f} s; raw rounds: {raw}; largest metric difference "
            f"{r['max_metric_difference']:.1e})"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.detection_eval", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--model", type=Path, default=None, help="detector file (default: yolov8n from its initial weights)")
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "detection.yaml")
    parser.add_argument("--root", type=Path, default=None, help="project folder holding the data (default: $ADAPTFLOW_ROOT or .)")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, str(args.model), str(args.config))))
        return 0
    progress_log(log, "bench detection")
    root = (args.root or Path(os.environ.get("ADAPTFLOW_ROOT") or ".")).resolve()
    model = args.model or make_model(root / ".cache" / "bench-yolov8n.pt", "yolov8n", args.config, root)
    print("\n".join(summary(bench_detection_eval(root, model.resolve(), args.config.resolve(), args.rounds))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The YOLO path's fixed cost: `python -m perf.yolo_overhead` (also part of `make bench`).

`adaptflow finetune -c configs/detection.yaml` (10 epochs, the demo's target training split) against plain
Ultralytics, `YOLO(weights).train(...)`, on the same images, the same starting weights (one model saved both
as adaptflow's detector file and as an Ultralytics checkpoint) and the same training settings. Each run is
a whole command in a fresh process (imports, data checks, model loading and saving count), the two sides
alternate within each round and the first side alternates between rounds; every round is reported, with
the per-epoch losses of both sides compared.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from perf import progress_log

log = logging.getLogger("perf.yolo_overhead")
SIDES = ("ultralytics", "adaptflow")
REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "detection.yaml"

#: The plain-Ultralytics side: what a user of Ultralytics alone writes, with the settings adaptflow passes its trainer.
PLAIN = """\
import json, sys, time
t0 = time.perf_counter()
from ultralytics import YOLO
args = json.loads(sys.argv[2])
losses = []
model = YOLO(sys.argv[1])
def record(t):
    if t.epoch < t.epochs:
        losses.append({k: float(v) for k, v in t.label_loss_items(t.tloss, prefix="train").items()})
model.add_callback("on_fit_epoch_end", record)
model.train(**args)
print(json.dumps({"seconds": time.perf_counter() - t0, "losses": losses}))
"""


def plain_args(cfg, data_yaml: Path, work_dir: Path) -> dict:  # noqa: ANN001 - a RunConfig
    """`YOLO.train` keywords equal to those adaptflow's trainer gets for `cfg.finetune` on CPU."""
    from adaptflow.detection.yolo import training as yolo

    args = yolo.trainer_args(cfg.finetune.arch, data_yaml, work_dir, epochs=cfg.finetune.epochs, batch_size=cfg.finetune.batch_size,
                             lr=cfg.finetune.lr, weight_decay=cfg.finetune.weight_decay, image_size=cfg.data.image_size,
                             freeze=cfg.finetune.freeze, seed=cfg.finetune.seed, device="cpu", optimizer=cfg.finetune.optimizer,
                             augment=cfg.finetune.augment, precision=cfg.finetune.precision)
    args.pop("model")
    args.pop("pretrained")
    return args | {"name": "plain"}


def prepare(root: Path, epochs: int) -> dict:
    """The demo's detection data under `root`, one starting model in both file formats, the plain side's dataset and settings."""
    from adaptflow.config import load_config
    from adaptflow.data import ensure_domains, split_dir
    from adaptflow.detection import stages, yolo
    from adaptflow.detection.data import stage_yolo_dataset
    from adaptflow.detection.models import build_detector, save_detector

    ensure_domains(root / "data", ["mnist_scenes", "photo_scenes"])
    if not (root / "data.dvc").exists():  # a stage records the data version: the project is a git + DVC repo
        for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"], [sys.executable, "-m", "dvc", "add", "-q", "data"]):
            subprocess.run(cmd, cwd=root, check=True, capture_output=True, env=os.environ | {"DVC_NO_ANALYTICS": "1"})
    cfg = load_config(str(CONFIG), [f"finetune.epochs={epochs}", "finetune.device=cpu"])
    classes = stages.domain_classes(cfg.data, cfg.data.target)
    import torch

    torch.manual_seed(0)
    model = build_detector(cfg.finetune.arch, len(classes), cfg.data.image_size)
    weights = root / "models" / "bench-yolo"
    weights.mkdir(parents=True, exist_ok=True)
    save_detector(weights / "model.pt", model, arch=cfg.finetune.arch, classes=classes, image_size=cfg.data.image_size)
    yolo.save_ultralytics(weights / "ultralytics.pt", model, arch=cfg.finetune.arch, classes=classes, image_size=cfg.data.image_size)
    train = split_dir(cfg.data, cfg.data.target, "train")
    data_yaml = stage_yolo_dataset({"train": train, "val": train}, classes, root / "plain" / "dataset")
    return {"adaptflow_weights": str(weights / "model.pt"), "ultralytics_weights": str(weights / "ultralytics.pt"),
            "plain_args": plain_args(cfg, data_yaml, root / "plain"), "epochs": epochs}


def _env(root: Path) -> dict[str, str]:
    from adaptflow import env

    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    # Both sides share the project's Ultralytics settings folder (integrations off, the font its dataset check wants).
    return clean | {"ADAPTFLOW_ROOT": str(root), "YOLO_CONFIG_DIR": str(env.project_path(Path(".cache") / "ultralytics")),
                    "YOLO_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}


def run_side(side: str, root: Path, setup: dict, round_no: int) -> dict:
    """One whole command of `side` in a fresh process: wall seconds and per-epoch training losses."""
    if side == "adaptflow":
        run_dir = root / "runs" / f"bench-{round_no}"
        cmd = [sys.executable, "-m", "adaptflow", "finetune", "-c", str(CONFIG), "--run-dir", str(run_dir), "--json",
               f"finetune.epochs={setup['epochs']}", "finetune.device=cpu", f"pretrained.uri={setup['adaptflow_weights']}"]
    else:
        shutil.rmtree(root / "plain" / "plain", ignore_errors=True)
        cmd = [sys.executable, "-c", PLAIN, setup["ultralytics_weights"], json.dumps(setup["plain_args"])]
    started = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env=_env(root), cwd=root)
    seconds = time.perf_counter() - started
    if out.returncode != 0:
        raise RuntimeError(f"{side} run failed:\n{out.stderr[-3000:]}")
    if side == "adaptflow":
        history = json.loads((run_dir / "finetune" / "history.json").read_text())
        losses = [{k: v for k, v in row.items() if k.startswith("train_")} for row in history]
    else:
        losses = [{k.replace("/", "_"): v for k, v in row.items()} for row in json.loads(out.stdout.strip().splitlines()[-1])["losses"]]
    return {"side": side, "seconds": seconds, "losses": losses, "load_average": os.getloadavg()[0]}


def bench_yolo_overhead(root: Path, rounds: int = 3, epochs: int = 10) -> dict:
    """`rounds` alternating rounds; the ratio of median wall times, adaptflow / Ultralytics."""
    setup = prepare(root, epochs)
    runs: dict[str, list[dict]] = {side: [] for side in SIDES}
    for i in range(rounds):
        for side in SIDES if i % 2 == 0 else SIDES[::-1]:
            row = run_side(side, root, setup, i)
            runs[side].append(row)
            log.info("YOLO fixed cost round %d/%d %s: %.1f s", i + 1, rounds, side, row["seconds"])
    median = {side: statistics.median(r["seconds"] for r in runs[side]) for side in SIDES}
    a, u = runs["adaptflow"][0]["losses"], runs["ultralytics"][0]["losses"]
    difference = max((abs(x[k] - y[k]) for x, y in zip(a, u, strict=True) for k in y), default=float("nan")) if len(a) == len(u) else float("inf")
    return {"ratio": median["adaptflow"] / median["ultralytics"], **{f"{side}_median_s": median[side] for side in SIDES},
            "epochs": epochs, "rounds": rounds, "max_loss_difference": difference,
            **{f"{side}_runs": [{k: v for k, v in r.items() if k != "losses"} for r in runs[side]] for side in SIDES}}


def summary(r: dict) -> list[str]:
    raw = "; ".join(f"{side} " + ", ".join(f"{x['seconds']:.1f}" for x in r[f"{side}_runs"]) + " s" for side in SIDES)
    return [f"YOLO fine-tune, adaptflow finetune / plain Ultralytics (whole command, {r['epochs']} epochs): {r['ratio']:.3f}  "
            f"(median adaptflow {r['adaptflow_median_s']:.1f} s, Ultralytics {r['ultralytics_median_s']:.1f} s; raw rounds: {raw}; "
            f"largest per-epoch loss difference {r['max_loss_difference']:.1e})"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perf.yolo_overhead", description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--root", type=Path, default=None, help="project folder for the data and runs (default: a temporary one)")
    args = parser.parse_args(argv)
    progress_log(log, "bench yolo")
    import tempfile

    root = (args.root or Path(tempfile.mkdtemp(prefix="adaptflow-yolo-bench-"))).resolve()
    os.environ["ADAPTFLOW_ROOT"] = str(root)
    print("\n".join(summary(bench_yolo_overhead(root, args.rounds, args.epochs))))
    return 0


if __name__ == "__main__":
    sys.exit(main())

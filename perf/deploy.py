"""Section 5 of `python -m perf.bench`: the speed of what users deploy.

1. CPU inference throughput of the exported ONNX model (ONNX Runtime, `adaptflow export --dynamic`) over eager
   PyTorch, for the demo's classifier (EfficientNet-Lite0 at 64 px, 10 classes) and detector (yolov8n at 128 px), at
   batch 1 and 32. Eager is what adaptflow runs: the classifier through `train.predict` (uint8 in, normalised inside,
   channels-last), the YOLO's forward pass in inference mode; ONNX Runtime runs the exported graph on the same images
   scaled to [0, 1] (non-maximum suppression is outside both). Each pair alternates after one warm-up each.
2. Serving round trip: `mlflow models serve` of the registered classifier on 127.0.0.1, 200 requests of one image
   (a JSON body, one at a time, after 5 warm-up requests): latency p50 and p95 in milliseconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("perf.bench")

BATCHES = (1, 32)
#: Images each timed throughput run infers (rounded up to whole batches).
IMAGES_PER_RUN = 256
REQUESTS = 200


def _models(base: Path) -> dict[str, tuple[Path, Path]]:
    """(adaptflow model file, real images to check and time on) for the demo's two model kinds."""
    import torch

    from adaptflow.data.scenes import build_scene_data
    from adaptflow.detection.models import build_detector, save_detector
    from adaptflow.models import load_source_model, save_checkpoint
    from adaptflow.weights import fetch_pretrained

    lite, _ = load_source_model(fetch_pretrained("package:efficientnet_lite0").path, "efficientnet_lite0")
    lite.head = torch.nn.Linear(lite.head.in_features, 10)
    save_checkpoint(base / "lite.pt", lite, arch="efficientnet_lite0", classes=tuple(str(i) for i in range(10)), image_size=64)
    torch.manual_seed(0)
    save_detector(base / "yolo.pt", build_detector("yolov8n", 10, 128), arch="yolov8n", classes=tuple(str(i) for i in range(10)),
                  image_size=128)
    build_scene_data(base / "data", sizes={"photo_scenes": {"test": 64}})
    images = base / "data" / "photo_scenes" / "test" / "images"
    return {"efficientnet_lite0": (base / "lite.pt", images), "yolov8n": (base / "yolo.pt", images)}


def _throughput(run, batch, measurer, label: str) -> tuple[float, Any]:  # noqa: ANN001
    """Images per second of `run(batch)` over IMAGES_PER_RUN images."""
    from perf.bench import Timed

    calls = -(-IMAGES_PER_RUN // len(batch))

    def timed(_: None) -> Timed:
        with Timed() as t:
            for _ in range(calls):
                run(batch)
        return t

    t = measurer.measure(label, lambda: None, timed)
    return calls * len(batch) / t.seconds, t


def bench_onnx(base: Path, measurer, rounds: int, threads: int | None = None) -> dict[str, Any]:  # noqa: ANN001 - bench.Measurer
    """Both runtimes on the same number of threads (`threads`, default torch's); ONNX Runtime's threads do not spin
    after a run, which would take the CPUs from the eager run that follows it."""
    import onnxruntime as ort
    import torch

    from adaptflow.export import ModelSource, check_images, export_model, read_model
    from adaptflow.training import predict, torch_threads

    threads = threads or torch.get_num_threads()
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    result: dict[str, Any] = {"images_per_run": IMAGES_PER_RUN, "runs_each": rounds, "threads": threads}
    for arch, (path, images) in _models(base).items():
        exported = export_model(ModelSource(path, str(path)), "onnx", images, base / f"{arch}.onnx", dynamic=True)
        kind, model, meta = read_model(path)
        size = int(meta["image_size"])
        session = ort.InferenceSession(str(exported.path), options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        pool = check_images(images, size, limit=64)
        if kind == "classifier":
            def eager(x):  # noqa: ANN001, ANN202
                return predict(model, x, batch_size=len(x), device="cpu")
        else:
            model = model.eval()

            def eager(x):  # noqa: ANN001, ANN202
                with torch.inference_mode():
                    return model(x.float().div(255))

        row: dict[str, Any] = {"image_size": size, "check": exported.check["summary"]}
        for batch_size in BATCHES:
            batch = pool[:batch_size] if batch_size <= len(pool) else pool.repeat(-(-batch_size // len(pool)), 1, 1, 1)[:batch_size]
            scaled = batch.float().div(255).numpy()
            onnx = lambda _b, s=scaled: session.run(None, {name: s})  # noqa: E731
            ours, theirs = [], []
            with torch_threads(threads):
                eager(batch), onnx(batch)  # warm-up
                for _ in range(rounds):
                    ours.append(_throughput(onnx, batch, measurer, f"{arch} onnx b{batch_size}")[0])
                    theirs.append(_throughput(eager, batch, measurer, f"{arch} eager b{batch_size}")[0])
            o, e = statistics.median(ours), statistics.median(theirs)
            row[f"batch_{batch_size}"] = {"onnx_images_per_s": o, "eager_images_per_s": e, "ratio": o / e}
            log.info("%s batch %d: ONNX Runtime %.0f images/s, eager PyTorch %.0f (%.2fx)", arch, batch_size, o, e, o / e)
        result[arch] = row
    return result


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bench_serving(base: Path) -> dict[str, Any]:
    """Latency of the served classifier, one image per request, over loopback."""
    from adaptflow import tracking
    from adaptflow.config import RegistryConfig, TrackingConfig

    track = TrackingConfig()
    run_id = tracking.start_run(track, "bench-serving", {}, {})
    reg = tracking.register_model(RegistryConfig(model_name="bench-serving"), track, run_id, base / "lite.pt",
                                  {"target_accuracy": 0.5}, {"task": "classification"})
    port = _free_port()
    env = os.environ | {"MLFLOW_TRACKING_URI": tracking.tracking_uri(track),  # and uvicorn, which it starts, from this Python's bin
                        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    logfile = open(base / "serve.log", "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{reg.name}/{reg.version}",
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
                              env=env, stdout=logfile, stderr=subprocess.STDOUT)
    try:
        started = time.perf_counter()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if server.poll() is not None or time.perf_counter() - started > 300:
                    raise RuntimeError(f"the model server did not start: {(base / 'serve.log').read_text()[-2000:]}") from None
                time.sleep(0.5)
        ready_s = time.perf_counter() - started
        from skimage import data

        image = np.asarray(__import__("PIL.Image").Image.fromarray(data.chelsea()).resize((64, 64)))[None]
        body = json.dumps({"inputs": image.tolist()}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", body, {"Content-Type": "application/json"})
        latencies = []
        for i in range(5 + REQUESTS):
            t0 = time.perf_counter()
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()
            if i >= 5:
                latencies.append((time.perf_counter() - t0) * 1000)
    finally:
        server.terminate()
        server.wait(30)
        logfile.close()
    q = statistics.quantiles(latencies, n=100)
    return {"requests": REQUESTS, "p50_ms": statistics.median(latencies), "p95_ms": q[94], "server_ready_s": ready_s,
            "body_bytes": len(body)}


def bench_deploy(base: Path, measurer, rounds: int, threads: int | None = None) -> dict[str, Any]:  # noqa: ANN001 - bench.Measurer
    base.mkdir(parents=True, exist_ok=True)
    return {"onnx": bench_onnx(base, measurer, rounds, threads), "serving": bench_serving(base)}


def report_lines(result: dict[str, Any]) -> list[str]:
    lines = []
    for arch in ("efficientnet_lite0", "yolov8n"):
        row = result["onnx"][arch]
        cells = ", ".join(f"batch {b} {row[f'batch_{b}']['ratio']:.2f} ({row[f'batch_{b}']['onnx_images_per_s']:.0f} against "
                          f"{row[f'batch_{b}']['eager_images_per_s']:.0f})" for b in BATCHES)
        lines.append(f"ONNX Runtime / eager PyTorch, {arch} at {row['image_size']} px, {result['onnx']['threads']} CPU thread(s) "
                     f"each (images/s): {cells}")
    s = result["serving"]
    lines.append(f"serving round trip, one {64} px image per request over loopback ({s['requests']} requests): p50 {s['p50_ms']:.1f} ms, "
                 f"p95 {s['p95_ms']:.1f} ms (server ready after {s['server_ready_s']:.0f} s)")
    return lines

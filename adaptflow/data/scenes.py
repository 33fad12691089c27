"""The detection demo's two real domains: MNIST digits placed in 128 x 128 scenes.

- source `mnist_scenes`: digits on flat, plainly coloured backgrounds (splits train, test).
- target `photo_scenes`: the same kind of digits on crops of natural photographs that ship
  with scikit-image and scikit-learn, darkened, with coloured or difference-blended digits,
  blur, sensor noise and JPEG artefacts (splits train = the small labeled part, unlabeled, test).
  Background photos are split by image: no photo seen in training appears in the test split.

Layout (YOLO format): `<root>/<domain>/<split>/images/<index>.{png,jpg}`, the matching
`<split>/labels/<index>.txt` (`class cx cy w h`, normalised), and `<root>/<domain>/data.yaml`.
Every image draws from its own generator seeded by (seed, domain, split, index), so a rebuild
is byte-identical and any one image can be regenerated alone, whatever else is built with it.
"""

from __future__ import annotations

import io
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageFilter

from adaptflow.data.demo import load_mnist_5k, load_photo, split_per_class
from adaptflow.io import staged_dir

log = logging.getLogger(__name__)

SOURCE = "mnist_scenes"
TARGET = "photo_scenes"
SIZE = 128
CLASSES = tuple(str(i) for i in range(10))

#: Background photographs, split by image between the target's training splits and its test split.
TRAIN_PHOTOS = ("astronaut", "rocket", "grass", "brick", "immunohistochemistry", "flower", "camera")
TEST_PHOTOS = ("coffee", "chelsea", "gravel", "china", "retina", "hubble_deep_field")


@dataclass(frozen=True)
class Severity:
    """How far the target domain is shifted from the source (chosen so a source-only detector lands
    around 0.3-0.4 mAP50 on the target test split)."""

    darken: float = 0.6
    photo_contrast: float = 0.65
    coloured_digit: float = 0.5
    difference_blend: float = 0.25
    blur_sigma: tuple[float, float] = (0.0, 0.6)
    noise_sigma: tuple[float, float] = (1.2, 6.0)
    jpeg_quality: tuple[int, int] = (62, 95)


def _place(rng: np.random.Generator, count: int) -> list[tuple[int, int, int]]:
    """Up to `count` non-overlapping squares (x, y, side) inside the canvas."""
    placed: list[tuple[int, int, int]] = []
    for _ in range(count * 12):
        if len(placed) == count:
            break
        side = int(rng.integers(24, 49))
        x, y = (int(v) for v in rng.integers(0, SIZE - side + 1, size=2))
        if all(x + side <= px or px + ps <= x or y + side <= py or py + ps <= y for px, py, ps in placed):
            placed.append((x, y, side))
    return placed


def _flat_background(rng: np.random.Generator) -> np.ndarray:
    """A plain colour with a gentle linear gradient."""
    base = rng.uniform(0, 255, size=3)
    ramp = np.linspace(-1, 1, SIZE)[:, None] * rng.uniform(-20, 20, size=3)
    return np.clip(np.broadcast_to(base + ramp[:, None, :], (SIZE, SIZE, 3)), 0, 255)


def _photo_crop(rng: np.random.Generator, photos: list[np.ndarray], severity: Severity) -> np.ndarray:
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.integers(min(h, w, SIZE), min(h, w, 2 * SIZE) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(photo[y : y + side, x : x + side]).resize((SIZE, SIZE), Image.BILINEAR)
    pixels = np.asarray(crop, dtype=np.float64)
    mean = pixels.mean(axis=(0, 1))
    return (mean + (pixels - mean) * severity.photo_contrast) * severity.darken


def render(
    rng: np.random.Generator,
    digits: np.ndarray,
    labels: np.ndarray,
    photos: list[np.ndarray] | None,
    severity: Severity,
) -> tuple[bytes, str, list[tuple[int, float, float, float, float]]]:
    """One scene: encoded image bytes, its suffix, and its YOLO boxes. `photos=None` renders the source."""
    canvas = _flat_background(rng) if photos is None else _photo_crop(rng, photos, severity)
    boxes = []
    for x, y, side in _place(rng, int(rng.integers(1, 5))):
        pick = int(rng.integers(len(digits)))
        alpha = np.asarray(Image.fromarray(digits[pick]).resize((side, side), Image.BILINEAR), dtype=np.float64) / 255.0
        region = canvas[y : y + side, x : x + side]
        if photos is None:  # a digit that contrasts with its flat background
            colour = np.full(3, 20.0 if region.mean() > 128 else 235.0)
        elif rng.random() < severity.coloured_digit:
            colour = rng.uniform(0, 255, size=3)
        else:
            colour = np.full(3, 255.0)
        if photos is not None and rng.random() < severity.difference_blend:
            region[:] = np.abs(region - colour * alpha[..., None])
        else:
            region[:] = region * (1 - alpha[..., None]) + colour * alpha[..., None]
        rows, cols = np.nonzero(alpha > 0.25)
        if len(rows) == 0:
            continue
        x0, x1 = x + cols.min(), x + cols.max() + 1
        y0, y1 = y + rows.min(), y + rows.max() + 1
        boxes.append((int(labels[pick]), (x0 + x1) / 2 / SIZE, (y0 + y1) / 2 / SIZE, (x1 - x0) / SIZE, (y1 - y0) / SIZE))
    buffer = io.BytesIO()
    if photos is None:
        Image.fromarray(canvas.round().astype(np.uint8)).save(buffer, format="PNG", optimize=False)
        return buffer.getvalue(), ".png", boxes
    image = Image.fromarray(canvas.round().clip(0, 255).astype(np.uint8))
    sigma = rng.uniform(*severity.blur_sigma)
    if sigma > 0.05:
        image = image.filter(ImageFilter.GaussianBlur(sigma))
    noisy = np.asarray(image, dtype=np.float64) + rng.normal(0, rng.uniform(*severity.noise_sigma), size=(SIZE, SIZE, 3))
    quality = int(rng.integers(severity.jpeg_quality[0], severity.jpeg_quality[1] + 1))
    Image.fromarray(noisy.round().clip(0, 255).astype(np.uint8)).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue(), ".jpg", boxes


def write_scene_split(
    folder: Path,
    count: int,
    key: tuple[int, ...],
    digits: np.ndarray,
    labels: np.ndarray,
    photos: list[np.ndarray] | None,
    severity: Severity,
) -> None:
    """`count` scenes as `images/<i>` and `labels/<i>.txt` under folder."""
    (folder / "images").mkdir(parents=True)
    (folder / "labels").mkdir(parents=True)
    for index in range(count):
        blob, suffix, boxes = render(np.random.default_rng([*key, index]), digits, labels, photos, severity)
        (folder / "images" / f"{index:05d}{suffix}").write_bytes(blob)
        (folder / "labels" / f"{index:05d}.txt").write_text("".join(f"{c} {cx:.6f} {cy:.6f} {w:.6f} {h:.6f}\n" for c, cx, cy, w, h in boxes))


def build_scene_data(
    root: str | Path,
    *,
    sizes: dict[str, dict[str, int]] | None = None,
    seed: int = 0,
    severity: Severity = Severity(),
) -> Path:
    """Build both detection domains under `root`, replacing each atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    sizes = sizes or {SOURCE: {"train": 800, "test": 200}, TARGET: {"train": 60, "unlabeled": 600, "test": 300}}
    images, labels = load_mnist_5k()
    mnist = split_per_class(labels, {"test": 100, "train": None}, seed)  # the classification demo's split
    train_photos = [load_photo(name) for name in TRAIN_PHOTOS]
    test_photos = [load_photo(name) for name in TEST_PHOTOS]
    for domain, splits in sizes.items():
        with staged_dir(root / domain) as staging:
            for split, count in splits.items():
                pool = mnist["test" if split == "test" else "train"]
                photos = None if domain == SOURCE else (test_photos if split == "test" else train_photos)
                key = (seed, zlib.crc32(domain.encode()), zlib.crc32(split.encode()))  # stable whatever else is built
                write_scene_split(staging / split, count, key, images[pool], labels[pool], photos, severity)
            spec = {"path": ".", **{split: f"{split}/images" for split in splits}, "names": dict(enumerate(CLASSES))}
            (staging / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
        log.info("built %s under %s", domain, root / domain)
    return root

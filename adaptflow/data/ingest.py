"""New labeled data landing: check it, then copy it into a split under content-hash names."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from adaptflow.config import WindowConfig
from adaptflow.console import progress
from adaptflow.data.checks import DataValidationError, Report, check_image_split
from adaptflow.data.folders import IMAGE_SUFFIXES, list_classes
from adaptflow.io import atomic_write, sha256_file

NOTHING_ADDED = "in the new images; nothing was added"
#: A domain's labeled splits: they must not share an image (a training image in the test split
#: inflates its score).
DISJOINT = ("train", "val", "test")
log = logging.getLogger(__name__)


def _digests(folder: Path) -> dict[str, Path]:
    """{sha256: path} of every image under `folder` (none when it does not exist)."""
    if not folder.is_dir():
        return {}
    images = (p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    return {sha256_file(p): p for p in images}


def checked(source: Path, split: Path, check: Callable[[Report], dict[str, str]], layout: str,
             images_of: Callable[[Path], Path] = lambda split: split) -> dict[str, Path]:
    """Raise DataValidationError listing every problem of the new images at `source` (checked before
    any copy), including images another labeled split of the domain already holds; returns the
    {sha256: path} of those `split` does not hold yet (an image it holds, under any name, is not added again).
    `images_of(split)`: the folder that holds a split's images."""
    report = Report()
    if not source.is_dir():
        report.error(source, "no such folder", f"give the folder of the new labeled images ({layout})")
    else:
        new = check(report)
        if split.name in DISJOINT:
            for other in (name for name in DISJOINT if name != split.name):
                for digest, there in _digests(images_of(split.parent / other)).items():
                    if digest in new:
                        report.error(new[digest], f"already in the {other} split ({there})",
                                     f"drop it from the new images: {', '.join(DISJOINT)} must not share an image")
    if not report.ok:
        raise DataValidationError(report, NOTHING_ADDED)
    present = _digests(images_of(split))
    fresh = {digest: Path(path) for digest, path in sorted(new.items(), key=lambda item: item[1]) if digest not in present}
    if len(fresh) < len(new):
        log.info("%d of the %d new images are already in %s: not added again", len(new) - len(fresh), len(new), split)
    return fresh


def place(copies: list[tuple[Path, Path]]) -> None:
    """Copy each (file, destination) under a hidden temporary name, then rename it into place:
    an interrupted add leaves no half-written file."""
    for file, dest in copies:
        with atomic_write(dest) as tmp:
            shutil.copyfile(file, tmp)


def add_images(source: Path, split: Path, window: WindowConfig | None = None) -> dict[str, int]:
    """Copy `source/<class>/*` into `split/<class>/`; returns how many new images each class got.

    Everything is checked first (nothing is copied if any file is bad, or is already in another
    labeled split). Files are named by their content hash, and an image the split already holds,
    under any name, is not added again. Images of more than 8 bits need the `window` that maps them onto 8.
    """
    classes = list_classes(split) if split.is_dir() else None
    fresh = checked(source, split, lambda report: check_image_split(source, report, classes, window),
                     "CLASS/IMAGE")
    added: dict[str, int] = {}
    with progress(len(fresh), f"add to {split.name}") as advance:
        for digest, image in fresh.items():
            place([(image, split / image.parent.name / f"added-{digest[:16]}{image.suffix.lower()}")])
            added[image.parent.name] = added.get(image.parent.name, 0) + 1
            advance(1)
    return added


"""New labeled data landing: check it, then copy it into a split under content-hash names."""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path

from adaptflow.data.folders import IMAGE_SUFFIXES, list_classes
from adaptflow.io import atomic_write
from adaptflow.validate import DataValidationError, Report, check_image_split

NOTHING_ADDED = "in the new images; nothing was added"
#: A domain's labeled splits: they must not share an image (a training image in the test split
#: inflates its score).
DISJOINT = ("train", "val", "test")
log = logging.getLogger(__name__)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(folder: Path) -> dict[str, Path]:
    """{sha256: path} of every image under `folder` (none when it does not exist)."""
    if not folder.is_dir():
        return {}
    return {_digest(p): p for p in sorted(folder.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")}


def _checked(source: Path, split: Path, check: Callable[[Report], dict[str, str]], layout: str) -> dict[str, Path]:
    """Raise DataValidationError listing every problem of the new images at `source` (checked before
    any copy), including images another labeled split of the domain already holds; returns the
    {sha256: path} of the images `split` already holds, which are not added again."""
    report = Report()
    if not source.is_dir():
        report.error(source, "no such folder", f"give the folder of the new labeled images ({layout})")
    else:
        new = check(report)
        if split.name in DISJOINT:
            for other in (name for name in DISJOINT if name != split.name):
                for digest, there in _digests(split.parent / other).items():
                    if digest in new:
                        report.error(new[digest], f"already in the {other} split ({there})",
                                     f"drop it from the new images: {', '.join(DISJOINT)} must not share an image")
    if not report.ok:
        raise DataValidationError(report, NOTHING_ADDED)
    return _digests(split)


def _place(copies: list[tuple[Path, Path]]) -> None:
    """Copy each (file, destination) under a hidden temporary name, then rename it into place:
    an interrupted add leaves no half-written file."""
    for file, dest in copies:
        with atomic_write(dest) as tmp:
            shutil.copyfile(file, tmp)


def _note_present(images: int, added: int, split: Path) -> None:
    if images > added:
        log.info("%d of the %d new images are already in %s: not added again", images - added, images, split)


def add_images(source: Path, split: Path) -> dict[str, int]:
    """Copy `source/<class>/*` into `split/<class>/`; returns how many new images each class got.

    Everything is checked first (nothing is copied if any file is bad, or is already in another
    labeled split). Files are named by their content hash, and an image the split already holds,
    under any name, is not added again.
    """
    present = _checked(source, split, lambda report: check_image_split(source, report, list_classes(split) if split.is_dir() else None),
                       "CLASS/IMAGE")
    images = [p for class_dir in sorted(p for p in source.iterdir() if p.is_dir())
              for p in sorted(class_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")]
    added: dict[str, int] = {}
    for image in images:
        digest = _digest(image)
        if digest not in present:
            _place([(image, split / image.parent.name / f"added-{digest[:16]}{image.suffix.lower()}")])
            present[digest] = image
            added[image.parent.name] = added.get(image.parent.name, 0) + 1
    _note_present(len(images), sum(added.values()), split)
    return added


def add_detection_images(source: Path, split: Path, num_classes: int) -> dict[str, int]:
    """Copy a YOLO-format folder (`source/images`, `source/labels`) into `split`, each image and its
    label file under the image's content hash; returns {"images": count added}. Checked first."""
    from adaptflow.detection.data import image_files, label_file
    from adaptflow.validate import check_detection_split

    present = _checked(source, split, lambda report: check_detection_split(source, num_classes, report), "images/ and labels/")
    added = 0
    images = image_files(source)
    for image in images:
        digest = _digest(image)
        if digest not in present:
            stem = f"added-{digest[:16]}"  # the label first: an image never lands alone
            _place([(label_file(image), split / "labels" / f"{stem}.txt"), (image, split / "images" / f"{stem}{image.suffix.lower()}")])
            present[digest] = image
            added += 1
    _note_present(len(images), added, split)
    return {"images": added} if added else {}

"""New labeled data landing: check it, then copy it into a split under content-hash names."""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path

from adaptflow.data.folders import IMAGE_SUFFIXES, list_classes
from adaptflow.validate import DataValidationError, Report, check_image_split

NOTHING_ADDED = "in the new images; nothing was added"


def _checked(source: Path, check: Callable[[Report], None], layout: str) -> None:
    """Raise DataValidationError listing every problem of the new images at `source` (checked before any copy)."""
    report = Report()
    if not source.is_dir():
        report.error(source, "no such folder", f"give the folder of the new labeled images ({layout})")
    else:
        check(report)
    if not report.ok:
        raise DataValidationError(report, NOTHING_ADDED)


def add_images(source: Path, split: Path) -> dict[str, int]:
    """Copy `source/<class>/*` into `split/<class>/`; returns how many new images each class got.

    Everything is checked first (nothing is copied if any file is bad). Files are named by their
    content hash, so adding the same images twice adds nothing and never overwrites.
    """
    _checked(source, lambda report: check_image_split(source, report, list_classes(split) if split.is_dir() else None), "CLASS/IMAGE")
    added: dict[str, int] = {}
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        target = split / class_dir.name
        target.mkdir(parents=True, exist_ok=True)
        for image in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
            dest = target / f"added-{hashlib.sha256(image.read_bytes()).hexdigest()[:16]}{image.suffix.lower()}"
            if not dest.exists():
                shutil.copyfile(image, dest)
                added[class_dir.name] = added.get(class_dir.name, 0) + 1
    return added


def add_detection_images(source: Path, split: Path, num_classes: int) -> dict[str, int]:
    """Copy a YOLO-format folder (`source/images`, `source/labels`) into `split`, each image and its
    label file under the image's content hash; returns {"images": count added}. Checked first."""
    from adaptflow.detection.data import image_files, label_file
    from adaptflow.validate import check_detection_split

    _checked(source, lambda report: check_detection_split(source, num_classes, report), "images/ and labels/")
    (split / "images").mkdir(parents=True, exist_ok=True)
    (split / "labels").mkdir(parents=True, exist_ok=True)
    added = 0
    for image in image_files(source):
        stem = f"added-{hashlib.sha256(image.read_bytes()).hexdigest()[:16]}"
        dest = split / "images" / f"{stem}{image.suffix.lower()}"
        if not dest.exists():
            shutil.copyfile(label_file(image), split / "labels" / f"{stem}.txt")  # the label first: an image never lands alone
            shutil.copyfile(image, dest)
            added += 1
    return {"images": added} if added else {}

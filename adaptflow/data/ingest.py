"""New labeled data landing: check it, then copy it into a split under content-hash names."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from adaptflow.data.folders import IMAGE_SUFFIXES, list_classes
from adaptflow.validate import DataValidationError, Report, check_image_split


def add_images(source: Path, split: Path) -> dict[str, int]:
    """Copy `source/<class>/*` into `split/<class>/`; returns how many new images each class got.

    Everything is checked first (nothing is copied if any file is bad). Files are named by their
    content hash, so adding the same images twice adds nothing and never overwrites.
    """
    report = Report()
    check_image_split(source, report, list_classes(split) if split.is_dir() else None)
    if not report.ok:
        raise DataValidationError(report)
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

"""New labeled detection data landing: a YOLO-format folder checked, then copied into a split under content-hash names."""

from __future__ import annotations

from pathlib import Path

from adaptflow.console import progress
from adaptflow.data.ingest import checked, place
from adaptflow.detection.checks import check_detection_split
from adaptflow.detection.data import images_dir, label_file, labels_dir


def add_detection_images(source: Path, split: Path, num_classes: int) -> dict[str, int]:
    """Copy a YOLO-format folder (`source/images`, `source/labels`) into `split`, each image and its
    label file under the image's content hash; returns {"images": count added}. Checked first."""
    fresh = checked(source, split, lambda report: check_detection_split(source, num_classes, report), "images/ and labels/", images_dir)
    images = images_dir(split)  # `<split>/images`, or the folder the domain's data.yaml names for the split
    with progress(len(fresh), f"add to {split.name}") as advance:
        for digest, image in fresh.items():
            stem = f"added-{digest[:16]}"  # the label first: an image never lands alone
            place([(label_file(image), labels_dir(images) / f"{stem}.txt"), (image, images / f"{stem}{image.suffix.lower()}")])
            advance(1)
    return {"images": len(fresh)} if fresh else {}

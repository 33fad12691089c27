"""Checks of YOLO-format detection data: label files line by line, each split's layout, and the splits a run reads."""

from __future__ import annotations

from pathlib import Path

from adaptflow.config import RunConfig
from adaptflow.data import split_dir
from adaptflow.data.checks import BUILD_THE_DATA, Report, check_images, inside
from adaptflow.data.folders import IMAGE_SUFFIXES
from adaptflow.detection.data import DatasetFileError, images_dir, labels_dir, read_names


def check_yolo_labels(images_dir: Path, labels_dir: Path, num_classes: int, report: Report) -> None:
    """YOLO format: a `<stem>.txt` per image, lines `class cx cy w h`, ids < num_classes, coordinates in [0, 1];
    a label file with no image of its name is an error too (its image is missing or misnamed)."""
    stems = {p.stem for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    for label in sorted(labels_dir.glob("*.txt")) if labels_dir.is_dir() else []:
        if label.stem not in stems:
            report.error(label, f"label file without an image (no {images_dir.name}/{label.stem}.* among {', '.join(sorted(IMAGE_SUFFIXES))})",
                         "add its image, fix its name, or delete the label")
    for image in sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        label = labels_dir / f"{image.stem}.txt"
        if not label.exists():
            report.error(label, f"missing label file for {image.name}", "add it (an empty file marks an image with no objects)")
            continue
        try:
            text = label.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            report.error(label, "not a text file (not UTF-8)", "write one line 'class cx cy w h' per object, as text")
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5:
                report.error(label, f"malformed line '{line}' ({len(fields)} fields)", "write 'class cx cy w h'", number)
                continue
            try:
                cls, *box = int(fields[0]), *map(float, fields[1:])
            except ValueError:
                report.error(label, f"malformed line '{line}' (not numbers)", "write 'class cx cy w h' as numbers", number)
                continue
            if not 0 <= cls < num_classes:
                report.error(label, f"class id {cls} out of range 0..{num_classes - 1}", "fix the id or the class list", number)
            if not all(0.0 <= v <= 1.0 for v in box) or box[2] <= 0 or box[3] <= 0:
                report.error(label, f"box {box} outside [0, 1] or empty", "normalise coordinates by the image size", number)


def check_detection_split(folder: Path, num_classes: int, report: Report, labeled: bool = True) -> dict[str, str]:
    """Check one YOLO-format split (`images/`, `labels/`, or the folders the domain's data.yaml names for it);
    returns {sha256: path} of its images."""
    try:
        images_folder = images_dir(folder)
    except DatasetFileError as exc:
        where, _, message = str(exc).partition(": ")
        what, _, fix = message.partition("; ")
        report.error(where, what, fix)
        return {}
    if not images_folder.is_dir():
        report.error(folder, f"no images/ folder in this split, and {folder.parent.name}/data.yaml names none for '{folder.name}'",
                     f"{BUILD_THE_DATA}, or name the split's images folder in data.yaml (e.g. {folder.name}: images/{folder.name})")
        return {}
    labels_folder = labels_dir(images_folder)
    images = sorted(p for p in images_folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and inside(p, images_folder, report))
    if not images:
        report.error(images_folder, "no images", f"put images in {images_folder} and their labels in {labels_folder}")
    if labeled:
        labels = sorted(labels_folder.glob("*.txt")) if labels_folder.is_dir() else []
        if all([inside(label, labels_folder, report) for label in labels]):
            check_yolo_labels(images_folder, labels_folder, num_classes, report)
    return check_images(folder if images_folder == folder / "images" else images_folder, images, report)


def detection_classes(domain_dir: Path, report: Report) -> int | None:
    """How many classes a detection domain's data.yaml names; None, with the problem reported, where it cannot tell."""
    if not domain_dir.is_dir():
        report.error(domain_dir, "no such domain folder", BUILD_THE_DATA)
        return None
    try:
        return len(read_names(domain_dir))
    except (FileNotFoundError, ValueError) as exc:
        report.error(domain_dir / "data.yaml", str(exc).split(": ", 1)[-1], "write data.yaml with `names:` (see data/mnist_scenes)")
        return None


def validate_detection(config: RunConfig, stage: str, report: Report) -> None:
    data = config.data
    splits = [(data.source, "train", True), (data.source, "test", True)]
    if stage == "finetune":  # what the fine-tune stage reads: the target's training split, and the source's for self-training
        splits = [(data.target, "train", True)] + [(data.source, "train", True)] * ("self_training" in config.finetune.methods)
    elif stage != "pretrain":
        splits += [(data.target, "train", True), (data.target, "test", True)]
    hashes: dict[tuple[str, str], dict[str, str]] = {}
    classes: dict[str, int | None] = {}  # per domain, its problem reported once
    for domain, split, labeled in splits:
        if domain not in classes:
            classes[domain] = detection_classes(split_dir(data, domain, split).parent, report)
        if classes[domain] is not None:
            hashes[(domain, split)] = check_detection_split(split_dir(data, domain, split), classes[domain], report, labeled)
    train, test = hashes.get((data.target, "train"), {}), hashes.get((data.target, "test"), {})
    for digest in sorted(set(train) & set(test)):
        report.warn(test[digest], f"also in the training split ({train[digest]})", "remove it from one split: test images must be unseen")

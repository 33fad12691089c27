"""Checks of image data before any compute is spent: the findings (`Report`), image folders, and a classification dataset.

Every problem names the file (or config field) and says how to fix it. Errors stop the run before anything is
trained or registered; warnings (a few duplicate images, a labeled split smaller than asked for) are reported and
the run goes on. `adaptflow.validate` checks a whole run (config, tracking server, devices, each task's data) with these.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from PIL import Image

from adaptflow import env
from adaptflow.adapt.selection import VALIDATORS
from adaptflow.config import RunConfig, WindowConfig
from adaptflow.data import has_validation, split_dir
from adaptflow.data.folders import IMAGE_SUFFIXES, held_out_count, link_outside, natural_key
from adaptflow.data.pixels import HIGH_BIT_MODES, WINDOW_FIX
from adaptflow.errors import ExitCode, UserError

log = logging.getLogger(__name__)

#: Larger images are refused: decoding them would exhaust memory long before training starts.
MAX_PIXELS = 40_000_000
IGNORED_NAMES = {".gitignore", ".dvcignore", "Thumbs.db", ".DS_Store"}
#: The field a tracking server that does not answer is reported under.
TRACKING_FIELD = "tracking.uri"
#: The fix for data that is not where the config says.
BUILD_THE_DATA = "build the data (adaptflow data build), `dvc pull`, or fix data.root"


class Problem(NamedTuple):
    """One finding: where, what, and what to do about it (a value, like `Inspection`)."""

    path: str
    """The file or folder at fault, or the config field (`pretrained.uri`, `tracking.uri`)."""
    message: str
    fix: str
    line: int | None = None
    """The line of a text file (a YOLO label, a CSV row), where there is one."""

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line else self.path
        return f"{where}: {self.message}; {self.fix}"


@dataclass
class Report:
    """Everything validation found; `ok` when there is no error."""

    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    checked_files: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, path: Path | str, message: str, fix: str, line: int | None = None) -> None:
        self.errors.append(Problem(str(path), message, fix, line))

    def warn(self, path: Path | str, message: str, fix: str, line: int | None = None) -> None:
        self.warnings.append(Problem(str(path), message, fix, line))

    def to_dict(self) -> dict:
        return {"errors": [p._asdict() for p in self.errors], "warnings": [p._asdict() for p in self.warnings], "checked_files": self.checked_files}


class DataValidationError(UserError, ValueError):
    """The data or config cannot be used; the message lists each problem with its fix."""

    def __init__(self, report: Report, outcome: str = "found before training; nothing was trained or registered") -> None:
        self.report = report
        lines = "\n".join(f"  - {p}" for p in report.errors)
        super().__init__(f"{len(report.errors)} problem(s) {outcome}:\n{lines}")

    @property
    def exit_code(self) -> ExitCode:  # type: ignore[override]
        """A tracking server that does not answer, and nothing else wrong: a service down, not bad input."""
        if all(p.path == TRACKING_FIELD for p in self.report.errors):
            return ExitCode.UNREACHABLE
        return ExitCode.INVALID_INPUT


class Inspection(NamedTuple):
    """What decoding one image file found."""

    mode: str | None = None
    size: tuple[int, int] | None = None
    sha256: str | None = None
    error: str | None = None
    transparent: bool = False  # some pixel is not fully opaque (decoding drops alpha)


def _inspect(path: Path) -> Inspection:
    """Decode one image file fully, to catch truncation."""
    try:
        raw = path.read_bytes()
        with Image.open(path) as img:
            mode, size = img.mode, img.size
            if size[0] * size[1] > MAX_PIXELS:
                return Inspection(mode, size)
            img.verify()
        with Image.open(path) as img:
            img.load()
            if img.mode == "P" and "transparency" in img.info:
                img = img.convert("RGBA")
            transparent = "A" in img.getbands() and img.getchannel("A").getextrema()[0] < 255
    except Image.DecompressionBombError as exc:
        return Inspection(error=f"huge image ({exc})")
    except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
        return Inspection(error=f"{type(exc).__name__}: {exc}")
    return Inspection(mode, size, hashlib.sha256(raw).hexdigest(), None, transparent)


def check_image_split(
    folder: Path, report: Report, train_classes: tuple[str, ...] | None = None, window: WindowConfig | None = None
) -> dict[str, str]:
    """Check one `<split>/<class>/` folder; returns {sha256: path} of its images for duplicate checks.
    Images of more than 8 bits are errors unless `window` (`data.window`) maps them onto 8."""
    if not folder.is_dir():
        report.error(folder, "no such split folder", BUILD_THE_DATA)
        return {}
    classes = sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: natural_key(p.name))
    classes = [cls for cls in classes if inside(cls, folder, report)]
    if not classes:
        report.error(folder, "no class folders", f"put images in {folder}/<class>/<image>.png")
    for stray in (p for p in folder.iterdir() if p.is_file() and p.name not in IGNORED_NAMES and not p.name.startswith(".")):
        report.error(stray, "file outside any class folder", f"move it into {folder}/<class>/ or delete it")
    if train_classes is not None:
        for cls in classes:
            if cls.name not in train_classes:
                report.error(cls, f"class '{cls.name}' is not in the training split", "add training images for it or remove this folder")
    images: list[Path] = []
    for cls in classes:
        files = [p for p in cls.iterdir() if p.name not in IGNORED_NAMES and not p.name.startswith(".")]
        for p in files:
            if p.is_dir():
                report.error(p, "nested folder inside a class folder", "flatten it: images go directly in <split>/<class>/")
            elif p.suffix.lower() not in IMAGE_SUFFIXES:
                report.error(p, f"not an image file ({p.suffix or 'no extension'})", "remove it or move it out of the data folder")
            elif inside(p, folder, report):
                images.append(p)
        if not any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
            report.error(cls, "empty class (no images)", "add images or delete the folder")
    return check_images(folder, images, report, window)


def inside(path: Path, folder: Path, report: Report) -> bool:
    """Whether `path` stays inside `folder`, the folder being read; a symbolic link leading out is an error."""
    target = link_outside(path, folder)
    if target is not None:
        report.error(path, f"a symbolic link to {target}, outside {folder}", "copy the file into the folder, or remove the link")
    return target is None


def check_unlabeled_split(folder: Path, report: Report, window: WindowConfig | None = None) -> dict[str, str]:
    """Check an unlabeled split: images in it, or one level down in folders of any name (class folders
    keep their class for diagnostics; others are images of unknown class); returns {sha256: path}."""
    images: list[Path] = []
    for p in sorted(folder.iterdir()):
        if p.name in IGNORED_NAMES or p.name.startswith(".") or not inside(p, folder, report):
            continue
        for q in (sorted(p.iterdir()) if p.is_dir() else [p]):
            if q.name in IGNORED_NAMES or q.name.startswith(".") or not inside(q, folder, report):
                continue
            if q.is_dir():
                report.error(q, "nested folder inside a folder of unlabeled images", f"flatten it: images go in {folder}/ or {folder}/<folder>/")
            elif q.suffix.lower() not in IMAGE_SUFFIXES:
                report.error(q, f"not an image file ({q.suffix or 'no extension'})", "remove it or move it out of the data folder")
            else:
                images.append(q)
    if not images:
        report.error(folder, "no images", f"put unlabeled images in {folder}/, or remove the folder")
    return check_images(folder, images, report, window)


def check_images(folder: Path, images: list[Path], report: Report, window: WindowConfig | None = None) -> dict[str, str]:
    """Decode every image: corrupt, huge, 16-bit (without a window), duplicate, mixed-mode and transparent files; returns {sha256: path}."""
    with ThreadPoolExecutor(max_workers=min(8, env.usable_cpus())) as pool:
        results = list(pool.map(_inspect, images))
    report.checked_files += len(images)
    modes: Counter[str] = Counter()
    seen: dict[str, str] = {}
    transparent = sorted(path for path, found in zip(images, results, strict=True) if found.transparent)
    for path, (mode, size, digest, error, _) in zip(images, results, strict=True):
        if error is not None:
            report.error(path, f"corrupt or truncated image ({error})", "re-export the image or delete it")
            continue
        if size is not None and size[0] * size[1] > MAX_PIXELS:
            report.error(path, f"huge image ({size[0]}x{size[1]} pixels, limit {MAX_PIXELS})", "downscale it before training")
            continue
        if mode in HIGH_BIT_MODES and window is None:
            report.error(path, f"{mode} image (16-bit or float): converting to 8 bits would clip it", WINDOW_FIX)
            continue
        modes[mode] += 1
        if digest in seen:
            report.warn(path, f"duplicate of {seen[digest]}", "delete one copy")
        else:
            seen[digest] = str(path)
    if len(modes) > 1:
        rare = min(modes, key=modes.__getitem__)
        report.error(folder, f"mixed image modes {dict(modes)} (e.g. {rare})", "convert all images of the dataset to one mode, e.g. RGB")
    if transparent:
        report.warn(folder, f"{len(transparent)} image(s) with transparent pixels (e.g. {transparent[0].name}): decoding drops alpha, "
                    "so models see whatever colour is stored under them, not a background",
                    "composite them onto the background the camera sees (e.g. white), and give served images the same")
    return seen


def check_image_domains(config: RunConfig, stage: str, report: Report) -> None:
    """The splits of an image classification run: the source's train and test (when it has one), and the target's
    splits except for `pretrain`, which reads only the source."""
    data = config.data
    if data.source is not None:
        for split in ("train", "test"):
            check_image_split(split_dir(data, data.source, split), report, window=data.window)
    elif stage == "pretrain":
        report.error("data.source", "is empty, and pretrain trains the source model on it",
                     "set data.source to a domain folder of labeled images, or start from a pretrained model (pretrained.uri) "
                     "and run only the transfer flow")
    if stage != "pretrain":
        _check_target(config, report)


def conclude(report: Report, config: RunConfig) -> Report:
    """Log the warnings, raise DataValidationError on errors, and return `report` otherwise."""
    for p in report.warnings:
        log.warning("%s", p)
    if not report.ok:
        raise DataValidationError(report)
    log.info("validated %d %s: %d warnings", report.checked_files, "files" if config.task == "text_classification" else "images",
             len(report.warnings))
    return report


def validate_images(config: RunConfig) -> Report:
    """Check the image classification dataset `config.data` names, and nothing else (no model, server or device
    needs to exist yet): `adaptflow.validate.validate(config, "data")` for image folders."""
    report = Report()
    check_image_domains(config, "data", report)
    return conclude(report, config)


def _check_target(config: RunConfig, report: Report) -> None:
    data = config.data
    train = split_dir(data, data.target, "train")
    train_hashes = check_image_split(train, report, window=data.window)
    train_classes = tuple(p.name for p in train.iterdir() if p.is_dir()) if train.is_dir() else None
    if train_classes is not None and len(train_classes) == 1:
        report.error(train, f"one class ({train_classes[0]}): a classifier needs at least two",
                     "add a folder of labeled images for each class the model must tell apart")
    test_hashes = check_image_split(split_dir(data, data.target, "test"), report, train_classes, data.window)
    unlabeled = split_dir(data, data.target, "unlabeled")
    if unlabeled.exists():
        check_unlabeled_split(unlabeled, report, data.window)
    elif config.finetune.methods:
        report.error(unlabeled, f"no unlabeled split, but finetune.methods {config.finetune.methods} adapt from one",
                     "add unlabeled target images there (in it, or in folders of any name), or set finetune.methods=[]")
    val = split_dir(data, data.target, "val")
    val_hashes = check_image_split(val, report, train_classes, data.window) if val.exists() else {}
    if val.exists() and data.val_fraction:
        report.error(val, f"a validation folder, and data.val_fraction={data.val_fraction} asks to hold out another from {train}",
                     "set data.val_fraction=0 to validate on the folder, or remove the folder")
    for split, hashes in (("test", test_hashes), ("val", val_hashes)):
        for digest in sorted(set(train_hashes) & set(hashes)):
            report.warn(hashes[digest], f"also in the training split ({train_hashes[digest]})",
                        f"remove it from one split: {split} images must be unseen")
    chosen = {"registry.metric": config.registry.metric, "registry.guard_metric": config.registry.guard_metric or "",
              "finetune.keep_epoch": config.finetune.keep_epoch}
    for key, metric in chosen.items():
        if metric.startswith("target_val_") and not has_validation(data):
            report.error(val, f"{key} {metric} is measured on the target's validation set, and it has none",
                         f"set data.val_fraction (e.g. 0.2), add {val}/<class>/*.png, or choose another {key}")
    if config.finetune.keep_epoch in VALIDATORS and not unlabeled.exists():
        report.error(unlabeled, f"no unlabeled split, but finetune.keep_epoch {config.finetune.keep_epoch} scores epochs on one",
                     "add unlabeled target images there, or set finetune.keep_epoch to last or target_val_accuracy")
    counts = _class_counts(train)
    share = data.val_fraction if not val.exists() else 0.0
    if share:
        single = {c: n for c, n in counts.items() if n < 2}
        if single:
            report.error(train, f"data.val_fraction={share} holds out at least one image a class, and classes {single} "
                         "have fewer than two: none would be left to train on", "add labeled images to those classes, or set data.val_fraction=0")
        counts = {c: n - held_out_count(n, share) for c, n in counts.items() if n >= 2}
    if data.labeled_per_class is not None:
        short = {c: n for c, n in counts.items() if n < data.labeled_per_class}
        if short:
            held = f" once data.val_fraction={share} is held out" if share else ""
            report.warn(train, f"fewer than {data.labeled_per_class} labeled images in classes {short}{held}",
                        "those classes train on what there is")


def _class_counts(folder: Path) -> dict[str, int]:
    """Images per class folder of a split ({} when there is no such folder)."""
    if not folder.is_dir():
        return {}
    classes = sorted((c for c in folder.iterdir() if c.is_dir()), key=lambda c: natural_key(c.name))
    return {cls.name: sum(1 for p in cls.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) for cls in classes}

"""Domains on disk: building the demo domains and loading image folders into tensors."""

from __future__ import annotations

import filecmp
import functools
import tempfile
from pathlib import Path

from adaptflow import env
from adaptflow.config import DataConfig
from adaptflow.data.folders import ImageSet, list_classes, load_image_folder
from adaptflow.errors import UserError
from adaptflow.io import replace_dir


#: What `build_all` writes (`data.dvc` records them all): MNIST -> UCI digits and MNIST-M for
#: classification, digit scenes -> on photographs for detection.
CLASSIFICATION_DOMAINS = ("mnist", "uci_digits", "mnist_m")
DETECTION_DOMAINS = ("mnist_scenes", "photo_scenes")
#: Movie reviews -> drug reviews for text classification (`adaptflow.data.reviews`).
TEXT_DOMAINS = ("movie_reviews", "drug_reviews")
DEMO_DOMAINS = CLASSIFICATION_DOMAINS + DETECTION_DOMAINS + TEXT_DOMAINS


class DataChangedError(UserError, RuntimeError):
    """A rebuild would delete or overwrite files in a domain folder that the build does not write."""


def split_dir(cfg: DataConfig, domain: str, split: str):
    """`<root>/<domain>/<split>`, with a relative root taken from the project folder."""
    return env.project_path(cfg.root) / domain / split


def load_split(cfg: DataConfig, domain: str, split: str, classes: tuple[str, ...] | None = None) -> ImageSet:
    """Decode one split of a domain at the configured image size."""
    return load_image_folder(split_dir(cfg, domain, split), cfg.image_size, classes, cfg.window, unlabeled=split == "unlabeled")


#: Seed of the validation share held out by `data.val_fraction`: every run of a project, whatever its
#: finetune.seed, holds out the same images, so their scores compare across runs and sweep trials.
VAL_SEED = 0


def target_labels(cfg: DataConfig, classes: tuple[str, ...] | None = None) -> tuple[ImageSet, ImageSet | None]:
    """(the target's labeled images to train on, its validation set or None): the `val` folder when
    the target has one, else a `data.val_fraction` share of each class held out of the train split."""
    train = load_split(cfg, cfg.target, "train", classes)
    folder = split_dir(cfg, cfg.target, "val")
    if folder.is_dir():
        if cfg.val_fraction:
            raise ValueError(f"{folder}: the target has a validation folder and data.val_fraction={cfg.val_fraction} asks to hold "
                             "out another from its train split; set data.val_fraction=0 to validate on the folder, or remove the folder")
        return train, load_split(cfg, cfg.target, "val", train.classes)
    if not cfg.val_fraction:
        return train, None
    try:
        return train.hold_out(cfg.val_fraction, seed=VAL_SEED)
    except ValueError as exc:
        raise ValueError(f"{split_dir(cfg, cfg.target, 'train')}: data.val_fraction={cfg.val_fraction}: {exc}; "
                         "or set data.val_fraction=0") from None


def has_validation(cfg: DataConfig) -> bool:
    """Whether the target has a labeled validation set: a `val` folder or a `data.val_fraction` share."""
    return bool(cfg.val_fraction) or split_dir(cfg, cfg.target, "val").is_dir()


def target_validation(cfg: DataConfig, classes: tuple[str, ...]) -> ImageSet | None:
    """The target's labeled validation set (see `target_labels`), or None without loading anything."""
    return target_labels(cfg, classes)[1] if has_validation(cfg) else None


def domain_digest(cfg: DataConfig, domain: str) -> str:
    """A content hash of one domain folder: every file's path inside it and bytes (hidden files aside).
    Models record it per domain, so adding or editing another domain under the same data root (one DVC
    version for all) leaves their lineage, and the retraining decision, alone."""
    import hashlib

    folder = env.project_path(cfg.root) / domain
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relative = path.relative_to(folder)
        if not any(part.startswith(".") for part in relative.parts):
            stat = path.stat()
            digest.update(f"{relative.as_posix()}\0{_file_digest(path, stat.st_size, stat.st_mtime_ns, stat.st_ino)}\n".encode())
    return digest.hexdigest()


@functools.lru_cache(maxsize=65_536)
def _file_digest(path: Path, size: int, mtime_ns: int, inode: int) -> str:
    """A file's sha256, read once per process while its size, modification time and inode stay (a run
    records the digests of its domains several times: when it opens, registers, decides to retrain)."""
    from adaptflow.io import sha256_file

    return sha256_file(path)


def build_all(root: str | Path, domains: list[str] | None = None, force: bool = False) -> Path:
    """The demo domains (all, or those in `domains`) under `root`, byte-identical every time (what
    `data.dvc` records): MNIST -> UCI digits for classification, digit scenes -> on photographs for
    detection, movie reviews -> drug reviews for text classification.

    Everything is built beside `root` first. A domain folder holding files the build would not write
    (images added with `adaptflow data add`, edited images) is replaced only with `force`; otherwise a
    DataChangedError lists them and no domain is touched.
    """
    from adaptflow.data.demo import build_demo_data
    from adaptflow.data.scenes import build_scene_data

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    names = [d for d in DEMO_DOMAINS if domains is None or d in domains]
    with tempfile.TemporaryDirectory(prefix=f".{root.name}-build-", dir=root.parent) as tmp:
        built = Path(tmp)
        if set(names) & set(CLASSIFICATION_DOMAINS):
            build_demo_data(built)
        if set(names) & set(DETECTION_DOMAINS):
            build_scene_data(built)
        if set(names) & set(TEXT_DOMAINS):
            from adaptflow.data.reviews import build_text_data

            build_text_data(built)
        if not force:
            changed = {name: _not_rebuilt(built / name, root / name) for name in names}
            changed = {name: files for name, files in changed.items() if files}
            if changed:
                lines = [f"  {root / name}: {len(files)} file(s), e.g. {', '.join(files[:3])}" for name, files in changed.items()]
                raise DataChangedError("rebuilding would delete or overwrite files the build does not write (added with "
                                       "`adaptflow data add`, or edited):\n" + "\n".join(lines) + "\nnothing was changed; to keep "
                                       "them, leave the data as it is (`adaptflow data version` records it); to go back to the demo's "
                                       "data, run `adaptflow data build --force`")
        for name in names:
            replace_dir(built / name, root / name)
    return root


def _not_rebuilt(built: Path, existing: Path) -> list[str]:
    """Files under `existing` (relative paths) that a rebuild into `built` would delete or overwrite."""
    if not existing.is_dir():
        return []
    lost = []
    for path in sorted(existing.rglob("*")):
        relative = path.relative_to(existing)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts):
            new = built / relative
            if not new.is_file() or not filecmp.cmp(path, new, shallow=False):
                lost.append(str(relative))
    return lost


def ensure_domains(root: str | Path, domains: list[str]) -> list[str]:
    """Build those of `domains` that are missing under `root` (a fresh clone has no data until the
    demo or `adaptflow data build` made it), leaving the others as they are; returns the ones built.
    A missing domain that is not one of the demo's is an error naming its folder."""
    root = Path(root)
    missing = [d for d in dict.fromkeys(domains) if not (root / d).is_dir()]
    foreign = [d for d in missing if d not in DEMO_DOMAINS]
    if foreign:
        raise FileNotFoundError(f"{root / foreign[0]}: no such domain folder; put the domain's images there "
                                f"(<split>/<class>/*.png, or YOLO images/ and labels/) or fix the domain name")
    if missing:
        build_all(root, missing)
    return missing


__all__ = ["ImageSet", "build_all", "domain_digest", "ensure_domains", "list_classes", "load_image_folder", "load_split", "has_validation", "split_dir",
           "target_labels", "target_validation"]

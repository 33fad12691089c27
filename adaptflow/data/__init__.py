"""Domains on disk: building the demo domains and loading image folders into tensors."""

from __future__ import annotations

from pathlib import Path

from adaptflow import env
from adaptflow.config import DataConfig
from adaptflow.data.folders import ImageSet, list_classes, load_image_folder


def split_dir(cfg: DataConfig, domain: str, split: str):
    """`<root>/<domain>/<split>`, with a relative root taken from the project folder."""
    return env.project_path(cfg.root) / domain / split


def load_split(cfg: DataConfig, domain: str, split: str, classes: tuple[str, ...] | None = None) -> ImageSet:
    """Decode one split of a domain at the configured image size."""
    return load_image_folder(split_dir(cfg, domain, split), cfg.image_size, classes)


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


def build_all(root: str | Path) -> Path:
    """Every demo domain under `root`, byte-identical every time (what `data.dvc` records):
    MNIST -> UCI digits for classification, digit scenes -> on photographs for detection."""
    from adaptflow.data.demo import build_demo_data
    from adaptflow.data.scenes import build_scene_data

    build_demo_data(root)
    return build_scene_data(root)


def ensure_domains(root: str | Path, domains: list[str]) -> list[str]:
    """Build the demo domains when any of `domains` is missing under `root` (a fresh clone has no
    data until the demo or `adaptflow data build` made it); returns the ones that were missing.
    A missing domain that is not one of the demo's is an error naming its folder."""
    from adaptflow.data import demo, scenes

    root = Path(root)
    missing = [d for d in dict.fromkeys(domains) if not (root / d).is_dir()]
    foreign = [d for d in missing if d not in (demo.SOURCE, demo.TARGET, demo.MNIST_M, scenes.SOURCE, scenes.TARGET)]
    if foreign:
        raise FileNotFoundError(f"{root / foreign[0]}: no such domain folder; put the domain's images there "
                                f"(<split>/<class>/*.png, or YOLO images/ and labels/) or fix the domain name")
    if missing:
        build_all(root)
    return missing


__all__ = ["ImageSet", "build_all", "ensure_domains", "list_classes", "load_image_folder", "load_split", "has_validation", "split_dir",
           "target_labels", "target_validation"]

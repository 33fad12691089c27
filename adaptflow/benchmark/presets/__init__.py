"""The benchmark presets that ship with the package (`NAME.yaml` here, package data), found through
importlib.resources so that a wheel install has them. Reading the names imports neither pydantic nor
torch: the command line lists them in its help and completion."""

from __future__ import annotations

from importlib.resources import files
from importlib.resources.abc import Traversable

SUFFIX = ".yaml"


def folder() -> Traversable:
    """Where the presets lie (a plain folder wherever the package is installed as files)."""
    return files(__name__)


def preset_names() -> list[str]:
    """The presets that ship with the package, by name."""
    return sorted(p.name.removesuffix(SUFFIX) for p in folder().iterdir() if p.name.endswith(SUFFIX))


def preset_file(name: str) -> Traversable:
    """The file of the shipped preset `name` (it may not exist: the caller says which ones do)."""
    return folder() / f"{name}{SUFFIX}"

"""Ultralytics imported once, quiet and local: the only place `ultralytics` is imported first.

Before the import its settings and font move into the project cache (never the user's home), its own
MLflow, DVC, hub and sync integrations are turned off (adaptflow tracks runs itself, through the trainer's
epoch callback), and the font its dataset check wants is provided from matplotlib, so no download is attempted.
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path

from adaptflow import env

#: Integrations Ultralytics turns on by itself when their package imports.
_INTEGRATIONS = ("sync", "mlflow", "dvc", "wandb", "clearml", "comet", "raytune", "tensorboard")


@functools.cache
def ultralytics():  # noqa: ANN201 - the module
    """Import Ultralytics once, configured for offline, project-local use."""
    env.apply()
    config_dir = Path(os.environ["YOLO_CONFIG_DIR"]) / "Ultralytics"
    config_dir.mkdir(parents=True, exist_ok=True)
    from matplotlib import font_manager

    font = Path(font_manager.findfont("DejaVu Sans"))
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):  # the fonts its plots and dataset checks look for
        if not (config_dir / name).exists():
            shutil.copyfile(font, config_dir / name)
    threads = os.environ.get("OMP_NUM_THREADS")
    import ultralytics as module
    from ultralytics import settings

    if threads is None:  # its import sets 1 for every process started later (DVC stages, torchrun workers)
        os.environ.pop("OMP_NUM_THREADS", None)

    cache = env.cache_dir() / "ultralytics"
    folders = {"weights_dir": cache / "weights", "datasets_dir": cache / "datasets", "runs_dir": cache / "runs"}
    settings.update({key: False for key in _INTEGRATIONS} | {key: str(path) for key, path in folders.items()})
    for key, path in folders.items():  # the module's copies were read from the settings file at import, before this update
        setattr(module.utils, key.upper(), path)
    return module

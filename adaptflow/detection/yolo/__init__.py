"""The Ultralytics adapter: the only package that imports `ultralytics`, and only when called.

- `library`: the import itself, made quiet and local first (settings, fonts, integrations off).
- `network`: the architectures, building one from its YAML, and inference with Ultralytics' NMS.
- `checkpoints`: Ultralytics' own checkpoint files, read with only model classes allowed, and written.
- `training`: Ultralytics' trainer run from adaptflow's settings, in a child process; imported by its own
  name (`adaptflow.detection.yolo.training`), since it reads and writes detector files through
  `adaptflow.detection.models`, which builds on this package.
"""

from adaptflow.detection.yolo.checkpoints import (UNTRUSTED_FIX, allowed_global, from_ultralytics_file, load_ultralytics_checkpoint,
                                                  save_ultralytics)
from adaptflow.detection.yolo.library import ultralytics
from adaptflow.detection.yolo.network import ARCHS, build, head_width_of, predict

__all__ = ["ARCHS", "UNTRUSTED_FIX", "allowed_global", "build", "from_ultralytics_file", "head_width_of",
           "load_ultralytics_checkpoint", "predict", "save_ultralytics", "ultralytics"]

"""The registered detector's serving interface: an MLflow pyfunc around an adaptflow detector file.

Logged "from code" (this file), so loading unpickles nothing. `predict(images)` takes uint8
images (N x H x W x 3, any N and size) and returns one row per detected object: the image's
index in the batch, the class, the score and the box in the input image's pixels. The optional
`params={"conf": 0.25}` sets the score threshold.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

PARAMS = {"conf": 0.25}
COLUMNS = {"image": "long", "class_index": "long", "class": "string", "score": "float",
           "x1": "float", "y1": "float", "x2": "float", "y2": "float"}


class DetectorModel(mlflow.pyfunc.PythonModel):
    """Wraps `artifacts/checkpoint`; resizes inputs to the model's size and maps boxes back."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's context type
        self.load(context.artifacts["checkpoint"])

    def load(self, path: str) -> DetectorModel:
        from adaptflow.detection.models import load_detector

        self.model, self.meta = load_detector(path)
        return self

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:  # noqa: ANN001 - MLflow's context type
        # np.ndarray is a hint MLflow infers no schema from: the logged tensor signature stays the one that validates inputs.
        import torch

        from adaptflow.data.pixels import prepare
        from adaptflow.detection.models import predict

        conf = float((params or {}).get("conf", PARAMS["conf"]))
        height, width = np.shape(model_input)[1:3]
        size = self.meta["image_size"]
        images = prepare(model_input, size)
        outputs = predict(self.model, self.meta["arch"], images, device="cpu")
        scale = torch.tensor([width / size, height / size, width / size, height / size])
        rows = [(i, out["labels"][keep], out["scores"][keep], out["boxes"][keep] * scale)
                for i, out in enumerate(outputs) for keep in [out["scores"] >= conf]]
        index = np.concatenate([np.full(len(labels), i) for i, labels, _, _ in rows]).astype(np.int64)
        labels = np.concatenate([labels.numpy() for _, labels, _, _ in rows]).astype(np.int64)
        boxes = np.concatenate([boxes.numpy().reshape(-1, 4) for *_, boxes in rows]).astype(np.float32)
        classes = np.asarray(self.meta["classes"], dtype=object)
        return pd.DataFrame({
            "image": index, "class_index": labels, "class": classes[labels].astype(str),
            "score": np.concatenate([scores.numpy() for _, _, scores, _ in rows]).astype(np.float32),
            "x1": boxes[:, 0], "y1": boxes[:, 1], "x2": boxes[:, 2], "y2": boxes[:, 3],
        })


mlflow.models.set_model(DetectorModel())

"""The registered model's serving interface: an MLflow pyfunc around an adaptflow checkpoint.

The model is logged "from code" (this file), so loading it unpickles nothing: the weights load
with `torch.load(weights_only=True)`. It needs adaptflow installed where it is served.

`mlflow.pyfunc.load_model("models:/<name>@champion").predict(images)` takes uint8 images
(N x H x W x 3, any N and size) and returns a table of the predicted class and its score. A model
trained with `data.window` on images of more than 8 bits takes their raw values instead, as float32
(N x H x W), and maps them onto 8 bits as training did. Inputs are resized as training resized them.
"""

from __future__ import annotations

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

COLUMNS = {"index": "long", "class": "string", "score": "float"}


class ClassifierModel(mlflow.pyfunc.PythonModel):
    """Wraps `artifacts/model.pt`; resizes inputs to the size the model was trained at."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's context type
        self.load(context.artifacts["checkpoint"])

    def load(self, path: str) -> ClassifierModel:
        from adaptflow.data.pixels import recorded_window
        from adaptflow.models import load_checkpoint

        self.model, self.meta = load_checkpoint(path)
        self.model.eval()
        self.window = recorded_window(self.meta)
        return self

    def predict(self, context, model_input: np.ndarray, params: dict | None = None) -> pd.DataFrame:  # noqa: ANN001 - MLflow's context type
        # np.ndarray is a hint MLflow infers no schema from: the logged tensor signature stays the one that validates inputs.
        from adaptflow.data.pixels import prepare
        from adaptflow.training import predict

        images = prepare(model_input, self.meta["image_size"], self.window)
        probs = predict(self.model, images, device="cpu").softmax(1)
        score, index = probs.max(1)
        classes = np.asarray(self.meta["classes"])
        return pd.DataFrame({"index": index.numpy(), "class": classes[index.numpy()], "score": score.numpy()}, columns=list(COLUMNS))


mlflow.models.set_model(ClassifierModel())

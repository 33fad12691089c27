"""The registered text classifier's serving interface: an MLflow pyfunc around an adaptflow text model file.

Logged "from code" (this file), so loading unpickles nothing: the weights, the encoder's config and
the tokenizer load from the weights-only file. `predict` takes a column of strings (a list, or a
DataFrame with one column, or with a `text` column) and returns, per text, the predicted class, its
score and every class's probability.
"""

from __future__ import annotations

import json

import mlflow.models
import mlflow.pyfunc
import numpy as np
import pandas as pd

COLUMNS = {"index": "long", "class": "string", "score": "float", "probabilities": "string"}
EXAMPLE = ["The medicine worked within a week and the side effects were mild.", "It made my headaches much worse."]


def model_input():  # noqa: ANN201 - (example, ColSpec)
    """The input example (two texts) and the one unnamed string column a text model's signature declares:
    a list of strings is accepted as it is, and so is a table with one column of them."""
    from mlflow.types import ColSpec

    return list(EXAMPLE), ColSpec("string")


def texts_of(model_input: object) -> list[str]:
    """The strings of a DataFrame's `text` column (or its only column), a Series, a list or an array."""
    if isinstance(model_input, pd.DataFrame):
        column = model_input["text"] if "text" in model_input.columns else model_input.iloc[:, 0]
        return [str(t) for t in column.tolist()]
    if isinstance(model_input, str):
        return [model_input]
    return [str(t) for t in np.asarray(model_input, dtype=object).ravel().tolist()]


class TextClassifierModel(mlflow.pyfunc.PythonModel):
    """Wraps `artifacts/checkpoint`: tokenizes as training did, returns the class and the probabilities."""

    def load_context(self, context) -> None:  # noqa: ANN001 - MLflow's context type
        self.load(context.artifacts["checkpoint"])

    def load(self, path: str) -> TextClassifierModel:
        from adaptflow.text.encoder import load_text_checkpoint

        self.model, self.meta, self.tokens = load_text_checkpoint(path)
        return self

    def probabilities(self, texts: list[str], batch_size: int = 64):  # noqa: ANN201 - a tensor
        from adaptflow.text.stages import predict_ids

        return predict_ids(self.model, self.tokens(texts), self.tokens.pad_id, batch_size, device="cpu").softmax(1)

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:  # noqa: ANN001 - MLflow's context type
        texts = texts_of(model_input)
        classes = list(self.meta["classes"])
        if not texts:
            return pd.DataFrame({name: [] for name in COLUMNS})
        probs = self.probabilities(texts)
        score, index = probs.max(1)
        table = [json.dumps(dict(zip(classes, row, strict=True))) for row in probs.numpy().round(6).tolist()]
        return pd.DataFrame({"index": index.numpy(), "class": np.asarray(classes)[index.numpy()], "score": score.numpy(),
                             "probabilities": table}, columns=list(COLUMNS))


mlflow.models.set_model(TextClassifierModel())

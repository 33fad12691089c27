"""Batch prediction for text: a CSV or JSONL file with a `text` column in, a CSV of class and probabilities out, by a
text model file or by the ONNX file `adaptflow export` wrote of one (its tokenizer and JSON beside it)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from adaptflow.data.checks import DataValidationError, Report
from adaptflow.io import atomic_write
from adaptflow.text.data import TEXT_SUFFIXES, read_rows


def is_text_input(path: Path) -> bool:
    return path.is_file() and path.suffix in TEXT_SUFFIXES


class ExportedTextModel:
    """An exported text classifier (.onnx) run by ONNX Runtime, tokenized by the tokenizer file written beside it."""

    def load(self, path: str) -> ExportedTextModel:
        import onnxruntime as ort

        from adaptflow.errors import PredictError
        from adaptflow.text.encoder import Tokens

        description = Path(f"{path}.json")
        if not description.is_file():
            raise PredictError(f"{path}: no {description.name} beside it; predict with ONNX files `adaptflow export` wrote")
        self.meta = json.loads(description.read_text())
        if self.meta.get("task") != "text_classification":
            raise PredictError(f"{path}: an exported {self.meta.get('task')} model, not a text classifier; give it a folder of images")
        spec = Path(path).with_name(self.meta["tokenizer"]).read_text()
        self.tokens = Tokens(spec, int(self.meta["max_length"]), int(self.meta["pad_id"]), self.meta["pad_token"])
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return self

    def probabilities(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        logits = []
        for i in range(0, len(texts), batch_size):
            ids = self.tokens(texts[i : i + batch_size]).long().numpy()
            logits.append(self.session.run(None, {"input_ids": ids, "attention_mask": (ids != self.tokens.pad_id).astype(np.int64)})[0])
        return torch.from_numpy(np.concatenate(logits)).softmax(1)


def predict_file(model_path: str | Path, source: Path, output: Path, batch_size: int = 64) -> Counter:
    """Score every row of `source` (checked as a split is: bad rows are errors naming their line) and write
    `output`: the row's line, the predicted class, its score and one probability column per class. `model_path` is a text
    model file or an exported text classifier (.onnx)."""
    from adaptflow.text.serving import TextClassifierModel

    report = Report()
    rows = read_rows(source, report, labeled=False)
    if not report.ok:
        raise DataValidationError(report, "found before predicting; nothing was written")
    model = (ExportedTextModel() if Path(model_path).suffix == ".onnx" else TextClassifierModel()).load(str(model_path))
    classes = list(model.meta["classes"])
    probs = model.probabilities(rows.texts, batch_size)
    score, index = probs.max(1)
    counts: Counter = Counter()
    with atomic_write(output) as tmp, open(tmp, "w", encoding="utf-8", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["line", "class", "score", *(f"p_{c}" for c in classes)])
        for line, i, s, p in zip(rows.lines, index.tolist(), score.tolist(), probs.tolist(), strict=True):
            writer.writerow([line, classes[i], f"{s:.6f}", *(f"{v:.6f}" for v in p)])
            counts[classes[i]] += 1
    return counts

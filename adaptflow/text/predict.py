"""Batch prediction for text: a CSV or JSONL file with a `text` column in, a CSV of class and probabilities out."""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path

from adaptflow.io import atomic_write
from adaptflow.text.data import TEXT_SUFFIXES, read_rows
from adaptflow.validate import DataValidationError, Report


def is_text_input(path: Path) -> bool:
    return path.is_file() and path.suffix in TEXT_SUFFIXES


def predict_file(model_path: str | Path, source: Path, output: Path, batch_size: int = 64) -> Counter:
    """Score every row of `source` (checked as a split is: bad rows are errors naming their line) and write
    `output`: the row's line, the predicted class, its score and one probability column per class."""
    from adaptflow.text.serving import TextClassifierModel

    report = Report()
    rows = read_rows(source, report, labeled=False)
    if not report.ok:
        raise DataValidationError(report, "found before predicting; nothing was written")
    model = TextClassifierModel().load(str(model_path))
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

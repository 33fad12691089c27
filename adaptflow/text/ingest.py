"""New labeled texts landing in a domain's split (`adaptflow data add` with task text_classification):
checked first, then written into the split in one step, in the split's own format.

The new rows come as a CSV or JSONL file (`text` and `label` columns) or a folder of `.txt` files per
label, and are read by the same parser as training data. Nothing is written when any row has a problem,
or when a text is already in another labeled split of the domain (a training text in the test split
inflates its score). A row the split already holds (same text and label) is not added again.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
from collections import Counter
from pathlib import Path

from adaptflow.config import DataConfig
from adaptflow.data.checks import DataValidationError, Report
from adaptflow.io import atomic_write
from adaptflow.text.data import LABELED_SPLITS, TEXT_FILE, TEXT_SUFFIXES, TextRows, domain_dir, read_rows, split_file

NOTHING_ADDED = "in the new texts; nothing was added"


def _new_rows(source: Path, labeled: bool, report: Report) -> TextRows | None:
    if not (source.is_dir() or (source.is_file() and source.suffix in TEXT_SUFFIXES)):
        report.error(source, "no such CSV or JSONL file, or folder of text files",
                     f"give a .csv or .jsonl file with text and label columns, or a folder of <label>/*{TEXT_FILE} files")
        return None
    return read_rows(source, report, labeled)


def _write_rows(path: Path | None, folder: Path, split: str, rows: list[tuple[str, str]]) -> Path:
    """Append `rows` to the split at `path` (its CSV, JSONL or folder), or start `<split>.csv`; each file in one step."""
    if path is not None and path.is_dir():
        for text, label in rows:
            name = hashlib.sha256(text.encode()).hexdigest()[:16] + TEXT_FILE
            with atomic_write(path / label / name) as tmp:
                tmp.write_text(text + "\n", encoding="utf-8")
        return path
    if path is not None and path.suffix == ".jsonl":
        old = path.read_text(encoding="utf-8-sig")
        lines = [json.dumps({"text": t, "label": lab} if lab else {"text": t}, ensure_ascii=False) for t, lab in rows]
        with atomic_write(path) as tmp:
            tmp.write_text(old + ("" if not old or old.endswith("\n") else "\n") + "\n".join(lines) + "\n", encoding="utf-8")
        return path
    path = path or folder / f"{split}.csv"
    old = path.read_text(encoding="utf-8-sig") if path.exists() else ""
    header = next(csv.reader(io.StringIO(old)), None) or ["text", "label"]
    out = io.StringIO(newline="")
    writer = csv.DictWriter(out, fieldnames=header, lineterminator="\n", restval="", extrasaction="ignore")
    if not old:
        writer.writeheader()
    writer.writerows({"text": t, "label": lab} for t, lab in rows)
    with atomic_write(path) as tmp:
        tmp.write_text(old + ("" if not old or old.endswith("\n") else "\n") + out.getvalue(), encoding="utf-8")
    return path


def add_texts(source: Path, data: DataConfig, domain: str, split: str) -> dict[str, int]:
    """Add the labeled texts at `source` to `<domain>/<split>`; returns how many were added per label (an
    unlabeled split counts them under ''). Raises DataValidationError listing every problem, having written nothing."""
    labeled = split in LABELED_SPLITS
    report = Report()
    new = _new_rows(source, labeled, report)
    folder = domain_dir(data, domain)
    path = split_file(data, domain, split, report)
    present: set[tuple[str, str]] = set()
    if new is not None and report.ok:
        if path is not None:
            held = read_rows(path, report, labeled)
            present = set(zip(held.texts, held.labels))
        for other in (s for s in LABELED_SPLITS if s != split and labeled):
            there = split_file(data, domain, other)
            if there is None:
                continue
            texts = set(read_rows(there, report, True).texts)
            for text, line in zip(new.texts, new.lines):
                if text in texts:
                    report.error(source, f"this text is already in the {other} split ({there.name})",
                                 f"drop it from the new texts: {', '.join(LABELED_SPLITS)} must not share a text", line)
    if not report.ok or new is None:
        raise DataValidationError(report, NOTHING_ADDED)
    fresh = list(dict.fromkeys(row for row in zip(new.texts, new.labels) if row not in present))
    if fresh:
        folder.mkdir(parents=True, exist_ok=True)
        _write_rows(path, folder, split, fresh)
    return dict(Counter(label for _, label in fresh))

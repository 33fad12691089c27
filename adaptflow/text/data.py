"""Text domains on disk: `<root>/<domain>/<split>.csv` or `.jsonl` with a `text` and a `label` column, or a
folder per split of `.txt` files, one text each, in a folder per class (`<split>/<label>/*.txt`; the
unlabeled split's files may lie in it directly).

Splits are `train` and `test` (labeled), optional `val` (labeled) and `unlabeled` (a label column,
when present, serves only to measure pseudo-label accuracy). One parser reads a file and reports
every problem with its file and line (`validate.Report`): bytes that are not UTF-8, a missing
column, an empty text, a missing label, a row too large to be a sentence or a review, malformed
CSV or JSON. Validation and loading share it, so what validates is what trains.

Loaded splits are token ids (`encoder.Tokens`) in an `ImageSet` (the ids stand where pixels stand),
tokenized in one batched call and cached on disk by the content hash of the file, the tokenizer,
the maximum length and the class list, as decoded images are.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from adaptflow import env
from adaptflow.config import DataConfig
from adaptflow.data.checks import DataValidationError, Report
from adaptflow.data.folders import ImageSet, natural_key
from adaptflow.io import atomic_write
from adaptflow.text.encoder import Tokens

log = logging.getLogger(__name__)

TEXT_SUFFIXES = (".csv", ".jsonl")
#: In a split folder: one text per file.
TEXT_FILE = ".txt"
#: A row longer than this is refused: no sentence or review is; a file that lost its line ends is.
MAX_TEXT_CHARS = 50_000
#: Problems listed per file before the rest are counted only.
MAX_PROBLEMS = 10
LABELED_SPLITS = ("train", "test", "val")
_CACHE_FORMAT = 1


@dataclass(frozen=True)
class TextRows:
    """One split's rows: texts, their labels ('' where a row has none) and the line each starts on."""

    path: Path
    texts: list[str]
    labels: list[str]
    lines: list[int]

    def __len__(self) -> int:
        return len(self.texts)


def domain_dir(data: DataConfig, domain: str) -> Path:
    return env.project_path(data.root) / domain


def split_file(data: DataConfig, domain: str, split: str, report: Report | None = None) -> Path | None:
    """`<domain>/<split>.csv`, `.jsonl` or the folder `<domain>/<split>/`, whichever exists (None if none;
    two is a problem)."""
    folder = domain_dir(data, domain)
    found = [folder / f"{split}{suffix}" for suffix in TEXT_SUFFIXES if (folder / f"{split}{suffix}").is_file()]
    found += [folder / split] if (folder / split).is_dir() else []
    if len(found) > 1 and report is not None:
        report.error(folder, f"both {found[0].name} and {found[1].name}: which is the {split} split is unclear", "keep one of them")
    return found[0] if found else None


def _decode(path: Path, raw: bytes, report: Report) -> str | None:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        report.error(path, f"byte 0x{raw[exc.start]:02x} is not UTF-8", "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)", line)
        return None


class _Rows:
    """Collects rows and problems of one file, stopping the list of problems at MAX_PROBLEMS."""

    def __init__(self, path: Path, report: Report, labeled: bool) -> None:
        self.path, self.report, self.labeled = path, report, labeled
        self.texts: list[str] = []
        self.labels: list[str] = []
        self.lines: list[int] = []
        self.problems = 0

    def problem(self, line: int | None, message: str, fix: str, path: Path | None = None) -> None:
        self.problems += 1
        if self.problems <= MAX_PROBLEMS:
            self.report.error(path or self.path, message, fix, line)

    def add(self, line: int | None, text: object, label: object, path: Path | None = None) -> None:
        """A row (or, in a split folder, a file: `path`, no line)."""
        if not isinstance(text, str) or not text.strip():
            self.problem(line, "empty text" if text in (None, "") or isinstance(text, str) else f"text is not a string ({text!r:.40})",
                         "give every row a text, or remove the row" if path is None else "write the text in it, or remove the file", path)
            return
        if len(text) > MAX_TEXT_CHARS:
            self.problem(line, f"a text of {len(text):,} characters (at most {MAX_TEXT_CHARS:,})",
                         "split or trim it; a row this long is often a file whose line ends were lost", path)
            return
        label = "" if label is None else str(label).strip()
        if self.labeled and not label:
            self.problem(line, "no label", "give the row its label, or move it to the unlabeled split", path)
            return
        self.texts.append(text)
        self.labels.append(label)
        self.lines.append(line)

    def done(self) -> TextRows:
        if self.problems > MAX_PROBLEMS:
            self.report.error(self.path, f"{self.problems - MAX_PROBLEMS} more problem(s) like those above", "fix them as above")
        return TextRows(self.path, self.texts, self.labels, self.lines)


def _columns_problem(path: Path, present: list[str], labeled: bool, report: Report, line: int = 1) -> bool:
    wanted = ["text", "label"] if labeled else ["text"]
    missing = [c for c in wanted if c not in present]
    if missing:
        report.error(path, f"no {' or '.join(repr(m) for m in missing)} column (columns: {', '.join(map(repr, present)) or 'none'})",
                     "name the columns text and label" if labeled else "name the text column text", line)
    return bool(missing)


def _text_files(folder: Path, labeled: bool, report: Report) -> list[tuple[Path, str]]:
    """(file, label) of every `.txt` file of a split folder, classes and files in natural order: in a labeled
    split each lies in the folder of its class; in the unlabeled split also directly in it (no label)."""
    found: list[tuple[Path, str]] = []
    loose = sorted((p for p in folder.glob(f"*{TEXT_FILE}") if p.is_file()), key=lambda p: natural_key(p.name))
    if loose and labeled:
        report.error(loose[0], f"{len(loose)} text file(s) directly in {folder.name}/, where no class is named",
                     f"move each into {folder.name}/<its label>/")
    found += [(p, "") for p in loose if not labeled]
    for sub in sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: natural_key(d.name)):
        files = sorted((p for p in sub.glob(f"*{TEXT_FILE}") if p.is_file()), key=lambda p: natural_key(p.name))
        found += [(p, sub.name) for p in files]
    if not found and not loose:
        report.error(folder, f"no {TEXT_FILE} files in {folder.name}/",
                     f"put one text per {TEXT_FILE} file in {folder.name}/<label>/, or write {folder.name}.csv with text and label columns")
    return found


def _read_folder(folder: Path, report: Report, labeled: bool) -> TextRows:
    rows = _Rows(folder, report, labeled)
    for path, label in _text_files(folder, labeled, report):
        text = _decode(path, path.read_bytes(), report)
        if text is not None:
            report.checked_files += 1
            rows.add(None, text.strip(), label, path)
    return rows.done()


def read_rows(path: Path, report: Report, labeled: bool = True) -> TextRows:
    """Every row of a CSV (header row) or JSONL (one object a line) file, or every text file of a split
    folder; problems go to `report`."""
    if path.is_dir():
        return _read_folder(path, report, labeled)
    rows = _Rows(path, report, labeled)
    text = _decode(path, path.read_bytes(), report)
    if text is None:
        return rows.done()
    report.checked_files += 1
    if path.suffix == ".jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                rows.problem(number, f"not JSON ({exc.msg}, column {exc.colno})", "write one JSON object per line")
                continue
            if not isinstance(record, dict):
                rows.problem(number, "not a JSON object", 'write one object per line: {"text": ..., "label": ...}')
                continue
            if "text" not in record:
                rows.problem(number, f"no 'text' field (fields: {', '.join(map(repr, record)) or 'none'})",
                             'write one object per line: {"text": ..., "label": ...}')
                continue
            rows.add(number, record["text"], record.get("label"))
        return rows.done()
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader, None)
        if header is None or _columns_problem(path, [h.strip() for h in header], labeled, report):
            return rows.done()
        header = [h.strip() for h in header]
        at_text, at_label = header.index("text"), header.index("label") if "label" in header else None
        start = reader.line_num + 1
        for record in reader:
            line, start = start, reader.line_num + 1
            if not any(field.strip() for field in record):
                continue
            if len(record) != len(header):
                rows.problem(line, f"{len(record)} fields, the header has {len(header)}", "quote fields that hold commas or quotes")
                continue
            rows.add(line, record[at_text], record[at_label] if at_label is not None else None)
    except csv.Error as exc:
        rows.problem(reader.line_num, f"not valid CSV ({exc})", "quote fields that hold commas, quotes or line breaks")
    return rows.done()


def read_split(data: DataConfig, domain: str, split: str) -> TextRows:
    """One split's rows, or DataValidationError listing every problem with its file and line."""
    report = Report()
    path = split_file(data, domain, split, report)
    if path is None:
        raise DataValidationError(_missing(data, domain, split, report))
    rows = read_rows(path, report, labeled=split in LABELED_SPLITS)
    if not report.ok:
        raise DataValidationError(report)
    return rows


def _missing(data: DataConfig, domain: str, split: str, report: Report) -> Report:
    if report.ok:
        report.error(domain_dir(data, domain) / f"{split}.csv", f"no {split} split (a {split}.csv or {split}.jsonl file, or a {split}/ folder of {TEXT_FILE} files)",
                     "add it, with a text column" + (" and a label column" if split in LABELED_SPLITS else ""))
    return report


def class_names(labels: list[str]) -> tuple[str, ...]:
    """The labels' distinct values in natural order ('10' after '9')."""
    return tuple(sorted(set(labels), key=natural_key))


def _cache_key(path: Path, tokens: Tokens, classes: tuple[str, ...] | None, unlabeled: bool) -> str:
    digest = hashlib.sha256(f"{_CACHE_FORMAT}:{tokens.max_length}:{tokens.pad_id}:{unlabeled}:{classes}".encode())
    digest.update(hashlib.sha256(tokens.spec.encode()).digest())
    if path.is_dir():  # every file by its place and content: a moved file changes its label
        for file in sorted(p for p in path.rglob(f"*{TEXT_FILE}") if p.is_file()):
            digest.update(f"{file.relative_to(path).as_posix()}\0".encode())
            digest.update(hashlib.sha256(file.read_bytes()).digest())
    else:
        digest.update(path.read_bytes())
    return digest.hexdigest()


def label_ids(rows: TextRows, classes: tuple[str, ...], unlabeled: bool = False) -> torch.Tensor:
    """Each row's index in `classes` (int64). A labeled row whose label is not among them is an error naming its
    line; in the unlabeled split an unknown or missing label is -1."""
    index = {name: i for i, name in enumerate(classes)}
    if not unlabeled:
        unknown = [(line, label) for line, label in zip(rows.lines, rows.labels, strict=True) if label not in index]
        if unknown:
            report = Report()
            line, label = unknown[0]
            report.error(rows.path, f"label '{label}' is not among the training labels {list(classes)} ({len(unknown)} row(s))",
                         "fix the label, or add training examples of it", line)
            raise DataValidationError(report)
    return torch.tensor([index.get(label, -1) for label in rows.labels], dtype=torch.int64)


def load_text_split(data: DataConfig, domain: str, split: str, tokens: Tokens, classes: tuple[str, ...] | None = None) -> ImageSet:
    """One split as token ids and labels (an `ImageSet`), from the on-disk cache when it can.

    `classes` fixes the label order (take it from the train split); a labeled split with a label
    outside it is an error naming the line. In the unlabeled split unknown or missing labels are -1."""
    path = split_file(data, domain, split)
    if path is None:
        raise DataValidationError(_missing(data, domain, split, Report()))
    unlabeled = split not in LABELED_SPLITS
    key = _cache_key(path, tokens, classes, unlabeled)
    cached = env.cache_dir() / "tokens" / f"{key}.pt"
    if cached.exists():
        blob = torch.load(cached, weights_only=True)
        return ImageSet(blob["ids"], blob["labels"], tuple(blob["classes"]))
    rows = read_split(data, domain, split)
    classes = classes if classes is not None else class_names(rows.labels)
    result = ImageSet(tokens(rows.texts), label_ids(rows, classes, unlabeled), tuple(classes))
    with atomic_write(cached) as tmp:
        torch.save({"ids": result.images, "labels": result.labels, "classes": list(classes)}, tmp)
    log.info("tokenized %d texts from %s", len(rows), path)
    return result


def check_text_domains(data: DataConfig, target_splits: tuple[str, ...], report: Report, source: bool) -> None:
    """Validate the target's splits (train and test always; val and unlabeled when present or listed in
    `target_splits`) and, with `source`, the source's train and test: every file problem with its line,
    fewer than two classes, and labels outside the target's training labels."""
    train_labels: set[str] | None = None
    checks: list[tuple[str, str]] = [(data.target, "train"), (data.target, "test")]
    for split in ("val", "unlabeled"):
        if split in target_splits or split_file(data, data.target, split) is not None:
            checks.append((data.target, split))
    if source and data.source is not None:
        checks += [(data.source, "train"), (data.source, "test")]
    for domain, split in checks:
        path = split_file(data, domain, split, report)
        if path is None:
            _missing(data, domain, split, report)
            continue
        before = len(report.errors)
        rows = read_rows(path, report, labeled=split in LABELED_SPLITS)
        if (domain, split) == (data.target, "train"):
            if len(report.errors) > before:
                continue  # its labels are not known: no label of another split is checked against them
            train_labels = set(rows.labels)
            if len(rows) and len(train_labels) < 2:
                report.error(path, f"one label ({next(iter(train_labels))}): a classifier needs at least two",
                             "add labeled rows of each class the model must tell apart")
            continue
        if train_labels is None or split == "unlabeled":
            continue
        where = "only in the source" if domain != data.target else f"only in {split}"
        for label in sorted(set(rows.labels) - train_labels, key=natural_key):
            line = rows.lines[rows.labels.index(label)]
            report.error(path, f"label '{label}' is {where}, not among the target's training labels {sorted(train_labels)}",
                         "add training rows of it to the target's train split, or fix or remove those rows", line)

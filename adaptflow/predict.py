"""Batch prediction: a registered (or local) classifier over a folder of images, written to a CSV.

Each file is decoded exactly as training decoded its images (`folders.decode_image`: the model's
image size and `data.window`), so the classes and scores are those evaluation would give. Files
decode on a thread pool a chunk ahead of the model, and only a few chunks are ever in memory, so
a folder of any size streams through. Nothing is written unless every file decodes: the CSV
appears whole, or not at all.

Given a reference (the target test split the model was measured on), a domain check says whether
the folder's images look like it: a linear probe on the model's own features learns to tell a
sample of each apart, and its cross-validated ROC AUC is reported (0.5: no telling them apart).
Scores cannot say this: a classifier stays confident on images from another domain (the demo's
champion gives MNIST-M digits a mean score of 0.91 and gets 27% of them right).
"""

from __future__ import annotations

import csv
import logging
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from adaptflow import env
from adaptflow.config import WindowConfig
from adaptflow.console import progress
from adaptflow.data.folders import IMAGE_SUFFIXES, decode_image
from adaptflow.data.pixels import recorded_window
from adaptflow.errors import UserError
from adaptflow.io import atomic_write
from adaptflow.models import load_checkpoint
from adaptflow.train import predict_with_features, resolve_device

log = logging.getLogger(__name__)

COLUMNS = ("path", "class", "score")
#: Images per side the domain check compares (a seeded sample of each), and the fewest it needs.
CHECK_IMAGES, CHECK_MIN_IMAGES = 1000, 20
#: A cross-validated AUC from here up says the folder differs from the reference (chance gives
#: 0.5 +- about 0.05 with a few hundred images a side).
DIFFERS_AUC = 0.75


class PredictError(UserError, ValueError):
    """The images or the model cannot be predicted on; nothing was written."""


def image_files(folder: Path) -> list[Path]:
    """Every image under `folder` (any depth), in path order; hidden files and folders are skipped."""
    if not folder.is_dir():
        raise PredictError(f"{folder}: no such folder; give the folder of images to predict")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    if not files:
        raise PredictError(f"{folder}: no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in it or below it")
    return files


def _decoded(files: list[Path], size: int, window: WindowConfig | None, chunk: int) -> Iterator[torch.Tensor]:
    """uint8 N x 3 x size x size per chunk of `files`, the next chunk decoding while the caller uses this one."""

    def decode(path: Path) -> np.ndarray:
        try:
            return decode_image(path, size, window)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - any decoder failure means the file is unusable
            raise PredictError(f"{path}: cannot be decoded ({type(exc).__name__}: {exc}); remove or re-export it. "
                               "No predictions were written") from None

    def stack(futures: list[Future]) -> torch.Tensor:
        return torch.from_numpy(np.stack([f.result() for f in futures])).permute(0, 3, 1, 2)

    with ThreadPoolExecutor(max_workers=min(8, env.usable_cpus())) as pool:
        pending: deque[list[Future]] = deque()
        for start in range(0, len(files), chunk):
            pending.append([pool.submit(decode, p) for p in files[start : start + chunk]])
            if len(pending) == 2:
                yield stack(pending.popleft())
        while pending:
            yield stack(pending.popleft())


@dataclass
class Prediction:
    """What `predict_folder` found: images per class, the mean score, and the domain check against the
    reference (None without one, or with too few images)."""

    counts: Counter[str] = field(default_factory=Counter)
    mean_score: float = 0.0
    check: DomainCheck | None = None


@dataclass(frozen=True)
class DomainCheck:
    """How well a linear probe on the model's features tells the folder's images from the reference's."""

    reference: str
    images: int  # per side
    auc: float
    auc_std: float
    reference_mean_score: float

    @property
    def differs(self) -> bool:
        return self.auc >= DIFFERS_AUC

    def __str__(self) -> str:
        verdict = ("these images differ from the domain the model was measured on, so its accuracy on them is unknown: label some "
                   "(adaptflow data add) or adapt to them (as the target's unlabeled split, with finetune.methods)"
                   if self.differs else "they look alike")
        return (f"domain check against {self.reference} ({self.images} images a side): a linear probe on the model's features "
                f"tells them apart with AUC {self.auc:.2f} +- {self.auc_std:.2f} (0.5: not at all): {verdict}")


def domain_check(features: torch.Tensor, reference: torch.Tensor, name: str, reference_mean_score: float, seed: int = 0) -> DomainCheck | None:
    """The 5-fold cross-validated ROC AUC of a logistic regression telling `features` (N x D) from `reference` (M x D),
    on equal seeded samples of both; None when either has fewer than CHECK_MIN_IMAGES."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    n = min(len(features), len(reference), CHECK_IMAGES)
    if n < CHECK_MIN_IMAGES:
        return None
    g = torch.Generator().manual_seed(seed)
    pick = [t[torch.randperm(len(t), generator=g)[:n]].numpy() for t in (reference, features)]
    x, y = np.concatenate(pick), np.repeat([0, 1], n)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    auc = cross_val_score(probe, x, y, cv=StratifiedKFold(5, shuffle=True, random_state=seed), scoring="roc_auc")
    return DomainCheck(name, n, float(auc.mean()), float(auc.std()), reference_mean_score)


def predict_folder(model_path: str | Path, folder: str | Path, output: str | Path, batch_size: int = 256,
                   device: str = "auto", reference: Path | None = None) -> Prediction:
    """Classify every image under `folder` with the classifier at `model_path` and write `output` (CSV: the path relative
    to `folder`, the class, its probability). With `reference` (a `<split>/<class>/` folder of the model's classes,
    such as the target test split), check whether the folder's images look like it."""
    from adaptflow.data.folders import load_image_folder, scan_folder

    folder, output = Path(folder), Path(output)
    files = image_files(folder)
    try:
        model, meta = load_checkpoint(model_path)
    except ValueError as exc:
        raise PredictError(f"{exc}; `adaptflow predict` takes a classifier (a detector's registered pyfunc predicts boxes)") from None
    window = recorded_window(meta)
    classes, dev = meta["classes"], str(resolve_device(device))
    if reference is not None:  # first: a reference that does not load stops the run before anything is written
        known = load_image_folder(reference, meta["image_size"], classes, window)
        predicted = {p.resolve() for p in files}  # a set compared with itself would say nothing: its own images are left out
        others = torch.tensor([i for i, p in enumerate(scan_folder(reference, classes)[0]) if p.resolve() not in predicted], dtype=torch.long)
        pick = others[torch.randperm(len(others), generator=torch.Generator().manual_seed(0))[:CHECK_IMAGES]].sort().values
        if len(pick) < CHECK_MIN_IMAGES:
            reference = None
        else:
            ref_logits, ref_features = predict_with_features(model, known.images[pick], batch_size, dev)
    sampled = torch.zeros(len(files), dtype=torch.bool)  # the images whose features the domain check keeps
    sampled[torch.randperm(len(files), generator=torch.Generator().manual_seed(0))[:CHECK_IMAGES]] = True
    result, kept, total_score = Prediction(), [], 0.0
    with atomic_write(output) as tmp, open(tmp, "w", newline="") as fh, progress(len(files), "predict") as advance:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        done = 0
        for images in _decoded(files, meta["image_size"], window, batch_size):
            logits, features = predict_with_features(model, images, batch_size, dev)
            score, index = logits.softmax(1).max(1)
            names = [classes[i] for i in index.tolist()]
            writer.writerows(zip((p.relative_to(folder).as_posix() for p in files[done : done + len(images)]), names,
                                 (f"{s:.6f}" for s in score.tolist()), strict=True))
            result.counts.update(names)
            total_score += float(score.sum())
            kept.append(features[sampled[done : done + len(images)]])
            done += len(images)
            advance(len(images))
    result.mean_score = total_score / done
    log.info("predicted %d images from %s into %s", done, folder, output)
    if reference is not None:
        result.check = domain_check(torch.cat(kept), ref_features, str(reference), float(ref_logits.softmax(1).max(1).values.mean()))
    return result

"""What predicting on a folder shares: its image files decoded a chunk ahead, the result, ONNX sessions, and the domain check."""

from __future__ import annotations

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
from adaptflow.data.folders import decode_image
from adaptflow.errors import PredictError, UserError

COLUMNS = ("path", "class", "score")
#: Images per side the domain check compares (a seeded sample of each), and the fewest it needs.
CHECK_IMAGES, CHECK_MIN_IMAGES = 1000, 20
#: A cross-validated AUC from here up says the folder differs from the reference (chance gives
#: 0.5 +- about 0.05 with a few hundred images a side).
DIFFERS_AUC = 0.75


def decoded(files: list[Path], size: int, window: WindowConfig | None, chunk: int) -> Iterator[torch.Tensor]:
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


def onnx_session(path: Path):  # noqa: ANN202 - (run, description)
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name, shape = session.get_inputs()[0].name, session.get_inputs()[0].shape
    step = None if isinstance(shape[0], str) else int(shape[0])  # a fixed batch (1) runs image by image
    dtype = np.float16 if "float16" in session.get_inputs()[0].type else np.float32

    def run(images: torch.Tensor) -> np.ndarray:
        x = images.float().div(255).numpy().astype(dtype)
        chunks = [x] if step is None else [x[i : i + step] for i in range(0, len(x), step)]
        return np.concatenate([session.run(None, {name: c})[0] for c in chunks]).astype(np.float32)

    return run


def progress_chunks(chunks: Iterator[torch.Tensor], files: int) -> Iterator[torch.Tensor]:
    """The chunks, with a progress bar of images on a terminal (none in logs)."""
    with progress(files, "predict") as advance:
        for chunk in chunks:
            yield chunk
            advance(len(chunk))


"""Backbone features of source and target test images, before and after adaptation, on their first two
principal axes: what the report's feature plot draws."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from adaptflow.benchmark.cells import evaluation_splits
from adaptflow.benchmark.spec import BenchmarkSpec
from adaptflow.models import load_checkpoint
from adaptflow.training import Normalizer

#: Test images drawn from each domain (the same ones for every model).
SAMPLE = 400


class FeatureMap(NamedTuple):
    """One model's features in 2-D: the sampled source images' rows first, then the target's."""

    xy: np.ndarray
    source_labels: np.ndarray
    target_labels: np.ndarray


def feature_maps(spec: BenchmarkSpec, source: str, target: str, files: Sequence[Path]) -> list[FeatureMap]:
    """Per model file, the 2-D PCA of its features of the same `SAMPLE` source and target test images."""
    src, tgt = evaluation_splits(spec, source, target)
    g = torch.Generator().manual_seed(0)
    src_idx, tgt_idx = torch.randperm(len(src), generator=g)[:SAMPLE], torch.randperm(len(tgt), generator=g)[:SAMPLE]
    normalize = Normalizer(torch.device("cpu"))
    maps = []
    for file in files:
        model, _ = load_checkpoint(file)
        model.eval()
        with torch.no_grad():
            feats = torch.cat([model.features(normalize(src.images[src_idx])), model.features(normalize(tgt.images[tgt_idx]))])
        centered = feats - feats.mean(0)
        _, _, v = torch.linalg.svd(centered, full_matrices=False)
        maps.append(FeatureMap((centered @ v[:2].T).numpy(), src.labels[src_idx].numpy(), tgt.labels[tgt_idx].numpy()))
    return maps

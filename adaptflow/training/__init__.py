"""The classifier training loop, driven by `adaptflow.config.TrainSettings`.

- `strategies`: transfer strategies as phases, their parameter groups and optimizers
- `augment`: normalisation and augmentation of uint8 batches on the device
- `anchor`: the L2-SP pull toward the starting weights
- `checkpoint`: the training state on disk, and resuming from it
- `step`: `train_step`, one optimisation step (autocast, scaler, L2-SP)
- `loop`: `train_one_epoch` and `fit`
- `inference`: `predict`, `predict_with_features`, and the unsupervised validators' `score_model`
- `runtime`: device, mixed precision, threads, torch.compile, seeds, memory layout

Adaptation methods (`adaptflow.adapt`) plug into the loop; they do not import it.
"""

from adaptflow.config import LAYERWISE_STRATEGIES, TrainSettings
from adaptflow.training.anchor import Anchor
from adaptflow.training.augment import Normalizer, affine_draws, random_affine, random_low_resolution
from adaptflow.training.checkpoint import load_state, save_state
from adaptflow.training.inference import predict, predict_with_features, score_model
from adaptflow.training.loop import EpochCallback, EpochScore, epoch_line, fit, train_one_epoch
from adaptflow.training.step import train_step
from adaptflow.training.runtime import MEMORY_FORMAT, autocast_dtype, compiled, resolve_device, seed_everything, torch_threads
from adaptflow.training.strategies import Phase, backbone_blocks, freeze_modes, make_optimizer, param_groups, phases, plan_phases

__all__ = [
    "LAYERWISE_STRATEGIES", "MEMORY_FORMAT", "Anchor", "EpochCallback", "EpochScore", "Normalizer", "Phase", "TrainSettings",
    "affine_draws", "autocast_dtype", "backbone_blocks", "compiled", "epoch_line", "fit", "freeze_modes", "load_state",
    "make_optimizer", "param_groups", "phases", "plan_phases", "predict", "predict_with_features", "random_affine",
    "random_low_resolution", "resolve_device", "save_state", "score_model", "seed_everything", "torch_threads", "train_one_epoch",
    "train_step",
]

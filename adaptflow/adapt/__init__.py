"""Unsupervised domain adaptation: methods that use unlabeled target images during `fit`.

Every method is a small module with one shared signature (`base.Method`): hooks around the
training loop (`setup`, `before_fit`, `before_epoch`, `after_fit`) and an optional loss term
computed from the step's source and target features and logits. Methods are found by name in
`METHODS` and combine in the order given (e.g. `adabn` then `self_training`).
"""

from adaptflow.adapt.base import METHODS, AdaptBatch, Adaptation, AdaptOptions, Method, TargetData, build_methods
from adaptflow.adapt import adabn, coral, dann, mcc, self_training, shot  # noqa: F401 - register the methods
from adaptflow.adapt.selection import VALIDATORS

__all__ = ["METHODS", "VALIDATORS", "AdaptBatch", "AdaptOptions", "Adaptation", "Method", "TargetData", "build_methods"]

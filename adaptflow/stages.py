"""Each task's stage functions, chosen by `config.task`, so that flows, DVC stages and the CLI
call one entry point per stage whatever the task.

Every family has the same signatures:
    pretrain(PretrainConfig, DataConfig, work_dir, on_epoch) -> PublishedModel
    check_pretrained(PretrainedRef, FinetuneConfig, DataConfig) -> None
    finetune(FinetuneConfig, DataConfig, PretrainedRef, work_dir, on_epoch) -> TrainedModel
    evaluate(EvaluateConfig, DataConfig, model_path, PretrainedRef, work_dir, device) -> metrics
    measure(EvaluateConfig, DataConfig, model_path, device) -> metrics
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType


@dataclass(frozen=True)
class Stages:
    pretrain: Callable
    check_pretrained: Callable
    finetune: Callable
    evaluate: Callable
    measure: Callable

    @classmethod
    def of(cls, pretrain: ModuleType, finetune: ModuleType, evaluate: ModuleType) -> Stages:
        return cls(pretrain.pretrain, finetune.check_pretrained, finetune.finetune, evaluate.evaluate, evaluate.measure)


def for_task(task: str) -> Stages:
    """The stage functions of `classification`, `detection` or `text_classification` (imported only when asked for)."""
    if task == "detection":
        from adaptflow.detection import stages

        return Stages.of(stages, stages, stages)
    if task == "text_classification":
        from adaptflow.text import stages

        return Stages.of(stages, stages, stages)
    from adaptflow import evaluate, finetune, pretrain

    return Stages.of(pretrain, finetune, evaluate)

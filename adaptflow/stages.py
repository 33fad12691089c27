"""Each task's stage functions, chosen by `config.task`, and the transfer run's stages on its config
(`RunStages`): the one place each stage is called from, whatever runs it. The transfer flow runs each as a
Prefect task (`adaptflow.orchestration`), `pipeline.run_transfer` calls them in a row with no orchestrator,
and the CLI's stage commands (what dvc.yaml runs) call one each.

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
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from adaptflow.weights import PretrainedRef, fetch_pretrained
from adaptflow.tracking.store import tracking_uri

if TYPE_CHECKING:
    from adaptflow.config import RunConfig
    from adaptflow.finetune import TrainedModel

#: The transfer run's stages, in order. The flow runs each as its task (`<stage>_task`), `pipeline.run_transfer`
#: in a row; the stage before fine-tuning, `validate`, and the checks between them are not stages of their own.
TRANSFER_STAGES = ("version_data", "fetch_pretrained", "finetune", "evaluate", "register")


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


@dataclass(frozen=True)
class RunStages:
    """The stages of one run, each called with the parts of the run's config it reads; a run folder holds each
    stage's outputs in a sub-folder named after it (`<run_dir>/finetune`, `<run_dir>/evaluate`)."""

    config: RunConfig

    @property
    def family(self) -> Stages:
        return for_task(self.config.task)

    def fetch_pretrained(self) -> PretrainedRef:
        """`pretrained.uri` as a verified local file (`models:/` from the run's tracking store)."""
        cfg = self.config.pretrained
        return fetch_pretrained(cfg.uri, cfg.sha256, allow_pickle=cfg.allow_pickle, tracking_uri=tracking_uri(self.config.tracking))

    def check_pretrained(self, pretrained: PretrainedRef) -> None:
        """Load the pretrained model and fit it a head for the target classes, before any compute is spent."""
        self.family.check_pretrained(pretrained, self.config.finetune, self.config.data)

    def finetune(self, pretrained: PretrainedRef, run_dir: Path, on_epoch: Callable | None = None) -> TrainedModel:
        """Fine-tune on the labeled target split into `<run_dir>/finetune` (`on_epoch`: called with each epoch's record)."""
        return self.family.finetune(self.config.finetune, self.config.data, pretrained, run_dir / "finetune", on_epoch)

    def evaluate(self, model_path: str | Path, pretrained: PretrainedRef, run_dir: Path) -> dict[str, float]:
        """Target and source test metrics, and the source-only baseline, into `<run_dir>/evaluate`."""
        return self.family.evaluate(self.config.evaluate, self.config.data, model_path, pretrained, run_dir / "evaluate",
                                    self.config.finetune.device)

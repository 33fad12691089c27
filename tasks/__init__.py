"""The Prefect tasks, by name: each wraps one core stage with retries, a name and logging.

They live in `adaptflow.orchestration.tasks` (one module per stage); this folder only gathers them for a
reader who looks for `tasks/`, and is not part of the wheel: import them from `adaptflow.orchestration.tasks`.
"""

from adaptflow.orchestration.tasks.benchmark import (
    detection_cell_task, detection_source_task, open_benchmark_run_task, prepare_data_task, report_task, run_cell_task,
    train_source_task,
)
from adaptflow.orchestration.tasks.data import version_data_task
from adaptflow.orchestration.tasks.evaluation import evaluate_task
from adaptflow.orchestration.tasks.notify import notify_promotion_task
from adaptflow.orchestration.tasks.pretrained import fetch_pretrained_task, check_pretrained_task
from adaptflow.orchestration.tasks.registry import open_run_task, register_task, summarize_task
from adaptflow.orchestration.tasks.retraining import retrain_decision_task, record_skip_task
from adaptflow.orchestration.tasks.sweep import open_sweep_run_task, run_trial_task, sweep_report_task
from adaptflow.orchestration.tasks.training import pretrain_task, finetune_task
from adaptflow.orchestration.tasks.validation import validate_task

__all__ = [
    "check_pretrained_task",
    "detection_cell_task",
    "detection_source_task",
    "evaluate_task",
    "fetch_pretrained_task",
    "finetune_task",
    "notify_promotion_task",
    "open_benchmark_run_task",
    "open_run_task",
    "open_sweep_run_task",
    "prepare_data_task",
    "pretrain_task",
    "record_skip_task",
    "register_task",
    "report_task",
    "retrain_decision_task",
    "run_cell_task",
    "run_trial_task",
    "summarize_task",
    "sweep_report_task",
    "train_source_task",
    "validate_task",
    "version_data_task",
]

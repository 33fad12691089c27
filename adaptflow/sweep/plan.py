"""What a sweep runs: a grid of dotted config keys, expanded into trials and validated whole
before anything trains."""

from __future__ import annotations

import copy
import difflib
import itertools
from dataclasses import dataclass
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from adaptflow.config import ConfigError, RunConfig, TrainSettings, explain
from adaptflow.data import has_validation, split_dir
from adaptflow.execution import DaskAddressField, GpuPoolField, RayAddressField, RunnerField, check_addresses
from adaptflow.io import parse_yaml

#: The unsupervised validators of `adaptflow.adapt.selection` (a test keeps the two equal).
VALIDATORS = ("information_maximization", "entropy", "snd", "mixval")
#: What the evaluate stage measures that can pick a trial (higher is better for each).
EVALUATED = {
    "classification": ("source_accuracy", "target_accuracy", "target_macro_f1", "gain", "target_val_accuracy", "target_val_macro_f1"),
    "detection": ("source_map50", "source_map50_95", "target_map50", "target_map50_95", "gain"),
}
#: Metrics measured on the target test set: choosing by them makes the winner's score optimistic.
ON_TARGET_TEST = ("target_accuracy", "target_macro_f1", "target_map50", "target_map50_95", "gain")
#: Metrics measured on the target's labeled validation set (`data.val_fraction` or a `val` folder).
ON_TARGET_VAL = ("target_val_accuracy", "target_val_macro_f1")
#: Every trial score a sweep can pick by (VALIDATORS and EVALUATED; a test keeps them equal).
SelectionMetric = Literal["information_maximization", "entropy", "snd", "mixval", "source_accuracy", "target_accuracy", "target_macro_f1",
                          "target_val_accuracy", "target_val_macro_f1", "source_map50", "source_map50_95", "target_map50",
                          "target_map50_95", "gain"]
#: Sections whose keys change what a trial trains or measures.
SWEPT_SECTIONS = ("data", "pretrained", "finetune")

GridValue = str | int | float | bool | list[str] | None
Grid = dict[str, list[GridValue]]
DEFAULT_GRID: Grid = {"finetune.lr": [3e-4, 1e-3, 3e-3]}


class SweepSettings(BaseModel):
    """How a sweep picks its best trial and where its trials run."""

    model_config = ConfigDict(extra="forbid")

    metric: SelectionMetric = Field(
        "information_maximization",
        description="Trial score that picks the best (higher is better): an unsupervised validator on the target's unlabeled "
        f"split ({', '.join(VALIDATORS)}), or an evaluate metric: target_val_* on labeled target images held out of training "
        "(data.val_fraction or a val folder); target_accuracy, target_macro_f1 and gain use the target test set and are optimistic",
    )
    runner: RunnerField = "thread"
    workers: int = Field(2, ge=1, description="Trials run in parallel: threads, processes of a local Dask cluster, or CPUs of a local Ray instance")
    threads: int = Field(1, ge=1, description="torch threads per trial")
    dask_address: DaskAddressField = ""
    ray_address: RayAddressField = ""
    gpu_pool: GpuPoolField = ""

    @model_validator(mode="after")
    def _addresses(self) -> SweepSettings:
        check_addresses(self)
        return self


def sweep_settings(**values: Any) -> SweepSettings:
    """SweepSettings from keyword values, with errors that name the setting."""
    try:
        return SweepSettings.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"invalid sweep settings\n{explain(exc, SweepSettings)}") from None


@dataclass(frozen=True)
class Trial:
    """One combination of the grid: its values (canonical, as validated) and the whole config it makes."""

    index: int
    overrides: dict[str, Any]
    config: RunConfig

    @property
    def name(self) -> str:
        return f"trial-{self.index:03d}"

    @property
    def label(self) -> str:
        return " ".join(override_text(k, v) for k, v in self.overrides.items())


def override_text(key: str, value: Any) -> str:
    """`key=value` as `adaptflow run` and `--grid` read it back (YAML flow style)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return f"{key}={text.removesuffix('...').strip()}"


def split_values(text: str) -> list[str]:
    """`a,b,[c,d]` -> ['a', 'b', '[c,d]']: commas inside brackets belong to a list value."""
    parts, depth, current = [], 0, ""
    for char in text:
        depth += {"[": 1, "]": -1}.get(char, 0)
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]


def parse_grid(items: list[str] | tuple[str, ...]) -> Grid:
    """`--grid` options (`finetune.lr=1e-3,3e-3`, one per key) as a grid; values are read as YAML."""
    grid: Grid = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key or not text.strip():
            raise ConfigError(f"--grid '{item}' must look like section.key=V1,V2, e.g. --grid finetune.lr=1e-3,3e-3")
        if key in grid:
            raise ConfigError(f"--grid {key} is given twice; list all its values in one option: --grid {key}=V1,V2")
        grid[key] = [parse_yaml(v, f"--grid '{item}'") if v.strip() else None for v in split_values(text)]
    return grid


def plan_trials(config: RunConfig, grid: Grid, metric: str = "information_maximization") -> list[Trial]:
    """Every combination of the grid applied to `config`, each validated as a whole config.

    Raises ConfigError listing every bad key, value and combination (and a metric the trials
    cannot measure), so that nothing starts when any trial could not.
    """
    if not grid:
        raise ConfigError("the sweep grid is empty: give at least one key with values, e.g. finetune.lr: [0.001, 0.003]")
    problems = [p for key in grid for p in _key_problems(key)]
    problems += [f"grid {key}: no values; list at least one, e.g. {key}: [V1, V2]" for key, values in grid.items() if not values]
    _stop_if(problems)
    base = config.model_dump(mode="json")
    for key, values in grid.items():  # each value alone first, so that an error names one key and value
        for value in values:
            _configure(base, {key: value}, problems)
    _stop_if(problems)
    trials = []
    for index, combo in enumerate(itertools.product(*grid.values())):
        overrides = dict(zip(grid, combo))
        trial_config = _configure(base, overrides, problems)
        if trial_config is not None:
            dumped = trial_config.model_dump(mode="json")
            canonical = {k: dumped[k.split(".")[0]][k.split(".")[1]] for k in overrides}
            trials.append(Trial(index, canonical, trial_config))
    problems += _repeats(trials)
    _stop_if(problems)
    check_metric(trials, metric)
    return trials


def canonical_grid(trials: list[Trial]) -> Grid:
    """The grid as validated (`1e-3` read as 0.001), in the order the values were given."""
    grid: Grid = {}
    for trial in trials:
        for key, value in trial.overrides.items():
            if value not in grid.setdefault(key, []):
                grid[key].append(value)
    return grid


def check_metric(trials: list[Trial], metric: str) -> None:
    """The selection metric must be one every trial measures: validators need classifiers and the
    target's unlabeled split; validation metrics one labeled validation set shared by every trial."""
    task = trials[0].config.task
    datas = {t.config.data.model_dump_json(): t.config.data for t in trials}.values()
    if metric in VALIDATORS:
        if task != "classification":
            raise ConfigError(f"metric {metric} scores classifier outputs; with task {task} pick the best by "
                              f"one of {', '.join(EVALUATED[task])} (source_map50 keeps the choice off the target test set)")
        for data in datas:
            folder = split_dir(data, data.target, "unlabeled")
            if not folder.is_dir():
                raise ConfigError(f"{folder}: missing; metric {metric} scores trials on the target's unlabeled images. Add "
                                  f"that split, or pick by source_accuracy (or target_accuracy, knowing it selects on the test set)")
    elif metric not in EVALUATED[task]:
        raise ConfigError(f"metric {metric} is not measured for task {task}; use one of {', '.join(EVALUATED[task])}")
    elif metric in ON_TARGET_VAL:
        for data in datas:
            if not has_validation(data):
                raise ConfigError(f"metric {metric} scores trials on labeled target images held out of training, and there are none: "
                                  f"set data.val_fraction (e.g. 0.2) or add {split_dir(data, data.target, 'val')}/<class>/*.png, "
                                  "or pick by a validator")
        if len({(d.root, d.target, d.val_fraction) for d in datas}) > 1:
            raise ConfigError(f"metric {metric} compares trials on one validation set, but the grid changes which images validate "
                              "(data.root, data.target or data.val_fraction): keep those fixed, or pick by a validator")


def _stop_if(problems: list[str]) -> None:
    if problems:
        listed = "\n".join("  " + p.replace("\n", "\n    ") for p in problems)
        raise ConfigError(f"invalid sweep grid, nothing was started\n{listed}")


def _key_problems(key: str) -> list[str]:
    section, _, name = key.partition(".")
    sections = RunConfig.model_fields
    if section not in sections:
        close = difflib.get_close_matches(section, list(sections), n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"sections: {', '.join(SWEPT_SECTIONS)}"
        return [f"grid key '{key}': unknown section '{section}' ({hint}); keys look like finetune.lr"]
    if section not in SWEPT_SECTIONS:
        return [f"grid key '{key}': {section} does not change what a trial trains or measures; sweep keys under {', '.join(SWEPT_SECTIONS)}"]
    model = sections[section].annotation
    fields = model.offered() if issubclass(model, TrainSettings) else list(model.model_fields)
    if not name or "." in name or name not in fields:
        close = difflib.get_close_matches(name, list(fields), n=1)
        hint = f"did you mean '{section}.{close[0]}'?" if close else f"{section} has: {', '.join(fields)}"
        return [f"grid key '{key}': {section} has no field '{name}' ({hint})"]
    return []


def with_overrides(base: dict, overrides: dict[str, Any]) -> dict:
    """A copy of the config dict `base` with the `section.key` values of `overrides` set."""
    raw = copy.deepcopy(base)
    for key, value in overrides.items():
        section, name = key.split(".")
        raw[section][name] = value
    return raw


def _configure(base: dict, overrides: dict[str, Any], problems: list[str]) -> RunConfig | None:
    try:
        return RunConfig.model_validate(with_overrides(base, overrides))
    except ValidationError as exc:
        label = " ".join(override_text(k, v) for k, v in overrides.items())
        reasons = []
        for err in exc.errors():
            where = ".".join(map(str, err["loc"]))
            got = f" (got {err['input']!r})" if len(err["loc"]) == 2 else ""
            reasons.append(f"{where + ': ' if where else ''}{err['msg'].removeprefix('Value error, ')}{got}")
        problems.append(f"grid {label}: " + "; ".join(reasons) + "\nfix: change or drop that value in the grid")
        return None


def _repeats(trials: list[Trial]) -> list[str]:
    seen: dict[str, Trial] = {}
    problems = []
    for trial in trials:
        digest = trial.config.digest()
        if digest in seen:
            problems.append(f"grid {trial.label}: the same config as {seen[digest].label}; drop the repeated value")
        seen.setdefault(digest, trial)
    return problems

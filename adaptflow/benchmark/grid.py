"""The grid's cells: a typed record per run, its name, and the plan of every cell a preset runs.

A cell is what it trains (kind, strategy, methods, starting point, learning rate) on which pair, with
how many labels per class and which seed. Its name (as results, reports and cache keys show it) is
derived from those fields in one place, `FewLabel.name` and `Cell.name`; `FewLabel.parse` reads a name
back, for results written to disk:

    finetune               a strategy on the target labels, from the source model, at few_shot.lr
    scratch+adabn          also with the unlabeled target split (methods joined by +)
    imagenet:finetune      from the `pretrained` entry `imagenet` instead of the source model
    finetune~holdout       with holdout_fraction of the labels held out to score it
    finetune@lr0.003       at one of lr_candidates
    adabn+self_training    an adaptation run (methods applied in order); none: the control
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, NamedTuple

if TYPE_CHECKING:
    from adaptflow.benchmark.spec import BenchmarkSpec

#: The control: the source model trained for as many more steps as the methods, on source alone.
CONTROL = "none"
#: The no-label baseline: the source model as it is.
SOURCE_ONLY = "source_only"
#: The few-label baseline: fresh weights trained on the target labels.
SCRATCH = "scratch"
#: Marks a few-label run at one of `lr_candidates` (e.g. finetune@lr0.003); unmarked runs use few_shot.lr.
LR_TAG = "@lr"
#: Marks a strategy's run with holdout_fraction of its labels held out to score it (e.g. finetune~holdout).
HOLDOUT_TAG = "~holdout"
#: Marks a few-label run that starts from one of `pretrained`'s weights instead of the source model (e.g. imagenet:finetune).
INIT_SEP = ":"
#: Joins the methods of a combination (adabn+self_training).
JOIN = "+"

Kind = Literal["source_only", "method", "strategy", "scratch", "holdout"]
#: Kinds trained on a few target labels (their names are `FewLabel` names).
FEW_LABEL_KINDS = ("strategy", "scratch", "holdout")


def combo_methods(combo: str) -> tuple[str, ...]:
    """The methods of a preset's combination, in order (`none`, the control, has none)."""
    return () if combo == CONTROL else tuple(combo.split(JOIN))


class FewLabel(NamedTuple):
    """A few-label run, typed: its strategy (or scratch), the methods it adds with the unlabeled target
    split, the `pretrained` entry it starts from (None: the source model, or nothing for scratch), the
    learning rate it tries (None: few_shot.lr) and whether some of its labels are held out."""

    strategy: str
    methods: tuple[str, ...] = ()
    init: str | None = None
    lr: float | None = None
    holdout: bool = False

    @property
    def name(self) -> str:
        """The run's name: the one place names are made (`parse` reads them back exactly)."""
        start = f"{self.init}{INIT_SEP}" if self.init else ""
        lr = f"{LR_TAG}{self.lr!r}" if self.lr is not None else ""
        return start + JOIN.join((self.strategy, *self.methods)) + (HOLDOUT_TAG if self.holdout else "") + lr

    @classmethod
    def parse(cls, name: str) -> FewLabel:
        """The run a few-label name describes (a result read back from disk carries its name only)."""
        rest, tagged, lr = name.partition(LR_TAG)
        holdout = rest.endswith(HOLDOUT_TAG)
        init, started, run = rest.removesuffix(HOLDOUT_TAG).rpartition(INIT_SEP)
        strategy, *methods = run.split(JOIN)
        return cls(strategy, tuple(methods), init if started else None, float(lr) if tagged else None, holdout)


def few_label_parts(name: str) -> tuple[str, list[str]]:
    """A few-label run's strategy (or scratch) and the methods it adds with the unlabeled target split."""
    run = FewLabel.parse(name)
    return run.strategy, list(run.methods)


def init_of(name: str) -> str | None:
    """The `pretrained` entry a few-label run starts from; None: the source model (or, for scratch, nothing)."""
    return FewLabel.parse(name).init


@dataclass(frozen=True)
class Cell:
    """One run of the grid. kind: source_only; method (an adaptation run: `methods` in order, none for the
    control, on the source labels plus `shots` target labels per class); strategy and scratch (a few-label
    run: `strategy`, plus `methods` with the unlabeled target split, from `init` or the source model, at
    `lr` or few_shot.lr); holdout (a strategy trained with some labels held out to score it)."""

    source: str
    target: str
    kind: Kind
    shots: int | str
    seed: int
    strategy: str = ""
    methods: tuple[str, ...] = ()
    init: str | None = None
    lr: float | None = None

    @classmethod
    def few_label(cls, source: str, target: str, run: FewLabel, shots: int | str, seed: int) -> Cell:
        """The cell of few-label run `run` (kind scratch, holdout or strategy, from the run)."""
        kind = "holdout" if run.holdout else SCRATCH if run.strategy == SCRATCH else "strategy"
        return cls(source, target, kind, shots, seed, run.strategy, run.methods, run.init, run.lr)

    @classmethod
    def from_name(cls, source: str, target: str, kind: Kind, name: str, shots: int | str, seed: int) -> Cell:
        """The cell a (kind, name) pair describes, as results on disk and older callers give them."""
        if kind in FEW_LABEL_KINDS:
            return cls.few_label(source, target, FewLabel.parse(name), shots, seed)
        return cls(source, target, kind, shots, seed, methods=combo_methods(name) if kind == "method" else ())

    @property
    def run(self) -> FewLabel:
        return FewLabel(self.strategy, self.methods, self.init, self.lr, self.kind == "holdout")

    @property
    def name(self) -> str:
        if self.kind == SOURCE_ONLY:
            return SOURCE_ONLY
        if self.kind == "method":
            return JOIN.join(self.methods) or CONTROL
        return self.run.name

    @property
    def key(self) -> str:
        return f"{self.target}-{self.name}-k{self.shots}-s{self.seed}"

    def to_dict(self) -> dict:
        """Its coordinates as results, MLflow params and cache keys hold them (the name, not the fields it is made of)."""
        return {"source": self.source, "target": self.target, "kind": self.kind, "name": self.name, "shots": self.shots, "seed": self.seed}


def plan_cells(spec: BenchmarkSpec) -> list[Cell]:
    """Every cell of the grid: no labels and the fewest labels first (an interrupted run keeps the
    headline cells; finished cells are reused by the next run)."""
    cells = [cell for pair in spec.pairs for seed in spec.seeds for cell in _seed_cells(spec, pair.source, pair.target, seed)]
    first = [0, 1, 10, "all"]
    return sorted(cells, key=lambda c: first.index(c.shots) if c.shots in first else len(first))


def _seed_cells(spec: BenchmarkSpec, source: str, target: str, seed: int) -> list[Cell]:
    """The cells of one pair and seed, in the grid's order."""

    def few(run: FewLabel, k: int | str) -> Cell:
        return Cell.few_label(source, target, run, k, seed)

    def method(combo: str, k: int) -> Cell:
        return Cell(source, target, "method", k, seed, methods=combo_methods(combo))

    cells = [Cell(source, target, SOURCE_ONLY, 0, seed), *(method(combo, 0) for combo in spec.methods)]
    cells += [method(combo, k) for combo in spec.semi_supervised for k in spec.method_shots if k > 0]
    for k in spec.shots:
        cells += [few(run, k) for run in (FewLabel(SCRATCH), *spec.transfer_runs())]
        cells += [few(FewLabel(s, lr=lr), k) for lr in spec.lr_candidates for s in (SCRATCH, *spec.strategies)]
        cells += [few(FewLabel(s, combo_methods(combo)), k) for combo, names in spec.with_unlabeled.items() for s in (SCRATCH, *names)]
        if k in spec.holdout_shots():
            cells += [few(FewLabel(s, holdout=True), k) for s in spec.strategies]
    return cells


def source_jobs(spec: BenchmarkSpec) -> list[tuple[str, int]]:
    """(source domain, seed) of every source model the cells start from."""
    return sorted({(p.source, seed) for p in spec.pairs for seed in spec.seeds})

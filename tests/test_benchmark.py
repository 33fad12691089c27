"""The benchmark: presets, the grid, and the flow end to end on tiny real data (report, plots, MLflow runs)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import NamedTuple

import pytest
import torch

from adaptflow.benchmark import BenchmarkSpec, load_preset, plan_cells, source_jobs
from adaptflow.benchmark.spec import PRESETS
from adaptflow.config import ConfigError
from adaptflow.data import ImageSet


def test_presets_load_and_the_full_grid_has_every_dimension() -> None:
    quick, full = load_preset("quick"), load_preset("full")
    assert quick.workers >= 1 and len(quick.seeds) >= 3
    cells = plan_cells(full)
    kinds = {c.kind for c in cells}
    assert kinds == {"source_only", "method", "strategy", "scratch", "holdout"}
    assert {(c.name, c.shots) for c in cells if c.kind == "holdout" and c.target == "mnist_m" and c.seed == 0} == {
        (f"{s}~holdout", k) for s in full.strategies for k in (5, 10, "all")}  # k = 1 has no label to spare
    assert {c.shots for c in cells if c.kind == "scratch"} == {1, 5, 10, "all"}
    assert {c.seed for c in cells} == {0, 1, 2} and {c.target for c in cells} == {"uci_digits", "mnist_m"}
    assert len({c.key for c in cells}) == len(cells)
    assert source_jobs(full) == [("mnist", 0), ("mnist", 1), ("mnist", 2)]
    for combo, strategies in full.with_unlabeled.items():
        runs = {(c.kind, c.name) for c in cells if c.name.endswith("+" + combo) and c.kind != "method"}
        assert runs == {("scratch", f"scratch+{combo}")} | {("strategy", f"{s}+{combo}") for s in strategies} and strategies
    assert set(full.with_unlabeled) == {"adabn", "mcc"}
    for path in sorted(PRESETS.glob("*.yaml")):  # every preset loads and plans each cell once
        spec = load_preset(path.stem)
        assert spec.name == path.stem and len({c.key for c in plan_cells(spec)}) == len(plan_cells(spec)), path.name
    for name, base in (("resnet18", full), ("one_shot_resnet18", load_preset("one_shot"))):  # only the backbone differs
        resnet = load_preset(name)
        assert resnet.arch == "resnet18"
        assert (resnet.pairs, resnet.seeds, resnet.source, resnet.few_shot, resnet.image_size) == (base.pairs, base.seeds, base.source, base.few_shot, base.image_size)
    # Source models seeing low-resolution images are other models, and their cells other cells; without it the keys
    # are those of results measured before the setting existed.
    from adaptflow.benchmark.cells import source_model_path

    low, control = load_preset("low_resolution"), load_preset("low_resolution_control")
    assert low.source.low_resolution == 0.5 and control.source == full.source
    assert low.model_dump(exclude={"name", "source", "output"}) == control.model_dump(exclude={"name", "source", "output"})
    assert source_model_path(control, "mnist", 0) == source_model_path(full, "mnist", 0) != source_model_path(low, "mnist", 0)
    assert source_model_path(full, "mnist", 0).parent.name == "mnist-small_cnn-bbaef844b2-s0"
    # The torch-free spec names what adaptflow.training does: the layout and the layer-wise strategies its keys depend on.
    import adaptflow.benchmark.spec as spec_module
    import adaptflow.training as train_module

    assert getattr(torch, spec_module.LAYOUT) == train_module.MEMORY_FORMAT
    assert spec_module.LAYERWISE_STRATEGIES == train_module.LAYERWISE_STRATEGIES
    finetune = next(c for c in plan_cells(low) if c.name == "finetune")
    assert control.cell_digest(finetune) == full.cell_digest(finetune) != low.cell_digest(finetune)
    # A method's loss makes its hyperparameters part of what a few-label cell depends on; batch-norm statistics alone do not.
    heavier = full.model_copy(update={"adapt_weight": 2.0})
    for name, depends in (("finetune+mcc", True), ("finetune+adabn", False), ("finetune", False)):
        cell = next(c for c in cells if c.name == name)
        assert (full.cell_digest(cell) != heavier.cell_digest(cell)) is depends, name
    # The pull toward the source weights is part of what transfer strategies depend on, not scratch; at 0 keys and digests
    # are those of before it existed.
    for name, control_name in (("long_source_l2sp", "long_source"), ("long_source_shots_l2sp", "long_source_shots")):
        pulled, control = load_preset(name), load_preset(control_name)
        assert pulled.l2sp > 0 and pulled.model_dump(exclude={"name", "l2sp", "output"}) == control.model_dump(exclude={"name", "l2sp", "output"})
        for cell in plan_cells(control):
            assert (pulled.cell_digest(cell) != control.cell_digest(cell)) is (cell.kind == "strategy"), cell.key
    assert full.digest() == full.model_copy(update={"l2sp": 0.0}).digest() != full.model_copy(update={"l2sp": 0.1}).digest()


def test_a_cell_is_a_typed_record_whose_name_reads_back_exactly() -> None:
    """Every planned cell of every preset: its name is made from its fields and reads back into the same cell;
    results, reports and cache keys see the name, the code the fields."""
    from adaptflow.benchmark.grid import Cell, FewLabel
    from adaptflow.benchmark.spec import preset_names

    assert preset_names() == sorted(p.stem for p in PRESETS.glob("*.yaml")) and "quick" in preset_names()
    for preset in preset_names():
        for cell in plan_cells(load_preset(preset)):
            assert Cell.from_name(cell.source, cell.target, cell.kind, cell.name, cell.shots, cell.seed) == cell, cell.key
            assert cell.to_dict() == {"source": cell.source, "target": cell.target, "kind": cell.kind, "name": cell.name,
                                      "shots": cell.shots, "seed": cell.seed}
    run = FewLabel("finetune", ("adabn", "mcc"), init="imagenet")
    assert run.name == "imagenet:finetune+adabn+mcc" and FewLabel.parse(run.name) == run
    assert FewLabel("scratch", lr=1e-9).name == "scratch@lr1e-09" and FewLabel.parse("scratch@lr1e-09").lr == 1e-9
    assert FewLabel.parse("lp_ft~holdout") == FewLabel("lp_ft", holdout=True)
    cell = Cell.from_name("mnist", "t", "holdout", "lp_ft~holdout", 5, 0)
    assert (cell.strategy, cell.kind, cell.key) == ("lp_ft", "holdout", "t-lp_ft~holdout-k5-s0")
    assert Cell.from_name("mnist", "t", "method", "none", 0, 1).methods == () and Cell("mnist", "t", "method", 0, 1).name == "none"
    assert Cell("mnist", "t", "method", 1, 0, methods=("adabn", "self_training")).key == "t-adabn+self_training-k1-s0"


def test_pretrained_starts_add_a_run_per_strategy_and_leave_other_presets_keys_alone() -> None:
    """`pretrained` adds name:strategy runs at every k and seed; they depend on the weights, not on the source
    model's budget; presets without it keep their digests and cells."""
    from adaptflow.benchmark.grid import few_label_parts, init_of

    imagenet = load_preset("imagenet")
    assert imagenet.arch == "efficientnet_lite0" and imagenet.pretrained == {"imagenet": "package:efficientnet_lite0"}
    cells = plan_cells(imagenet)
    assert {(c.kind, c.name) for c in cells} == {("source_only", "source_only"), ("scratch", "scratch"), ("strategy", "finetune"),
                                                 ("strategy", "imagenet:finetune")}
    assert {(c.target, c.shots, c.seed) for c in cells if c.name == "imagenet:finetune"} == {
        (t, k, s) for t in ("uci_digits", "mnist_m") for k in (1, 5, 10, "all") for s in (0, 1, 2)}
    assert few_label_parts("imagenet:finetune+adabn") == ("finetune", ["adabn"]) and init_of("imagenet:finetune") == "imagenet"
    assert init_of("finetune") is None and init_of("scratch") is None
    start = next(c for c in cells if c.name == "imagenet:finetune")
    from_source = next(c for c in cells if c.name == "finetune")
    longer = imagenet.model_copy(update={"source": imagenet.source.model_copy(update={"epochs": 99})})
    assert longer.cell_digest(start) == imagenet.cell_digest(start) and longer.cell_digest(from_source) != imagenet.cell_digest(from_source)
    other = imagenet.model_copy(update={"pretrained": {"imagenet": "package:efficientnet_lite1"}})
    assert other.cell_digest(start) != imagenet.cell_digest(start) and other.cell_digest(from_source) == imagenet.cell_digest(from_source)
    full = load_preset("full")
    assert full.pretrained == {} and "pretrained" not in full.model_dump(exclude_unset=True)
    assert full.digest() != full.model_copy(update={"pretrained": {"imagenet": "package:efficientnet_lite0"}}).digest()
    assert full.transfer_names() == full.strategies


def test_a_pretrained_start_is_its_weights_with_a_new_head(project: Path, tmp_path: Path) -> None:
    """A run from `pretrained` starts from the file's backbone with a fresh head of the target's classes, trains and is
    measured like a run from the source model (packaged ImageNet weights are one such file)."""
    from adaptflow.benchmark.cells import pretrained_start, run_cell
    from adaptflow.models import build_classifier, load_source_model, save_checkpoint
    from adaptflow.weights import fetch_pretrained

    torch.manual_seed(1)
    other = build_classifier("small_cnn", 3)
    save_checkpoint(tmp_path / "other.pt", other, arch="small_cnn", classes=("a", "b", "c"), image_size=16)
    spec = BenchmarkSpec(image_size=16, pairs=[{"target": "uci_digits"}], seeds=[0], shots=[1], strategies=["finetune"], methods=[],
                         pretrained={"other": str(tmp_path / "other.pt")}, few_shot={"steps": 4, "batch_size": 8}, eval_points=2)
    start = pretrained_start(spec, "other", 10)
    assert start.head.out_features == 10
    assert all(torch.equal(a, b) for a, b in zip(start.backbone.state_dict().values(), other.backbone.state_dict().values(), strict=True))
    cell = next(c for c in plan_cells(spec) if c.name == "other:finetune")
    result = run_cell(spec, cell)
    assert result["key"] == "uci_digits-other:finetune-k1-s0" and len(result["curve"]) >= 2 and 0 <= result["target_accuracy"] <= 1

    lite = BenchmarkSpec(arch="efficientnet_lite0", pretrained={"imagenet": "package:efficientnet_lite0"})
    imagenet, _ = load_source_model(fetch_pretrained("package:efficientnet_lite0").path, "efficientnet_lite0")
    start = pretrained_start(lite, "imagenet", 10)
    assert start.head.out_features == 10 and imagenet.head.out_features == 1000
    assert all(torch.equal(a, b) for a, b in zip(start.backbone.state_dict().values(), imagenet.backbone.state_dict().values(), strict=True))


def test_starting_points_report_each_start_against_scratch_at_every_k() -> None:
    from adaptflow.benchmark.speed import starting_points
    from adaptflow.benchmark.tables import few_label_table

    spec = BenchmarkSpec(pairs=[{"target": "t"}], shots=[1, 10], strategies=["finetune"], methods=[], arch="efficientnet_lite0",
                         pretrained={"imagenet": "package:efficientnet_lite0"})

    def cell(name: str, k: int, seed: int, points: list[tuple[int, float, float]]) -> dict:
        curve = [{"steps": s, "seconds": t, "accuracy": a} for s, t, a in points]
        return {"target": "t", "kind": "scratch" if name == "scratch" else "strategy", "name": name, "shots": k, "seed": seed,
                "curve": curve, "target_accuracy": curve[-1]["accuracy"]}

    results = [c for seed in (0, 1) for c in (
        cell("scratch", 10, seed, [(0, 0.0, 0.1), (50, 5.0, 0.3), (100, 10.0, 0.4)]),
        cell("imagenet:finetune", 10, seed, [(0, 0.0, 0.1), (10, 1.0, 0.45), (100, 10.0, 0.6)]),  # 1/10 of scratch's time
        cell("finetune", 10, seed, [(0, 0.0, 0.1), (100, 10.0, 0.35)]),  # never reaches 0.4
        cell("scratch", 1, seed, [(0, 0.0, 0.1), (10, 2.0, 0.2)]),
        cell("imagenet:finetune", 1, seed, [(0, 0.0, 0.1), (5, 1.0, 0.3)]),
    )]
    text, summary = starting_points(spec, results, "t")
    assert "| start: strategy | k = 1 | k = 10 |" in text
    assert "| imagenet: finetune | +10.0 points; time 0.50 (worst 0.50), steps 0.50 | +20.0 points; time 0.10 (worst 0.10), steps 0.10 |" in text
    assert "| source: finetune |  | -5.0 points; time never (worst never), steps never |" in text
    assert summary["10"]["imagenet:finetune"]["gain"] == pytest.approx(0.2) and summary["10"]["imagenet:finetune"]["median_ratio"] == 0.1
    table, _ = few_label_table(spec, results, "t")
    assert "| imagenet:finetune | 30.0 ± 0.0 | 60.0 ± 0.0 |" in table
    assert "- k = 10, best from imagenet (target labels only): **imagenet:finetune** 60.0% vs from scratch 40.0% (+20.0 points)" in table
    assert "- k = 10, best from the source model (target labels only): **finetune** 35.0%" in table
    assert starting_points(spec.model_copy(update={"pretrained": {}}), results, "t") == ("", {})


class FewLabelRun(NamedTuple):
    initial: torch.nn.Module
    model: torch.nn.Module
    history: list[dict]
    curve: list[dict]
    unlabeled: ImageSet


def few_label_run(spec: BenchmarkSpec, name: str, kind: str = "scratch") -> FewLabelRun:
    """One k = 1 cell on the test project's UCI digits, from a fresh network (seed 0), run in place."""
    from adaptflow.benchmark.cells import _data, _few_shot, labeled_target
    from adaptflow.benchmark.grid import Cell
    from adaptflow.data import list_classes, load_split, split_dir
    from adaptflow.models import build_classifier

    data = _data(spec, "mnist", "uci_digits")
    classes = list_classes(split_dir(data, "uci_digits", "train"))
    test, unlabeled = (load_split(data, "uci_digits", split, classes) for split in ("test", "unlabeled"))
    torch.manual_seed(0)
    model = build_classifier(spec.arch, len(classes))
    initial = copy.deepcopy(model)
    cell = Cell.from_name("mnist", "uci_digits", kind, name, 1, 0)
    history, curve = _few_shot(spec, cell, model, labeled_target(data, classes, 1, 0), test, unlabeled)
    return FewLabelRun(initial, model, history, curve, unlabeled)


def test_a_few_label_run_with_adabn_ends_on_target_statistics(project: Path) -> None:
    """`+adabn`: batch-norm statistics are the exact ones of the unlabeled target split after training;
    without it they are what the few labeled images left."""
    from adaptflow.adapt import TargetData
    from adaptflow.adapt.adabn import adapt_batch_norm
    from adaptflow.training import Normalizer

    spec = BenchmarkSpec(image_size=16, few_shot={"steps": 6, "batch_size": 8}, eval_points=3, with_unlabeled={"adabn": ["finetune"]})

    def running_means(name: str) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict]]:
        run = few_label_run(spec, name, kind="strategy")
        exact = copy.deepcopy(run.model)
        adapt_batch_norm(exact, TargetData(run.unlabeled.images, Normalizer(torch.device("cpu"))))
        norms = lambda m: [b.running_mean.clone() for b in m.modules() if isinstance(b, torch.nn.BatchNorm2d)]  # noqa: E731
        return norms(run.model), norms(exact), run.curve

    got, exact, curve = running_means("finetune+adabn")
    assert got and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, exact, strict=True))
    assert curve[-1]["seconds"] > curve[-2]["seconds"] and curve[-1]["epoch"] == curve[-2]["epoch"]
    got, exact, _ = running_means("finetune")
    assert not all(torch.allclose(a, b, atol=1e-3) for a, b in zip(got, exact, strict=True))


def test_a_few_label_run_with_mcc_learns_from_the_unlabeled_target_split(project: Path) -> None:
    """`+mcc`: MCC's loss on unlabeled target batches at every step lowers the class confusion of the
    model's target predictions, against the same run on the labels alone."""
    from adaptflow.adapt.mcc import mcc_loss
    from adaptflow.training import predict

    spec = BenchmarkSpec(image_size=16, few_shot={"steps": 60, "batch_size": 10}, eval_points=2, adapt_weight=3.0)

    def confusion(name: str) -> float:
        run = few_label_run(spec, name)
        assert len(run.history) == 60  # 10 labeled images in batches of 10: a step an epoch
        return float(mcc_loss(predict(run.model, run.unlabeled.images)))

    assert confusion("scratch+mcc") < 0.9 * confusion("scratch")


def test_a_few_label_run_named_with_a_learning_rate_trains_at_it(project: Path) -> None:
    """`scratch@lr1e-09` barely moves its weights in 20 steps; `scratch` (few_shot.lr) moves them."""
    spec = BenchmarkSpec(image_size=16, few_shot={"steps": 20, "batch_size": 10}, eval_points=2, lr_candidates=[1e-9])
    assert {c.name for c in plan_cells(spec) if c.shots == 1} >= {"scratch@lr1e-09", "finetune@lr1e-09", "scratch", "finetune"}

    def largest_change(name: str) -> float:
        run = few_label_run(spec, name)
        return max(float((p - q).detach().abs().max()) for p, q in zip(run.model.parameters(), run.initial.parameters(), strict=True))

    assert largest_change("scratch@lr1e-09") < 1e-6 < 1e-3 < largest_change("scratch")


def test_l2sp_pulls_a_transfer_strategy_toward_its_start_and_leaves_scratch_alone(project: Path) -> None:
    """With `l2sp`, a strategy's run ends nearer the weights it started from; scratch trains as without it."""
    plain = BenchmarkSpec(image_size=16, few_shot={"steps": 20, "batch_size": 10}, eval_points=2)
    pulled = plain.model_copy(update={"l2sp": 50.0})

    def distance(spec: BenchmarkSpec, kind: str, name: str) -> float:
        run = few_label_run(spec, name, kind=kind)
        return sum(float(((p - q).detach() ** 2).sum()) for p, q in zip(run.model.parameters(), run.initial.parameters(), strict=True))

    assert distance(pulled, "strategy", "finetune") < 0.5 * distance(plain, "strategy", "finetune")
    assert distance(pulled, "scratch", "scratch") == distance(plain, "scratch", "scratch") > 0


def test_a_strategy_run_with_labels_held_out_trains_on_the_rest_and_scores_them(project: Path) -> None:
    """A holdout cell trains on the labels it does not hold out (fewer steps an epoch, so more epochs for the
    same steps) and reports its accuracy and loss on the held-out ones; the plain cell is unchanged."""
    from adaptflow.benchmark.cells import run_cell, train_source

    threads = torch.get_num_threads()
    spec = BenchmarkSpec(image_size=16, pairs=[{"target": "uci_digits"}], seeds=[0], shots=[3], strategies=["finetune"], methods=[],
                         holdout_fraction=0.3, source={"epochs": 1}, few_shot={"steps": 12, "batch_size": 8}, eval_points=2,
                         threads=threads + 1)
    cells = {c.kind: c for c in plan_cells(spec) if c.name.startswith("finetune")}
    assert cells["holdout"].key == "uci_digits-finetune~holdout-k3-s0"
    train_source(spec, "mnist", 0)
    plain, held = run_cell(spec, cells["strategy"]), run_cell(spec, cells["holdout"])
    assert torch.get_num_threads() == threads  # restored: the caller's floats do not change
    assert (plain["epochs"], held["epochs"]) == (3, 4)  # 30 images: 4 steps an epoch; 30% of 3 a class held out, 20 images: 3
    assert "holdout_accuracy" not in plain and held["holdout_loss"] > 0
    assert round(10 * held["holdout_accuracy"], 6).is_integer()  # 10 held-out images
    two = spec.model_copy(update={"holdout_fraction": 0.6})
    assert two.cell_digest(cells["holdout"]) != spec.cell_digest(cells["holdout"])
    assert two.cell_digest(cells["strategy"]) == spec.cell_digest(cells["strategy"])


def scored(name: str, seed: int, accuracy: float, score: float, shots: int = 1) -> dict:
    """A finished few-label cell on target `t`, as the report reads it."""
    kind = "scratch" if name.startswith("scratch") else "strategy"
    return {"target": "t", "kind": kind, "name": name, "shots": shots, "seed": seed, "target_accuracy": accuracy,
            "key": f"{name}-{seed}", "validators": {"information_maximization": score}}


def test_the_validator_picks_the_few_label_learning_rate_per_seed() -> None:
    from adaptflow.benchmark.selection import lr_selection

    spec = BenchmarkSpec(pairs=[{"target": "t"}], shots=[1], strategies=["finetune"], methods=[], lr_candidates=[0.003])
    results = [  # labels agree with the validator in seed 0 only, for both
        scored("scratch", 0, 0.60, 0.1), scored("scratch@lr0.003", 0, 0.70, 0.2),
        scored("scratch", 1, 0.74, 0.1), scored("scratch@lr0.003", 1, 0.62, 0.3),
        scored("finetune", 0, 0.80, 0.5), scored("finetune@lr0.003", 0, 0.90, 0.6),
        scored("finetune", 1, 0.84, 0.9), scored("finetune@lr0.003", 1, 0.86, 0.4),
        scored("finetune+adabn", 1, 0.99, 9.9),  # uses unlabeled images: not a candidate
    ]
    text, summary = lr_selection(spec, results, "t")
    assert "| from scratch | 67.0 ± 9.9 | 66.0 ± 5.7 | 66.0 ± 5.7 | 1/2 | 0.003 x2 |" in text
    assert "| finetune | 82.0 ± 2.8 | 88.0 ± 2.8 | 87.0 ± 4.2 | 1/2 | 0.001 x1, 0.003 x1 |" in text
    assert ("best transfer strategy **finetune** 87.0% vs from scratch 66.0% (+21.0 points); against scratch at its best "
            "learning rate by target labels (0.001, 67.0%): +20.0 points") in text
    finetune = summary["1"]["finetune"]
    assert (finetune["picked"], finetune["agreement"]) == pytest.approx((0.87, 0.5))
    assert finetune["per_lr"] == pytest.approx({"0.001": 0.82, "0.003": 0.88})
    assert lr_selection(spec.model_copy(update={"lr_candidates": []}), results, "t") == ("", {})


def test_the_validator_picks_the_few_label_strategy_per_seed() -> None:
    from adaptflow.benchmark.selection import strategy_selection

    spec = BenchmarkSpec(pairs=[{"target": "t"}], shots=[1], strategies=["finetune", "linear_probe"], methods=[])
    results = [  # the validator picks linear_probe in both seeds; labels would pick it in seed 1 only
        scored("scratch", 0, 0.50, 0.9), scored("finetune", 0, 0.90, 0.1), scored("linear_probe", 0, 0.80, 0.2),
        scored("scratch", 1, 0.70, 0.9), scored("finetune", 1, 0.60, 0.1), scored("linear_probe", 1, 0.84, 0.3),
        scored("finetune+mcc", 1, 0.99, 9.9), scored("finetune@lr0.003", 1, 0.99, 9.9),  # not candidates
        scored("finetune", 2, 0.99, 0.1), scored("linear_probe", 2, 0.99, 0.2),  # no scratch run for seed 2: left out
    ]
    text, summary = strategy_selection(spec, results, "t")
    assert ("- k = 1: the picked strategy reaches 82.0 ± 2.8% (linear_probe x2) vs from scratch 60.0 ± 14.1% (+22.0 points); "
            "the pick is the label-based one in 1/2 seeds, which reaches 87.0 ± 4.2%") in text
    assert summary["1"] == pytest.approx({"picked": 0.82, "scratch": 0.60, "agreement": 0.5, "label_based": 0.87})
    assert "Every validator's picks" not in text  # one validator measured: nothing to compare
    for r in results:  # mixval prefers the most accurate run in seed 0 and the least in seed 1
        r["validators"]["mixval"] = {(0, "finetune"): 0.9, (1, "finetune"): 0.9}.get((r["seed"], r["name"]), 0.5)
    text, _ = strategy_selection(spec, results, "t")
    assert "| picked by | k = 1 |\n|---|---|\n| information_maximization (used) | 1/2, 82.0 ± 2.8% |\n| mixval | 1/2, 75.0 ± 21.2% |" in text
    del results[1]["validators"]["mixval"]
    with pytest.raises(ValueError, match=r"cell finetune-0 was measured before the validator 'mixval' existed: delete its result"):
        strategy_selection(spec.model_copy(update={"validator": "mixval"}), results, "t")
    assert strategy_selection(spec.model_copy(update={"strategies": ["finetune"]}), results, "t") == ("", {})


def test_held_out_labels_pick_the_few_label_strategy_where_k_allows() -> None:
    from adaptflow.benchmark.selection import strategy_selection

    spec = BenchmarkSpec(pairs=[{"target": "t"}], shots=[1, 5], strategies=["finetune", "linear_probe"], methods=[], holdout_fraction=0.2)
    results = [  # labels pick finetune in seed 0, linear_probe in seed 1; the validator picks linear_probe in both
        scored("scratch", 0, 0.50, 0.9, 5), scored("finetune", 0, 0.90, 0.1, 5), scored("linear_probe", 0, 0.80, 0.2, 5),
        scored("scratch", 1, 0.70, 0.9, 5), scored("finetune", 1, 0.60, 0.1, 5), scored("linear_probe", 1, 0.84, 0.3, 5),
        scored("scratch", 0, 0.40, 0.9), scored("finetune", 0, 0.70, 0.1), scored("linear_probe", 0, 0.60, 0.2),
    ]
    # Held out: seed 0 ties on accuracy and the lower loss (finetune) wins; seed 1 linear_probe is more accurate.
    for seed, name, acc, loss in ((0, "finetune", 0.9, 0.3), (0, "linear_probe", 0.9, 0.5), (1, "finetune", 0.7, 0.2), (1, "linear_probe", 0.8, 0.9)):
        results.append({**scored(f"{name}~holdout", seed, 0.0, 0.0, 5), "kind": "holdout", "holdout_accuracy": acc, "holdout_loss": loss})
    text, summary = strategy_selection(spec, results, "t")
    assert ("  - picked by held-out target labels instead: 87.0 ± 4.2% (finetune x1, linear_probe x1), "
            "the label-based one in 2/2 seeds") in text
    assert summary["5"]["holdout"] == pytest.approx({"picked": 0.87, "agreement": 1.0}) and "holdout" not in summary["1"]
    assert "| picked by | k = 1 | k = 5 |" in text and "| held-out target labels (20% a class, at least 1) |  | 2/2, 87.0 ± 4.2% |" in text
    text, summary = strategy_selection(spec, results[:-1], "t")  # a candidate without its held-out run: no held-out pick
    assert "held-out" not in text and "holdout" not in summary["5"]


def test_time_to_accuracy_compares_each_seed_with_its_own_scratch_run() -> None:
    from adaptflow.benchmark.speed import time_text, time_to_accuracy, time_to_accuracy_summary

    def cell(name: str, seed: int, points: list[tuple[int, float, float]]) -> dict:
        curve = [{"steps": s, "seconds": t, "accuracy": a} for s, t, a in points]
        return {"target": "t", "shots": 1, "name": name, "seed": seed, "curve": curve}

    results = [  # scratch peaks at step 100 (10 s) in seed 0, at step 50 (4 s) in seed 1
        cell("scratch", 0, [(0, 0.0, 0.1), (50, 5.0, 0.6), (100, 10.0, 0.7), (200, 20.0, 0.65)]),
        cell("scratch", 1, [(0, 0.0, 0.1), (50, 4.0, 0.8), (100, 8.0, 0.75)]),
        cell("finetune", 0, [(0, 0.0, 0.3), (10, 1.5, 0.72), (200, 20.0, 0.9)]),
        cell("finetune", 1, [(0, 0.0, 0.3), (10, 0.4, 0.79), (25, 1.0, 0.8)]),
        cell("lp_ft", 0, [(0, 0.0, 0.3), (200, 20.0, 0.69)]),  # never reaches 0.7
        cell("lp_ft", 1, [(0, 0.0, 0.85)]),
    ]
    seeds = time_to_accuracy(results, "t", strategy="finetune")["per_seed"]
    assert [(r["seed"], r["scratch_steps"], r["transfer_steps"]) for r in seeds] == [(0, 100, 10), (1, 50, 25)]
    assert [r["ratio"] for r in seeds] == pytest.approx([0.15, 0.25]) and [r["step_ratio"] for r in seeds] == pytest.approx([0.1, 0.5])
    summary = time_to_accuracy_summary(results, "t", ["finetune", "lp_ft"])
    assert summary["finetune"] == pytest.approx({"median_ratio": 0.2, "worst_ratio": 0.25, "median_step_ratio": 0.3,
                                                  "within_fifth": 1, "seeds": 2})
    assert summary["lp_ft"]["worst_ratio"] is None and summary["lp_ft"]["within_fifth"] == 1
    text = time_text(summary, time_to_accuracy(results, "t", strategy="lp_ft"), "t", "lp_ft", 1)
    assert "| lp_ft | inf |" not in text and "| lp_ft | never | never | 1/2 | never |" in text
    assert "- seed 0: lp_ft never reached scratch's best 70.0%" in text


def test_a_grid_of_few_labels_only_reports_its_semi_supervised_rows() -> None:
    """Methods given labels show as few-label rows even when no label-free method runs; with one
    candidate at k = 0 there is nothing for the validator to choose."""
    from adaptflow.benchmark.selection import validator_selection
    from adaptflow.benchmark.tables import few_label_table

    spec = BenchmarkSpec(pairs=[{"target": "t"}], shots=[1], strategies=["finetune"], methods=[], semi_supervised=["mcc"])
    base = {"target": "t", "validators": {"information_maximization": 0.0}, "source_accuracy": 0.99}
    results = [{**base, "kind": kind, "name": name, "shots": shots, "seed": seed, "target_accuracy": acc}
               for seed in (0, 1) for kind, name, shots, acc in
               (("source_only", "source_only", 0, 0.3), ("scratch", "scratch", 1, 0.6), ("strategy", "finetune", 1, 0.8),
                ("method", "mcc", 1, 0.9))]
    table, summary = few_label_table(spec, results, "t")
    assert "| mcc + unlabeled target | 90.0 ± 0.0 |" in table and summary["mcc + unlabeled target"]["1"] == pytest.approx(0.9)
    assert "best with unlabeled target images too: **mcc + unlabeled target** 90.0% vs from scratch 60.0% (+30.0 points)" in table
    assert validator_selection(spec, results, "t") == ("", {})


BAD_PRESETS = [  # (preset text, what the error must say)
    ("methods: [adabn+magic]\n", r"\n  methods: .*unknown method\(s\) \['magic'\]"),
    # the control trains on source alone: nothing to add to a few-label run
    ("with_unlabeled: {none: [finetune]}\n", r"with_unlabeled: .*'none': unknown method\(s\) \['none'\]; use names from"),
    ("with_unlabeled: {mcc: [warp_speed]}\n", r"with_unlabeled\.mcc\.0: Input should be 'linear_probe'"),
    # few_shot.lr is 0.001
    ("lr_candidates: [0.003, 0.001]\n", r"lr_candidates: \[0.003, 0.001\] repeats a value \(few_shot.lr 0.001 is always tried\)"),
    ("lr_candidates: [-0.1]\n", r"lr_candidates\.0: Input should be greater than 0"),
    ("shots: [1]\nholdout_fraction: 0.2\n", r"holdout_fraction: 0.2 needs a k of 2 or more \(or all\) in shots \[1\]: at k = 1 no label"),
    ("source: {augment: false, low_resolution: 0.5}\n", r"source: .*low_resolution=0.5 is part of augmentation: set augment: true too"),
    ("pretrained: {source: package:efficientnet_lite0}\n", r"pretrained: .*'source' cannot name a starting point"),
    ("pretrained: {imagenet: package:efficientnet_lite9}\n", r"pretrained.imagenet 'package:efficientnet_lite9': no packaged weights .*did you mean"),
    ("pretrained: {imagenet: package:efficientnet_lite0}\n", r"pretrained.imagenet: package:efficientnet_lite0 holds efficientnet_lite0 weights but arch is small_cnn; set arch: efficientnet_lite0"),
    ("method: [coral]\n", r"  method: unknown field \(did you mean 'methods'\?\); remove it or fix its name"),
    ("pairs: [{source: mnist, target: ../../elsewhere}]\n", r"pairs\.0\.target: .*'\.\./\.\./elsewhere' is not a plain folder name"),
]


@pytest.mark.parametrize(("text", "error"), BAD_PRESETS, ids=[text.split(":")[0] for text, _ in BAD_PRESETS])
def test_bad_presets_name_the_file_and_field(tmp_path: Path, text: str, error: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=error) as raised:
        load_preset(bad)
    assert f"{bad}: invalid benchmark preset\n" in str(raised.value)


def test_an_unknown_preset_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="no such benchmark preset"):
        load_preset("nope")


def test_benchmark_flow_writes_the_report_and_logs_child_runs(prefect_api, project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.io import read_json
    from flows.benchmark import benchmark

    spec = BenchmarkSpec(
        name="tiny", image_size=16, pairs=[{"source": "mnist", "target": "uci_digits"}], seeds=[0, 1], shots=[1],
        strategies=["finetune"], with_unlabeled={"adabn": ["finetune"]}, methods=["adabn", "coral"], source={"epochs": 1}, adapt={"epochs": 1},
        few_shot={"steps": 4, "batch_size": 8}, eval_points=2, lr_candidates=[0.003], workers=2, output=project / "reports" / "benchmark",
    )
    result = benchmark(spec=spec, command="adaptflow benchmark --preset tiny")
    out = project / "reports" / "benchmark"
    report = (out / "report.md").read_text()
    assert "| source only (no adaptation) |" in report and "| coral |" in report and "| from scratch |" in report
    assert "| finetune+adabn |" in report and "| from scratch+adabn |" in report
    assert "- k = 1, best with unlabeled target images too: **finetune+adabn**" in report
    assert "Unsupervised validator `information_maximization`" in report and "![Label efficiency" in report
    for name in ("label_efficiency.png", "time_to_accuracy.png", "features.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG", name
    metrics = read_json(out / "metrics.json")["uci_digits"]
    assert metrics["best_method"] in {"adabn", "coral"} and 0 <= metrics["validator"]["agreement"] <= 1
    assert metrics["time_to_accuracy_k1_summary"]["finetune"]["seeds"] == 2 and "| finetune | " in report
    assert "- k = 1, learning rate picked by the validator on both sides: best transfer strategy **finetune**" in report
    picked = metrics["lr_selection"]["1"]
    assert set(picked) == {"scratch", "finetune"} and picked["finetune"]["per_lr"].keys() == {"0.001", "0.003"}

    client = MlflowClient(env.default_tracking_uri())
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == result["cells"] == len(plan_cells(spec))
    assert all("target_accuracy" in c.data.metrics for c in children)
    assert {a.path for a in client.list_artifacts(parent.info.run_id)} >= {"report.md", "metrics.json", "label_efficiency.png"}

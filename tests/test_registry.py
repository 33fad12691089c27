"""The MLflow registry: a loadable model with lineage, the champion gate, idempotent registration."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptflow import tracking
from adaptflow.config import RegistryConfig, TrackingConfig
from adaptflow.models import build_classifier, save_checkpoint
from adaptflow.weights import fetch_pretrained

REG = RegistryConfig(model_name="digits")
TRACK = TrackingConfig()


def _checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    save_checkpoint(path, build_classifier("resnet18", 3), arch="resnet18", classes=("cat", "dog", "owl"), image_size=16)
    return path


def _register(tmp: Path, seed: int, accuracy: float):
    run_id = tracking.start_run(TRACK, f"run-{seed}", {"data_version": f"md5-{seed}"}, {"seed": seed})
    return tracking.register_model(REG, TRACK, run_id, _checkpoint(tmp / f"m{seed}.pt", seed),
                                   {"target_accuracy": accuracy}, {"data_version": f"md5-{seed}", "git_commit": "abc"})


def _champion_version() -> str:
    return str(tracking.client(TRACK).get_model_version_by_alias("digits", "champion").version)


def test_gate_promotes_only_a_better_model(project: Path) -> None:
    first = _register(project, 1, 0.80)
    assert (first.alias, first.decision) == ("champion", "promoted")
    worse = _register(project, 2, 0.70)
    assert (worse.alias, worse.decision) == ("challenger", "kept champion")
    assert "does not beat champion v1" in worse.reason
    assert _champion_version() == first.version
    better = _register(project, 3, 0.90)
    assert better.alias == "champion" and _champion_version() == better.version


def test_min_delta_is_required_margin(project: Path) -> None:
    global REG
    _register(project, 1, 0.80)
    REG, saved = RegistryConfig(model_name="digits", min_delta=0.05), REG
    try:
        assert _register(project, 2, 0.83).alias == "challenger"
        assert _register(project, 3, 0.86).alias == "champion"
    finally:
        REG = saved


def test_registering_the_same_run_twice_creates_one_version(project: Path) -> None:
    run_id = tracking.start_run(TRACK, "once", {}, {})
    ckpt = _checkpoint(project / "m.pt", 0)
    a = tracking.register_model(REG, TRACK, run_id, ckpt, {"target_accuracy": 0.5}, {})
    b = tracking.register_model(REG, TRACK, run_id, ckpt, {"target_accuracy": 0.5}, {})
    assert a.version == b.version
    assert len(tracking.client(TRACK).search_model_versions("name='digits'")) == 1


def test_champion_loads_from_models_uri_and_predicts_any_batch(project: Path) -> None:
    import mlflow

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = _register(project, 1, 0.8)
    assert not [w for w in caught if issubclass(w.category, UserWarning) and "mlflow" in w.filename], "logging the model warned"
    mv = tracking.client(TRACK).get_model_version("digits", reg.version)
    assert mv.tags["adaptflow.data_version"] == "md5-1" and mv.tags["adaptflow.git_commit"] == "abc"
    model = mlflow.pyfunc.load_model("models:/digits@champion")
    for shape in [(5, 16, 16, 3), (2, 40, 30, 3)]:
        out = model.predict(np.random.default_rng(0).integers(0, 255, shape, dtype=np.uint8))
        assert len(out) == shape[0] and set(out["class"]) <= {"cat", "dog", "owl"}
        assert ((out["score"] > 0) & (out["score"] <= 1)).all()
    assert model.metadata.get_output_schema().input_names() == list(out.columns) == ["index", "class", "score"]


def test_models_uri_resolves_to_the_registered_checkpoint(project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    from adaptflow.io import sha256_file

    reg = _register(project, 1, 0.8)
    ref = fetch_pretrained("models:/digits@champion", tracking_uri=tracking.tracking_uri(TRACK))
    assert ref.uri == f"models:/digits/{reg.version}"
    assert ref.sha256 == sha256_file(project / "m1.pt")
    assert "Downloading artifacts" not in capfd.readouterr().err, "MLflow's progress bars fill logs with carriage returns"


def test_gate_refuses_an_unknown_metric(project: Path) -> None:
    run_id = tracking.start_run(TRACK, "x", {}, {})
    with pytest.raises(KeyError, match="registry.metric 'target_accuracy'"):
        tracking.register_model(REG, TRACK, run_id, _checkpoint(project / "m.pt", 0), {"accuracy": 0.5}, {})


def test_validation_metrics_gate_only_versions_that_held_out_the_same_images(project: Path) -> None:
    reg = RegistryConfig(model_name="digits", metric="target_val_accuracy", guard_metric=None)

    def register(seed: int, accuracy: float, held_out: str) -> tracking.Registration:
        run_id = tracking.start_run(TRACK, f"run-{seed}", {}, {})
        return tracking.register_model(reg, TRACK, run_id, _checkpoint(project / f"m{seed}.pt", seed),
                                       {"target_val_accuracy": accuracy}, {"validation_digest": held_out})

    assert register(1, 0.99, "").alias == "champion"  # trained with no validation set: perhaps on today's validation images
    unfair = register(2, 0.90, "abc")
    assert (unfair.alias, unfair.decision) == ("challenger", "kept champion")
    assert unfair.reason == ("champion v1 did not hold out this validation set (it may have trained on its images), so "
                             "target_val_accuracy cannot compare the two: gate this run on target_accuracy, or promote it by hand "
                             "(adaptflow registry promote 2)")
    tracking.promote(reg, TRACK, unfair.version, "validated on held-out images")
    assert register(3, 0.85, "abc").reason == "target_val_accuracy 0.8500 does not beat champion v2 (0.9000) by more than 0.0"
    assert register(4, 0.95, "abc").decision == "promoted" and _champion_version() == "4"
    assert "did not hold out this validation set" in register(5, 0.99, "xyz").reason  # another validation set


def test_promote_by_hand_and_roll_back(project: Path) -> None:
    first, second = _register(project, 1, 0.80), _register(project, 2, 0.70)
    assert (first.alias, second.alias) == ("champion", "challenger")
    assert tracking.promote(REG, TRACK, second.version, "better on the new camera") == first.version
    aliases = tracking.client(TRACK).get_registered_model("digits").aliases
    assert aliases == {"champion": int(second.version)}, "the promoted challenger keeps no challenger alias"
    assert tracking.promote(REG, TRACK, second.version, "again") == second.version  # already champion: nothing changes
    assert tracking.rollback(REG, TRACK, "worse in production") == (second.version, first.version)
    assert _champion_version() == first.version
    with pytest.raises(tracking.RegistryError, match="replaced no earlier champion: nothing to roll back to"):
        tracking.rollback(REG, TRACK, "once more")
    with pytest.raises(tracking.RegistryError, match="digits has no version 9"):
        tracking.promote(REG, TRACK, "9", "typo")


def test_lookups_in_a_project_with_nothing_registered_say_so_and_make_no_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from adaptflow.weights import FetchError
    from conftest import use_project

    root = use_project(tmp_path / "fresh", tmp_path / "cache", monkeypatch)
    assert tracking.versions(REG, TRACK) == [] and tracking.champion(REG, TRACK) is None
    with pytest.raises(tracking.RegistryError, match=r"digits has no version 1: nothing is registered yet \(no store at .*mlflow.db\)"):
        tracking.promote(REG, TRACK, "1", "first")
    with pytest.raises(tracking.RegistryError, match="no champion to roll back"):
        tracking.rollback(REG, TRACK, "worse")
    for uri in ("models:/digits/1", "models:/digits@champion"):
        with pytest.raises(FetchError, match=rf"'{uri}': nothing is registered at sqlite:///.*register the model first, or set MLFLOW_TRACKING_URI"):
            fetch_pretrained(uri)
    assert sorted(p.name for p in root.iterdir()) == [], "a lookup made a tracking store"


def test_registry_commands_show_aligned_versions_and_say_what_changed(project: Path) -> None:
    def cli(*args: str) -> str:
        out = subprocess.run([sys.executable, "-m", "adaptflow", "registry", *args, "registry.model_name=digits"],
                             capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout

    _register(project, 1, 0.80)
    _register(project, 2, 0.70)
    assert cli("promote", "2", "--reason", "better on the new camera") == "digits: champion v1 -> v2\n"
    assert cli("promote", "2") == "digits: v2 is already the champion; nothing changed\n"
    header, *rows = cli("list").splitlines()
    assert header.split() == ["version", "aliases", "target_accuracy", "source_accuracy", "data_version", "decision", "reason"]
    assert [row[:header.index("aliases") + 8] for row in rows] == ["2        champion", "1                "]
    assert {row.index("promoted") for row in rows} == {header.index("decision")}, "a column starts at one place in every row"
    assert rows[0].endswith("promoted by hand  better on the new camera")


def test_store_calls_retry_transient_failures_only() -> None:
    import sqlite3

    calls: list[int] = []

    def locked_twice() -> str:
        calls.append(1)
        if len(calls) <= 2:
            raise sqlite3.OperationalError("database is locked")
        return "written"

    assert tracking.retrying(locked_twice, attempts=3, base_delay=0) == "written" and len(calls) == 3
    calls.clear()
    with pytest.raises(tracking.TrackingUnavailable, match=r"after 2 attempts \(locked_twice\): database is locked"):
        tracking.retrying(locked_twice, attempts=2, base_delay=0)
    assert len(calls) == 2

    def wrong() -> None:
        calls.append(1)
        raise ValueError("no such experiment")

    calls.clear()
    with pytest.raises(ValueError, match="no such experiment"):
        tracking.retrying(wrong, attempts=5, base_delay=0)
    assert len(calls) == 1


def test_each_version_s_alias_tag_follows_the_alias(project: Path) -> None:
    """The `adaptflow.alias` tag a version carries says what it is now, not what it was when registered."""
    def alias_tags() -> dict[str, str]:
        c = tracking.client(TRACK)
        return {str(v.version): v.tags["adaptflow.alias"] for v in c.search_model_versions("name='digits'")}

    first, second, third = _register(project, 1, 0.80), _register(project, 2, 0.70), _register(project, 3, 0.75)
    assert alias_tags() == {first.version: "champion", second.version: "former challenger", third.version: "challenger"}
    fourth = _register(project, 4, 0.90)  # beats the champion: the old one no longer says champion
    assert alias_tags()[first.version] == "former champion" and alias_tags()[fourth.version] == "champion"
    tracking.promote(REG, TRACK, third.version, "by hand")
    assert alias_tags()[fourth.version] == "former champion" and alias_tags()[third.version] == "champion"
    tracking.rollback(REG, TRACK, "worse in production")
    assert alias_tags()[third.version] == "rolled back" and alias_tags()[fourth.version] == "champion"


def test_tracking_modules_import_only_layers_below_them() -> None:
    """lineage and gate (no MLflow) < store < runs < registry < packaging; only packaging imports the serving code."""
    import ast

    from conftest import REPO

    layers = ["lineage", "gate", "store", "runs", "registry", "packaging"]
    serving = {"adaptflow.serving", "adaptflow.detection.serving", "adaptflow.text.serving"}
    for rank, name in enumerate(layers):
        tree = ast.parse((REPO / "adaptflow" / "tracking" / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        imported |= {f"{n.module}.{a.name}" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module for a in n.names}
        inside = {m.split(".")[2] for m in imported if m.startswith("adaptflow.tracking.")}
        assert "adaptflow.tracking" not in imported, f"{name}.py imports the package, not a module of it"
        assert inside <= set(layers[:rank]), f"{name}.py imports {sorted(inside - set(layers[:rank]))}, a layer above it"
        assert name == "packaging" or not imported & serving, f"{name}.py imports serving code"

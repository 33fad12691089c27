"""The run config: params.yaml is its serialized form, and bad input names the field and the fix."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from adaptflow.config import ConfigError, RunConfig, load_config

REPO = Path(__file__).resolve().parents[1]


def test_params_yaml_is_the_serialized_default_config() -> None:
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert RunConfig.model_validate(on_disk).model_dump(mode="json") == on_disk
    assert RunConfig.model_validate(on_disk) == RunConfig()


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_complete_so_dvc_tracks_every_key(path: Path) -> None:
    on_disk = yaml.safe_load(path.read_text())
    assert RunConfig.model_validate(on_disk).model_dump(mode="json") == on_disk, (
        f"{path.name} is missing keys; rewrite it with adaptflow.config.dump_params(load_config(path), path, header)")


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  epochs: 7\n")
    cfg = load_config(path, ["finetune.lr=0.01", "data.labeled_per_class=5", "finetune.augment=true", "pretrained.sha256="])
    assert cfg.finetune.epochs == 7
    assert cfg.finetune.lr == pytest.approx(0.01)
    assert cfg.data.labeled_per_class == 5
    assert cfg.finetune.augment is True
    assert cfg.pretrained.sha256 is None


def test_every_training_setting_reaches_the_training_loop() -> None:
    from adaptflow.training import TrainSettings

    cfg = load_config(None, ["finetune.target_batch_size=64", "finetune.surgical_blocks=3", "finetune.strategy=surgical",
                             "finetune.augment=true", "finetune.low_resolution=0.5", "finetune.l2sp=0.1"])
    settings: TrainSettings = cfg.finetune  # the section is the loop's settings, passed to it as it is
    assert (settings.target_batch_size, settings.surgical_blocks, settings.strategy, settings.l2sp) == (64, 3, "surgical", 0.1)
    assert (settings.augment, settings.low_resolution) == (True, 0.5)


def test_low_resolution_needs_augmentation_and_a_classifier() -> None:
    with pytest.raises(ConfigError, match="finetune.low_resolution=0.5: it is part of augmentation: set finetune.augment=true too, "
                                          "or finetune.low_resolution=0"):
        load_config(None, ["finetune.low_resolution=0.5"])
    with pytest.raises(ConfigError, match=r"pretrain.low_resolution: Input should be less than or equal to 1 \(got 1.5\)"):
        load_config(None, ["pretrain.low_resolution=1.5"])
    assert load_config(None, ["pretrain.low_resolution=0.5"]).pretrain.low_resolution == 0.5  # pretrain augments by default


def test_unknown_key_names_the_field_and_suggests_the_fix() -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, ["finetune.epoch=3"])
    assert "finetune.epoch: unknown field (did you mean 'epochs'?)" in str(err.value)


def test_unknown_section_is_rejected() -> None:
    with pytest.raises(ConfigError, match="trainer: unknown field"):
        load_config(None, ["trainer.epochs=3"])


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ("finetune.epochs=0", "finetune.epochs"),
        ("finetune.strategy=magic", "finetune.strategy"),
        ("finetune.arch=vgg_nonexistent", "finetune.arch"),
        ("finetune.device=gpu0", "finetune.device"),
        ("pretrained.sha256=abc", "pretrained.sha256"),
        ("data.image_size=2", "data.image_size"),
        ("finetune.lp_epochs=20", "finetune"),
        ("finetune.surgical_blocks=0", "finetune.surgical_blocks"),
        ("finetune.target_batch_size=-1", "finetune.target_batch_size"),
    ],
)
def test_bad_values_name_their_field(override: str, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert f"  {field}:" in str(err.value)


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="nope.yaml: no such config file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml: the top level must be a mapping"):
        load_config(bad)
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        load_config(None, ["finetune.epochs"])


def _yaml_readers(folder: Path) -> dict:
    """Each YAML file a user writes, by name, and the call that reads it from `folder`."""
    from adaptflow.benchmark import load_preset
    from adaptflow.config import DataConfig
    from adaptflow.detection.data import read_names
    from adaptflow.versioning import read_version

    return {"config.yaml": lambda: load_config(folder / "config.yaml"), "preset.yaml": lambda: load_preset(folder / "preset.yaml"),
            "data.yaml": lambda: read_names(folder), "data.dvc": lambda: read_version(DataConfig(root=str(folder / "data")))}


def test_yaml_a_user_writes_is_refused_naming_the_file_or_option_and_the_line(tmp_path: Path) -> None:
    from adaptflow.sweep.plan import parse_grid

    unclosed = "expected ',' or ']', but got '<stream end>'; fix it, or quote a value meant as text"
    calls = _yaml_readers(tmp_path)
    for name in calls:
        (tmp_path / name).write_text("outs:\n- md5: [abc\n")
    for name, call in calls.items():
        with pytest.raises(ConfigError) as err:
            call()
        assert str(err.value) == f"{tmp_path / name}: not valid YAML (line 3, column 1): {unclosed}"
    with pytest.raises(ConfigError, match=rf"^override 'finetune.methods=\[coral': not valid YAML \(line 1, column 7\): {re.escape(unclosed)}$"):
        load_config(None, ["finetune.methods=[coral"])
    with pytest.raises(ConfigError, match=r"^--grid 'finetune.lr=\[1e-3': not valid YAML \(line 1, column 6\)"):
        parse_grid(["finetune.lr=[1e-3"])

    (tmp_path / "data.yaml").write_text("- a\n- b\n")  # YAML, but not the mapping with names: a dataset file is
    with pytest.raises(ValueError, match="data.yaml: `names:` is missing or empty"):
        calls["data.yaml"]()


def test_a_yaml_file_that_is_a_folder_or_not_text_is_refused_naming_it(tmp_path: Path) -> None:
    folders, binary = tmp_path / "folders", tmp_path / "binary"
    for root, make in ((folders, Path.mkdir), (binary, lambda path: path.write_bytes(b"names: \xff\xfe\x00"))):
        root.mkdir()
        for name, call in _yaml_readers(root).items():
            make(root / name)
            with pytest.raises(ConfigError) as err:
                call()
            assert str(err.value) == (f"{root / name}: a folder, not a file; name the file inside it" if root == folders else
                                      f"{root / name}: not UTF-8 text (byte 0xff at offset 7); save it as UTF-8")


def test_digest_changes_with_the_config() -> None:
    assert RunConfig().digest() == RunConfig().digest()
    assert RunConfig().digest() != load_config(None, ["finetune.epochs=30"]).digest()


def test_a_stage_refuses_the_loop_settings_it_does_not_offer_and_leaves_them_out_of_its_yaml() -> None:
    with pytest.raises(ConfigError, match=r"  pretrain: strategy: unknown field; remove it \(known: epochs, "):
        load_config(None, ["pretrain.strategy=lp_ft"])
    cfg = load_config(None, [])
    assert "strategy" not in cfg.model_dump()["pretrain"] and cfg.model_dump()["finetune"]["strategy"] == "lp_ft"
    assert (cfg.pretrain.strategy, cfg.pretrain.backbone_lr_scale, cfg.pretrain.methods) == ("finetune", 1.0, [])  # trains everything
    assert "strategy" not in RunConfig.model_json_schema()["$defs"]["PretrainConfig"]["properties"]


def test_a_benchmark_budget_is_an_overlay_validated_by_the_training_settings() -> None:
    from adaptflow.benchmark.spec import BUDGET_BASE, BenchmarkSpec, Budget

    with pytest.raises(ValidationError, match=r"few_shot\n.*lr: Input should be less than or equal to 10 \(got 50\)"):
        BenchmarkSpec(few_shot={"lr": 50})
    with pytest.raises(ValidationError, match=r"weight_decy: unknown field \(did you mean 'weight_decay'\?\)"):
        Budget(weight_decy=0.1)
    budget = Budget(weight_decay=0.01, epochs=3)
    settings = budget.settings(seed=4, strategy="lp_ft", lp_epochs=1)
    assert (settings.weight_decay, settings.epochs, settings.lr, settings.augment, settings.seed) == (0.01, 3, BUDGET_BASE["lr"], True, 4)
    # the keys a budget is stored under (cache keys of benchmark cells): the base's, then only what differs from the defaults
    assert Budget().model_dump() == {"steps": 0, **BUDGET_BASE} and list(Budget().model_dump())[:2] == ["epochs", "steps"]
    assert budget.model_dump() == {"steps": 0, **BUDGET_BASE, "epochs": 3, "weight_decay": 0.01}

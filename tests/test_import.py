"""Your own data, right the first time: folders laid out your way become a dataset of the project with
one command, checked before any model exists, trained and registered under its own name, with a lineage
that adding another dataset does not move."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import TINY


def _cli(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "adaptflow", *args], cwd=project, capture_output=True, text=True, timeout=300)


def _their_layout(project: Path, tmp_path: Path) -> tuple[Path, Path]:
    """The project's digits laid out as someone else's dataset: split folders with other names, unlabeled
    images in one flat folder, and a split that needs mapping by hand (`held_out`)."""
    data = project / "data"
    target, source = tmp_path / "my-scans", tmp_path / "old-camera"
    shutil.copytree(data / "uci_digits" / "train", target / "train_labeled")
    shutil.copytree(data / "uci_digits" / "test", target / "testing")
    (target / "train_unlabeled").mkdir()
    for image in sorted((data / "uci_digits" / "unlabeled").rglob("*.png")):
        shutil.copy(image, target / "train_unlabeled" / f"{image.parent.name}-{image.name}")
    shutil.copytree(data / "mnist" / "train", source / "training")
    shutil.copytree(data / "mnist" / "test", source / "held_out")
    return target, source


def test_folders_of_another_layout_become_a_dataset_that_trains_and_registers_under_its_name(project: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.config import load_config
    from adaptflow.pipeline import retrain_decision, run_pretrain, run_transfer
    from adaptflow.versioning import version_data

    target, source = _their_layout(project, tmp_path)
    refused = _cli(project, "data", "import", str(target), "--name", "scans", "--source", str(source))
    assert refused.returncode == 3 and "held_out'] are no split the pipeline knows; name each with --split held_out=" in refused.stderr
    assert not (project / "data" / "scans").exists() and not (project / "configs" / "scans.yaml").exists()

    made = _cli(project, "data", "import", str(target), "--name", "scans", "--source", str(source), "--split", "held_out=test",
                "finetune.arch=small_cnn")
    assert made.returncode == 0, made.stderr
    assert "adaptflow run pretrain -c configs/scans.yaml" in made.stdout and "adaptflow run transfer -c configs/scans.yaml" in made.stdout
    assert sorted(p.name for p in (project / "data" / "scans").iterdir()) == ["test", "train", "unlabeled"]
    assert sorted(p.name for p in (project / "data" / "scans-source").iterdir()) == ["test", "train"]
    cfg = load_config(project / "configs" / "scans.yaml", TINY)
    assert (cfg.data.target, cfg.data.source, cfg.registry.model_name) == ("scans", "scans-source", "scans")
    assert (cfg.pretrain.arch, cfg.pretrained.uri) == ("small_cnn", "models/scans-source/model.pt")  # the linked paths agree

    # The data is checked before the source model exists; the full check says what is missing.
    assert _cli(project, "validate", "-c", "configs/scans.yaml", "--data-only").returncode == 0
    full = _cli(project, "validate", "-c", "configs/scans.yaml")
    assert full.returncode == 3 and "models/scans-source/model.pt" in full.stderr

    data = version_data(cfg.data)
    run_pretrain(cfg, project / "runs" / "pretrain", data)
    run_transfer(cfg, project / "runs" / "scans")
    client = MlflowClient(env.default_tracking_uri())
    first = client.get_model_version_by_alias("scans", "champion")
    assert first.tags["adaptflow.source_domain"] == "scans-source" and first.tags["adaptflow.target_domain"] == "scans"

    # A second dataset lands under the same data root: the first one's lineage and retraining do not move.
    again = _cli(project, "data", "import", str(target), "--name", "scans2", "finetune.arch=small_cnn")
    assert again.returncode == 0, again.stderr
    assert load_config(project / "configs" / "scans2.yaml").pretrained.uri == "scratch"  # small_cnn has no published weights
    train, reason = retrain_decision(cfg, version_data(cfg.data))
    assert not train and "domains scans, scans-source unchanged" in reason
    # ... while new images in its own target do.
    inbox = tmp_path / "inbox"
    for cls in (source / "training").iterdir():
        (inbox / cls.name).mkdir(parents=True)
        shutil.copy(sorted(cls.iterdir())[0], inbox / cls.name)
    added = _cli(project, "data", "add", str(inbox), "-c", "configs/scans.yaml")
    assert added.returncode == 0 and "images to scans/train" in added.stdout, added.stderr
    train, reason = retrain_decision(cfg, version_data(cfg.data))
    assert train and reason.startswith("target domain changed since champion v1"), reason


def test_an_import_that_fails_its_check_leaves_nothing_behind(project: Path, tmp_path: Path, bad_inputs) -> None:
    target, _ = _their_layout(project, tmp_path)
    broken = next((target / "testing").rglob("*.png"))
    broken.write_bytes(b"not a png")
    with bad_inputs.attempt():
        result = _cli(project, "data", "import", str(target), "--name", "scans")
        assert result.returncode == 3 and "nothing was imported" in result.stderr and broken.name in result.stderr
    assert not (project / "data" / "scans").exists() and not (project / "configs" / "scans.yaml").exists()
    assert not [p for p in (project / "data").iterdir() if p.name.startswith(".import")]
    for args, message in ((["--name", "../up"], "--name '../up': use letters"),
                          (["--name", "uci_digits"], "uci_digits exists; choose another --name")):
        with bad_inputs.attempt():
            result = _cli(project, "data", "import", str(target), *args)
            assert result.returncode == 3 and message in result.stderr, result.stderr


@pytest.mark.parametrize("mapping", ["train_labeled=nowhere", "train_labeled"])
def test_a_wrong_split_mapping_says_how_to_write_it(project: Path, tmp_path: Path, mapping: str) -> None:
    target, _ = _their_layout(project, tmp_path)
    result = _cli(project, "data", "import", str(target), "--name", "scans", "--split", mapping)
    assert result.returncode == 3
    assert ("the splits are train, unlabeled, test, val" in result.stderr) or ("write THEIRS=OURS" in result.stderr), result.stderr


def test_data_pointer_files_do_not_make_the_code_commit_dirty(tmp_path: Path) -> None:
    """Adding data rewrites data.dvc: the models of every dataset would be tagged `-dirty` though no code changed."""
    from adaptflow.tracking.lineage import git_commit
    from conftest import run

    run(["git", "init", "-q"], tmp_path)
    for name, text in {"data.dvc": "md5: 1\n", "dvc.lock": "1\n", "code.py": "x = 1\n"}.items():
        (tmp_path / name).write_text(text)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "init"], tmp_path)
    clean = git_commit(tmp_path)
    (tmp_path / "data.dvc").write_text("md5: 2\n")
    (tmp_path / "dvc.lock").write_text("2\n")
    assert git_commit(tmp_path) == clean and not clean.endswith("-dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert git_commit(tmp_path) == f"{clean}-dirty"

"""The demo domains: real data, the documented splits, and byte-identical rebuilds."""

from __future__ import annotations

import hashlib
import os
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml

from adaptflow.data import DEMO_DOMAINS, DataChangedError, build_all, ensure_domains
from adaptflow.data.demo import build_demo_data
from adaptflow.data.folders import load_image_folder
from conftest import REPO, init_dvc_repo, run


def _dvc_md5(root: Path) -> str:
    run([sys.executable, "-m", "dvc", "add", "data"], root)
    return yaml.safe_load((root / "data.dvc").read_text())["outs"][0]["md5"]


def test_full_build_is_deterministic_and_matches_committed_data_dvc(tmp_path: Path) -> None:
    # data.dvc's hash was recorded by an earlier build: matching it is the same bytes built twice
    root = tmp_path
    init_dvc_repo(root)
    build_all(root / "data")
    recorded = yaml.safe_load((REPO / "data.dvc").read_text())["outs"][0]["md5"]
    assert _dvc_md5(root) == recorded
    data = root / "data"
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == sorted(DEMO_DOMAINS)

    # a rebuild keeps what the user added: a missing domain is built alone, a changed one is not replaced
    added = data / "uci_digits" / "train" / "3" / "added-0123456789abcdef.png"
    shutil.copy(data / "uci_digits" / "unlabeled" / "3" / sorted(os.listdir(data / "uci_digits" / "unlabeled" / "3"))[0], added)
    shutil.rmtree(data / "photo_scenes")
    assert ensure_domains(data, list(DEMO_DOMAINS)) == ["photo_scenes"] and added.is_file()
    with pytest.raises(DataChangedError, match=rf"(?s)build does not write .*\n  {data / 'uci_digits'}: 1 file\(s\), e\.g\. "
                                               rf"train/3/{added.name}\nnothing was changed; .* `adaptflow data build --force`"):
        build_all(data, ["uci_digits"])
    assert added.is_file() and not [p for p in root.iterdir() if p.name.startswith(".data-build-")], "no build folder is left"
    build_all(data, ["uci_digits"], force=True)
    assert not added.exists() and _dvc_md5(root) == recorded, "--force restores the recorded data"

    assert len(list((data / "mnist" / "train").rglob("*.png"))) == 4000
    assert len(list((data / "mnist" / "test").rglob("*.png"))) == 1000
    assert len(list((data / "uci_digits" / "train").rglob("*.png"))) == 100  # 10 labeled per class
    assert len(list((data / "uci_digits" / "test").rglob("*.png"))) == 800
    assert len(list((data / "uci_digits" / "unlabeled").rglob("*.png"))) == 1797 - 900
    for domain, splits in {"mnist_scenes": {"train": 800, "test": 200}, "photo_scenes": {"train": 60, "unlabeled": 600, "test": 300}}.items():
        for split, count in splits.items():
            assert len(list((data / domain / split / "images").iterdir())) == count == len(list((data / domain / split / "labels").iterdir()))
    for split, count in {"train": 100, "unlabeled": 2000, "test": 800}.items():
        assert len(list((data / "mnist_m" / split).rglob("*.png"))) == count


def test_mnist_m_blends_digits_onto_photos_split_by_photo() -> None:
    import numpy as np

    from adaptflow.data.demo import PHOTOS, blend_on_photos, load_mnist_5k

    assert not set(PHOTOS["train"]) & set(PHOTOS["test"])
    digits, _ = load_mnist_5k()
    first = blend_on_photos(digits, np.arange(20), "test", seed=1)
    assert first.shape == (20, 28, 28, 3) and first.dtype == np.uint8
    assert np.array_equal(first[5:], blend_on_photos(digits, np.arange(5, 20), "test", seed=1))  # per-image seeding
    assert not np.array_equal(first, blend_on_photos(digits, np.arange(20), "train", seed=1))


def test_target_splits_are_disjoint_and_class_balanced(tmp_path: Path) -> None:
    build_demo_data(tmp_path, labeled_per_class=3, target_test_per_class=5, limit_per_class=8)
    names = {split: {p.name for p in (tmp_path / "uci_digits" / split).rglob("*.png")} for split in ("train", "unlabeled", "test")}
    assert not names["train"] & names["unlabeled"]
    assert not names["train"] & names["test"]
    assert not names["unlabeled"] & names["test"]
    per_class = {c.name: len(list(c.iterdir())) for c in (tmp_path / "uci_digits" / "train").iterdir()}
    assert per_class == {str(i): 3 for i in range(10)}


def test_folder_loads_once_into_tensors_and_caches_by_content(project: Path) -> None:
    folder = project / "data" / "uci_digits" / "train"
    first = load_image_folder(folder, 16)
    assert first.images.dtype == torch.uint8 and first.images.shape == (40, 3, 16, 16)
    assert first.classes == tuple(str(i) for i in range(10))
    cached = list((project.parent / "cache" / "images").glob("*.pt"))
    assert len(cached) == 1
    again = load_image_folder(folder, 16)
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    # mapped from the cache file, not read into memory (processes on one machine share the pages)...
    assert str(cached[0]) in Path("/proc/self/maps").read_text()
    # ...privately: a change to the loaded tensor stays in this process, never reaches the cache
    again.images[0] = 255 - again.images[0]
    assert torch.equal(load_image_folder(folder, 16).images, first.images)
    # Changing one file's content changes the key: a new entry, never a stale hit.
    victim = next((folder / "3").iterdir())
    victim.write_bytes((folder / "4" / next((folder / "4").iterdir()).name).read_bytes())
    changed = load_image_folder(folder, 16)
    assert len(list((project.parent / "cache" / "images").glob("*.pt"))) == 2
    assert not torch.equal(changed.images, first.images)


def test_per_class_subset_is_seeded_and_balanced(project: Path) -> None:
    data = load_image_folder(project / "data" / "uci_digits" / "train", 16)
    two = data.per_class(2, seed=1)
    assert torch.bincount(two.labels).tolist() == [2] * 10
    assert torch.equal(two.images, data.per_class(2, seed=1).images)
    assert data.per_class(None) is data


def test_held_out_labels_are_a_seeded_share_of_each_class_and_leave_the_rest_to_train(project: Path) -> None:
    data = load_image_folder(project / "data" / "uci_digits" / "train", 16)  # 4 labeled images a class
    rest, held = data.hold_out(0.4, seed=4)  # 1.6 rounds to 2
    assert torch.bincount(held.labels).tolist() == [2] * 10 and torch.bincount(rest.labels).tolist() == [2] * 10
    images = lambda s: sorted(x.tobytes() for x in s.images.numpy())  # noqa: E731 - the set's images, as a multiset
    assert images(rest.concat(held)) == images(data)  # disjoint, and all of it
    assert torch.equal(held.images, data.hold_out(0.4, seed=4)[1].images)
    assert not torch.equal(held.images, data.hold_out(0.4, seed=5)[1].images)
    assert torch.bincount(data.hold_out(0.01)[1].labels).tolist() == [1] * 10  # at least one
    assert torch.bincount(data.hold_out(0.99)[0].labels).tolist() == [1] * 10  # at least one left to train on
    with pytest.raises(ValueError, match=r"class '0' has 1 labeled image\(s\): holding one out would leave none to train on"):
        data.per_class(1).hold_out(0.2)


def test_a_validation_share_is_held_out_of_fine_tuning_whatever_the_seed(project: Path) -> None:
    from adaptflow.data import target_labels, target_validation
    from adaptflow.finetune import training_sets
    from conftest import tiny_config

    images = lambda s: {x.tobytes() for x in s.images.numpy()}  # noqa: E731 - the set's images
    cfg = tiny_config("data.val_fraction=0.25", "data.labeled_per_class=2")  # 4 labeled images a class: 1 validates
    train, val = target_labels(cfg.data)
    assert torch.bincount(val.labels).tolist() == [1] * 10 and torch.bincount(train.labels).tolist() == [3] * 10
    assert images(target_validation(cfg.data, train.classes)) == images(val)
    for seed in (0, 1):
        labeled, _ = training_sets(cfg.finetune.model_copy(update={"seed": seed}), cfg.data)
        assert len(labeled) == 20 and not images(labeled) & images(val)
        assert images(target_labels(cfg.data)[1]) == images(val)  # the same images for every run
    assert target_validation(tiny_config().data, train.classes) is None

    shutil.copytree(project / "data" / "uci_digits" / "test", project / "data" / "uci_digits" / "val")
    train, val = target_labels(tiny_config().data)
    assert (len(train), len(val)) == (40, 60)
    with pytest.raises(ValueError, match=r"uci_digits/val: the target has a validation folder and data.val_fraction=0.25 .*"
                                         r"set data.val_fraction=0 to validate on the folder"):
        target_labels(cfg.data)


def test_missing_domains_are_built_only_when_they_are_the_demos(tmp_path: Path) -> None:
    from adaptflow.data import ensure_domains

    (tmp_path / "mine" / "train").mkdir(parents=True)
    assert ensure_domains(tmp_path, ["mine"]) == []  # present: nothing built
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'factory'}: no such domain folder"):
        ensure_domains(tmp_path, ["mine", "factory", "mnist"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"], "nothing is built when a domain cannot be"


def test_data_add_checks_everything_first_and_names_images_by_content(project: Path, tmp_path: Path) -> None:
    from adaptflow.data.ingest import add_images
    from adaptflow.validate import DataValidationError

    split = project / "data" / "uci_digits" / "train"
    inbox = tmp_path / "inbox"
    for cls in ("3", "7"):
        (inbox / cls).mkdir(parents=True)
        for image in sorted((project / "data" / "uci_digits" / "unlabeled" / cls).iterdir())[:2]:
            shutil.copy(image, inbox / cls / image.name)
    before = sorted(split.rglob("*.png"))
    assert add_images(inbox, split) == {"3": 2, "7": 2}
    assert add_images(inbox, split) == {}  # the same images again add nothing
    added = sorted(set(split.rglob("*.png")) - set(before))
    assert [p.parent.name for p in added] == ["3", "3", "7", "7"] and all(p.name.startswith("added-") for p in added)

    (inbox / "11").mkdir()
    shutil.copy(added[0], inbox / "11" / "new.png")
    (inbox / "7" / "broken.png").write_bytes(b"not an image")
    with pytest.raises(DataValidationError) as caught:
        add_images(inbox, split)
    message = str(caught.value)
    assert message.startswith("2 problem(s) in the new images; nothing was added:\n")
    assert f"{inbox / '11'}: class '11' is not in the training split" in message and f"{inbox / '7' / 'broken.png'}: corrupt" in message
    assert set(split.rglob("*.png")) == set(before) | set(added), "nothing is copied when anything is wrong"
    with pytest.raises(DataValidationError, match=r"nothing was added:\n  - .*/nowhere: no such folder; give the folder of the new labeled images \(CLASS/IMAGE\)"):
        add_images(tmp_path / "nowhere", split)


def test_data_add_keeps_labeled_splits_apart_and_never_adds_an_image_twice(project: Path, tmp_path: Path, monkeypatch) -> None:
    from adaptflow.data import ingest
    from adaptflow.validate import DataValidationError

    domain = project / "data" / "uci_digits"
    inbox = tmp_path / "inbox"
    (inbox / "4").mkdir(parents=True)
    in_train, in_test, in_unlabeled = (sorted((domain / split / "4").iterdir())[0] for split in ("train", "test", "unlabeled"))
    shutil.copy(in_train, inbox / "4" / "renamed.png")
    shutil.copy(in_test, inbox / "4" / "from-test.png")
    shutil.copy(in_unlabeled, inbox / "4" / "labeled-now.png")
    listing = {split: sorted((domain / split).rglob("*")) for split in ("train", "test", "unlabeled")}
    with pytest.raises(DataValidationError) as caught:
        ingest.add_images(inbox, domain / "train")
    assert str(caught.value).splitlines()[1:] == [
        f"  - {inbox / '4' / 'from-test.png'}: already in the test split ({in_test}); "
        "drop it from the new images: train, val, test must not share an image"]
    assert {split: sorted((domain / split).rglob("*")) for split in listing} == listing, "nothing was added"

    (inbox / "4" / "from-test.png").unlink()
    assert ingest.add_images(inbox, domain / "train") == {"4": 1}, "the image train holds under another name is not added again"
    assert [p.name for p in set((domain / "train").rglob("*.png")) - set(listing["train"])] == [
        f"added-{hashlib.sha256(in_unlabeled.read_bytes()).hexdigest()[:16]}.png"]

    def copy_half(src: Path, dst: Path) -> None:  # a full disk or a kill in the middle of a copy
        Path(dst).write_bytes(Path(src).read_bytes()[:100])
        raise OSError(28, "No space left on device")

    (inbox / "4" / "labeled-now.png").unlink()
    shutil.copy(sorted((domain / "unlabeled" / "4").iterdir())[1], inbox / "4" / "another.png")
    before = sorted((domain / "train" / "4").iterdir())
    monkeypatch.setattr(ingest.shutil, "copyfile", copy_half)
    with pytest.raises(OSError, match="No space left"):
        ingest.add_images(inbox, domain / "train")
    assert sorted((domain / "train" / "4").iterdir()) == before, "no half-written image, and no temporary file, is left"


def test_versioning_pushes_to_the_remote_it_names(project: Path) -> None:
    from adaptflow.config import DataConfig
    from adaptflow.versioning import version_data

    version = version_data(DataConfig())
    assert version.pushed_to == "local" and version.md5.endswith(".dir")
    pushed = project / "remote" / "files" / "md5" / version.md5[:2] / version.md5[2:]
    assert pushed.is_file(), "the folder's listing is in the remote"


def test_versioning_to_a_remote_that_is_not_there_names_the_field_and_versions_nothing(project: Path) -> None:
    import subprocess
    import sys

    from adaptflow.config import ConfigError, DataConfig
    from adaptflow.versioning import version_data

    dvc_file = (project / "data.dvc").read_bytes()
    (project / "data" / "mnist" / "train" / "0" / "added.png").write_bytes(
        (next((project / "data" / "mnist" / "train" / "1").glob("*.png"))).read_bytes())  # the data changed since data.dvc
    with pytest.raises(ConfigError) as caught:
        version_data(DataConfig(remote="nope"))
    assert str(caught.value) == (f"data.remote: 'nope' is not a DVC remote of {project} (remotes: local ({project / 'remote'})); "
                                 "set data.remote to one of them, or add it: dvc remote add nope URL")
    subprocess.run([sys.executable, "-m", "dvc", "remote", "default", "--unset"], cwd=project, check=True)
    with pytest.raises(ConfigError, match=r"data.remote: not set, and .* has no default DVC remote to push the data version to "
                                          r"\(remotes: local \(.*\)\); set data.remote, or add one: dvc remote add -d NAME URL"):
        version_data(DataConfig())
    assert (project / "data.dvc").read_bytes() == dvc_file, "nothing was added to DVC"
    assert version_data(DataConfig(remote="local")).pushed_to == "local"  # a named remote needs no default

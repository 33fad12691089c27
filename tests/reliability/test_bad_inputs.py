"""A corpus of bad inputs: each is stopped before any compute, named with its file and fix,
and leaves nothing trained or registered."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adaptflow.config import ConfigError, load_config
from adaptflow.validate import Report, check_yolo_labels
from conftest import TINY

TARGET = Path("data/uci_digits")
SOURCE = Path("data/mnist")


def _first(folder: Path) -> Path:
    return sorted(p for p in folder.rglob("*.png"))[0]


def _png(mode: str, size: tuple[int, int] = (8, 8), value: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, value).save(buf, format="PNG" if mode != "CMYK" else "JPEG")
    return buf.getvalue()


def _publish_pretrained(root: Path, obj: object) -> str:
    path = root / "weird.pt"
    torch.save(obj, path)
    return "weird.pt"


# Each case: (id, make(root) -> list of overrides, expected fragments of the message)
Case = tuple[str, Callable[[Path], list[str]], list[str]]


def _corrupt(root: Path) -> list[str]:
    _first(root / TARGET / "train").write_bytes(b"\x89PNG\r\n\x1a\n this is not a png")
    return []


def _truncated(root: Path) -> list[str]:
    path = _first(root / TARGET / "test")
    path.write_bytes(path.read_bytes()[:40])
    return []


def _empty_file(root: Path) -> list[str]:
    _first(root / SOURCE / "train").write_bytes(b"")
    return []


def _non_image(root: Path) -> list[str]:
    (root / TARGET / "train" / "3" / "notes.txt").write_text("labels were checked by Bob")
    return []


def _empty_class(root: Path) -> list[str]:
    for p in (root / TARGET / "train" / "5").iterdir():
        p.unlink()
    return []


def _unknown_test_class(root: Path) -> list[str]:
    (root / TARGET / "test" / "cat").mkdir()
    shutil.copy(_first(root / TARGET / "test"), root / TARGET / "test" / "cat" / "a.png")
    return []


def _rgba(root: Path) -> list[str]:
    (root / TARGET / "train" / "2" / "rgba.png").write_bytes(_png("RGBA"))
    return []


def _cmyk(root: Path) -> list[str]:
    (root / TARGET / "test" / "2" / "cmyk.jpg").write_bytes(_png("CMYK"))
    return []


def _sixteen_bit(root: Path) -> list[str]:
    (root / SOURCE / "test" / "1" / "deep.png").write_bytes(_png("I;16", value=40000))
    return []


def _huge(root: Path) -> list[str]:
    Image.new("L", (7000, 7000)).save(root / TARGET / "train" / "4" / "huge.png")
    return []


def _stray_file(root: Path) -> list[str]:
    shutil.copy(_first(root / TARGET / "train"), root / TARGET / "train" / "loose.png")
    return []


def _nested(root: Path) -> list[str]:
    (root / TARGET / "train" / "6" / "more").mkdir()
    return []


def _missing_split(root: Path) -> list[str]:
    shutil.rmtree(root / TARGET / "test")
    return []


def _no_classes(root: Path) -> list[str]:
    shutil.rmtree(root / SOURCE / "train")
    (root / SOURCE / "train").mkdir()
    return []


def _missing_domain(root: Path) -> list[str]:
    return ["data.target=uci_digitz"]


def _validation_share_of_one_image(root: Path) -> list[str]:
    for p in sorted((root / TARGET / "train" / "3").iterdir())[1:]:
        p.unlink()
    return ["data.val_fraction=0.2"]


def _validation_folder_and_share(root: Path) -> list[str]:
    shutil.copytree(root / TARGET / "test", root / TARGET / "val")
    return ["data.val_fraction=0.2"]


def _without_unlabeled(*items: str) -> Callable[[Path], list[str]]:
    def make(root: Path) -> list[str]:
        shutil.rmtree(root / TARGET / "unlabeled")
        return list(items)

    return make


def _overrides(*items: str) -> Callable[[Path], list[str]]:
    return lambda root: list(items)


def _pickled_module(root: Path) -> list[str]:
    return [f"pretrained.uri={_publish_pretrained(root, torch.nn.Linear(3, 3))}"]


class _Payload:
    def __reduce__(self) -> tuple:
        return exec, ("raise SystemExit('the payload ran')",)


def _pickled_payload(root: Path) -> list[str]:
    return [f"pretrained.uri={_publish_pretrained(root, {'state_dict': _Payload()})}"]


def _not_a_model_file(root: Path) -> list[str]:
    (root / "weird.pt").write_text("weights, I promise")
    return ["pretrained.uri=weird.pt"]


def _wrong_arch_weights(root: Path) -> list[str]:
    import torchvision

    return [f"pretrained.uri={_publish_pretrained(root, torchvision.models.mobilenet_v3_small().state_dict())}", "finetune.arch=resnet18"]


def _inconsistent_head(root: Path) -> list[str]:
    from adaptflow.models import build_classifier, save_checkpoint

    save_checkpoint(root / "bad_head.pt", build_classifier("resnet18", 4), arch="resnet18", classes=tuple("0123456789"), image_size=16)
    return ["pretrained.uri=bad_head.pt"]


def _tampered(root: Path) -> list[str]:
    model = root / "models" / "source" / "model.pt"
    model.write_bytes(model.read_bytes() + b"x")
    return []


CASES: list[Case] = [
    ("corrupt image", _corrupt, ["corrupt or truncated image", "re-export the image or delete it"]),
    ("truncated image", _truncated, ["corrupt or truncated image", "uci_digits/test"]),
    ("empty image file", _empty_file, ["corrupt or truncated image", "mnist/train"]),
    ("non-image file", _non_image, ["notes.txt", "not an image file (.txt)"]),
    ("empty class", _empty_class, ["train/5", "empty class"]),
    ("class only in test", _unknown_test_class, ["class 'cat' is not in the training split"]),
    ("RGBA among grayscale", _rgba, ["mixed image modes", "'RGBA': 1"]),
    ("CMYK among grayscale", _cmyk, ["mixed image modes", "'CMYK': 1"]),
    ("16-bit image", _sixteen_bit, ["deep.png", "I;16 image (16-bit or float)", "set data.window", "convert it to 8-bit"]),
    ("huge image", _huge, ["huge.png", "huge image", "downscale it"]),
    ("file outside class folders", _stray_file, ["loose.png", "file outside any class folder"]),
    ("nested folder", _nested, ["train/6/more", "nested folder"]),
    ("missing split", _missing_split, ["uci_digits/test", "no such split folder"]),
    ("split without classes", _no_classes, ["mnist/train", "no class folders"]),
    ("missing domain", _missing_domain, ["uci_digitz/train", "no such split folder"]),
    ("validation share of a one-image class", _validation_share_of_one_image,
     ["uci_digits/train", "data.val_fraction=0.2 holds out at least one image a class", "'3': 1", "or set data.val_fraction=0"]),
    ("validation folder and share", _validation_folder_and_share, ["uci_digits/val", "set data.val_fraction=0 to validate on the folder"]),
    ("registry metric without a validation set", _overrides("registry.metric=target_val_accuracy"),
     ["uci_digits/val", "registry.metric target_val_accuracy is measured on the target's validation set", "set data.val_fraction"]),
    ("epoch kept by a validation set there is not", _overrides("finetune.keep_epoch=target_val_accuracy"),
     ["uci_digits/val", "finetune.keep_epoch target_val_accuracy is measured on the target's validation set"]),
    ("epoch kept by a validator without unlabeled images", _without_unlabeled("finetune.keep_epoch=mixval"),
     ["uci_digits/unlabeled", "finetune.keep_epoch mixval scores epochs on one", "set finetune.keep_epoch to last"]),
    ("unknown scheme", _overrides("pretrained.uri=s3://bucket/m.pt"), ["pretrained.uri", "unknown scheme"]),
    ("missing pretrained file", _overrides("pretrained.uri=models/none.pt"), ["models/none.pt", "no such file", "run the pretrain step"]),
    ("malformed registry uri", _overrides("pretrained.uri=models:/onlyname"), ["not a registry address", "models:/<name>@<alias>"]),
    ("unknown torchvision weights", _overrides("pretrained.uri=torchvision:resnet18:V9"), ["torchvision has no weights 'V9'"]),
    ("empty uri", _overrides("pretrained.uri=''"), ["pretrained.uri", "is empty"]),
    ("pickled module", _pickled_module, ["weird.pt", "holds pickled Python objects", "pretrained.allow_pickle=true"]),
    ("pickled code in the pretrained file", _pickled_payload,
     ["pretrained.uri", "weird.pt holds pickled Python objects (builtins.exec)", "pretrained.allow_pickle=true"]),
    ("pretrained file that is not a model", _not_a_model_file, ["pretrained.uri", "weird.pt is not a PyTorch model file"]),
    ("malformed digest fragment", _overrides("pretrained.uri=https://host.example/w.pt#sha256=abc"),
     ["pretrained.uri", "the #sha256= fragment 'abc' is not a sha256 digest", "give the file's 64 hexadecimal digits"]),
    ("weights of another architecture", _wrong_arch_weights, ["weird.pt", "do not fit resnet18"]),
    ("head does not fit its classes", _inconsistent_head, ["bad_head.pt", "head has 4 outputs but it lists 10 classes"]),
    ("tampered source model", _tampered, ["model.pt", "the file changed since it was published"]),
]

CONFIG_CASES = [
    ("unknown key", ["finetune.epoch=3"], "finetune.epoch: unknown field (did you mean 'epochs'?)"),
    ("unknown section", ["trainer.lr=1"], "trainer: unknown field"),
    ("negative learning rate", ["finetune.lr=-1"], "finetune.lr: Input should be greater than 0"),
    ("probe longer than training", ["finetune.lp_epochs=20"], "lower finetune.lp_epochs or raise finetune.epochs"),
    ("unknown device", ["finetune.device=tpu"], "finetune.device: Value error, 'tpu' is not a device"),
    ("unknown strategy", ["finetune.strategy=guess"], "finetune.strategy: Input should be 'linear_probe', 'finetune', 'lp_ft', 'discriminative', 'gradual_unfreeze' or 'surgical'"),
    ("surgical on no block", ["finetune.surgical_blocks=0"], "finetune.surgical_blocks: Input should be greater than or equal to 1"),
    ("unknown adaptation method", ["finetune.methods=[adabn, magic]"], "finetune.methods.1: Input should be 'adabn', 'dann', 'coral', 'mcc', 'self_training' or 'shot'"),
    ("adaptation method listed twice", ["finetune.methods=[coral, coral]"], "lists ['coral'] more than once"),
    ("validation share of everything", ["data.val_fraction=1"], "data.val_fraction: Input should be less than 1"),
    ("window the wrong way round", ["data.window.kind=values", "data.window.low=4095", "data.window.high=0"],
     "data.window: window low=4095 must be below high=0; swap them"),
    ("unknown window field", ["data.window.lo=3"], "data.window.lo: unknown field (did you mean 'low'?)"),
    ("window percentiles beyond 100", ["data.window.high=255"], "data.window: window percentiles low=0.5, high=255 must lie in 0..100"),
    ("window on detection", ["task=detection", "pretrain.arch=yolov8n", "finetune.arch=yolov8n", "finetune.strategy=finetune",
                             "registry.metric=target_map50", "registry.guard_metric=source_map50", "data.window.kind=values"],
     "data.window maps a classifier's images onto 8 bits; detectors read their image files themselves"),
    ("validation share on detection", ["task=detection", "pretrain.arch=yolov8n", "finetune.arch=yolov8n", "finetune.strategy=finetune",
                                       "registry.metric=target_map50", "registry.guard_metric=source_map50", "data.val_fraction=0.2"],
     "data.val_fraction counts images per class, which detection scenes do not have; leave it 0"),
    ("epoch kept by validation on detection", ["task=detection", "pretrain.arch=yolov8n", "finetune.arch=yolov8n",
                                               "finetune.strategy=finetune", "registry.metric=target_map50",
                                               "registry.guard_metric=source_map50", "finetune.keep_epoch=mixval"],
     "finetune.keep_epoch mixval scores a classifier's epochs; with task detection set it to last"),
    ("negative pull toward the pretrained weights", ["finetune.l2sp=-0.1"], "finetune.l2sp: Input should be greater than or equal to 0"),
    ("pull toward the pretrained weights on detection", ["task=detection", "pretrain.arch=yolov8n", "finetune.arch=yolov8n",
                                                          "finetune.strategy=finetune", "registry.metric=target_map50",
                                                          "registry.guard_metric=source_map50", "finetune.l2sp=0.1"],
     "finetune.l2sp=0.1 pulls a classifier toward its pretrained weights; detectors train in their own loop without it: set it to 0"),
    ("bad sha256", ["pretrained.sha256=xyz"], "pretrained.sha256: Value error, sha256 must be 64 hexadecimal"),
    ("target domain leading out of data.root", ["data.target=../escape"],
     "data.target: Value error, '../escape' is not a plain folder name (no '..', no '/' or '\\', not absolute); name a folder directly"),
    ("source domain as an absolute path", ["data.source=/tmp/elsewhere"], "data.source: Value error, '/tmp/elsewhere' is not a plain folder name"),
    ("domain name with a separator", ["data.target=uci_digits/../../x"], "data.target: Value error, 'uci_digits/../../x' is not a plain folder name"),
    ("text where a number goes", ["data.image_size=big"], "data.image_size: Input should be a valid integer"),
]

YOLO_CASES = [
    ("missing label file", None, "missing label file for 0.png"),
    ("malformed line", "3 0.5 0.5 0.2\n", "0.txt:1: malformed line"),
    ("non-numeric field", "3 0.5 x 0.2 0.2\n", "(not numbers)"),
    ("class id out of range", "12 0.5 0.5 0.2 0.2\n", "class id 12 out of range 0..9"),
    ("coordinates outside the image", "1 1.5 0.5 0.2 0.2\n", "outside [0, 1]"),
    ("empty box", "1 0.5 0.5 0.0 0.2\n", "outside [0, 1] or empty"),
    ("an image saved as the label", b"\x89PNG\r\n\x1a\n", "0.txt: not a text file (not UTF-8)"),
]


def _assert_nothing_trained_or_registered(root: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env

    assert not list((root / "runs").rglob("model.pt")) if (root / "runs").exists() else True
    if (root / "mlflow.db").exists():
        assert MlflowClient(env.default_tracking_uri()).search_registered_models() == []


@pytest.mark.parametrize(("name", "make", "expected"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_rejected_before_compute(project: Path, bad_inputs, name: str, make, expected: list[str]) -> None:
    from adaptflow.pipeline import run_transfer

    with bad_inputs.attempt():
        overrides = make(project)
        with pytest.raises(Exception) as err:  # noqa: PT011 - the message is what is checked
            run_transfer(load_config(None, [*TINY, *overrides]), project / "runs" / "bad", version=False)
        message = str(err.value)
        for fragment in expected:
            assert fragment in message, f"{name}: '{fragment}' not in:\n{message}"
        _assert_nothing_trained_or_registered(project)


@pytest.mark.parametrize(("name", "overrides", "expected"), CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config_names_the_field(bad_inputs, name: str, overrides: list[str], expected: str) -> None:
    with bad_inputs.attempt():
        with pytest.raises(ConfigError) as err:
            load_config(None, overrides)
        assert expected in str(err.value)


@pytest.mark.parametrize(("name", "content", "expected"), YOLO_CASES, ids=[c[0] for c in YOLO_CASES])
def test_bad_yolo_labels_are_named_with_their_line(tmp_path: Path, bad_inputs, name: str, content: str | bytes | None, expected: str) -> None:
    with bad_inputs.attempt():
        images, labels = tmp_path / "images", tmp_path / "labels"
        images.mkdir()
        labels.mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "0.png")
        if content is not None:
            (labels / "0.txt").write_bytes(content if isinstance(content, bytes) else content.encode())
        report = Report()
        check_yolo_labels(images, labels, 10, report)
        assert not report.ok
        assert any(expected in str(p) for p in report.errors), [str(p) for p in report.errors]


def test_a_clean_yolo_folder_passes(tmp_path: Path) -> None:
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(images / "0.png")
    (labels / "0.txt").write_text("3 0.5 0.5 0.2 0.2\n\n9 0.1 0.1 0.05 0.05\n")
    report = Report()
    check_yolo_labels(images, labels, 10, report)
    assert report.ok


def test_duplicates_warn_but_do_not_stop(project: Path) -> None:
    from adaptflow.validate import validate

    first = _first(project / TARGET / "train")
    shutil.copy(first, first.with_name("copy.png"))
    report = validate(load_config(None, [*TINY, "pretrained.uri=torchvision:resnet18"]))
    assert report.ok and any("duplicate of" in str(w) for w in report.warnings)


def test_short_classes_are_counted_after_the_validation_share(project: Path) -> None:
    from adaptflow.validate import validate

    # 4 labeled images a class; a 0.2 share holds out 1, so 4 a class leaves every class short, 3 none
    config = [*TINY, "pretrained.uri=torchvision:resnet18", "data.val_fraction=0.2"]
    short = validate(load_config(None, [*config, "data.labeled_per_class=4"]))
    assert short.ok
    assert any("fewer than 4 labeled images in classes {'0': 3, '1': 3" in str(w) and "once data.val_fraction=0.2 is held out" in str(w)
               for w in short.warnings), [str(w) for w in short.warnings]
    assert not any("fewer than" in str(w) for w in validate(load_config(None, [*config, "data.labeled_per_class=3"])).warnings)

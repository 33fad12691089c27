"""CUDA paths: mixed precision and channels-last training. Run on a machine with a GPU: pytest -m gpu."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import adaptflow.training.loop
from adaptflow.adapt import METHODS
from adaptflow.data import ImageSet
from adaptflow.models import build_classifier
from adaptflow.training import TrainSettings, autocast_dtype, fit, predict
from conftest import use_project
from test_adapt import _images
from test_detection import TINY_SCENES, detection_config

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.fixture
def scenes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Tiny detection domains in a bare project folder: the detector stages need neither git nor DVC,
    so a GPU machine with torch but no DVC runs these tests too."""
    from adaptflow.data.scenes import build_scene_data

    root = use_project(tmp_path / "project", tmp_path / "cache", monkeypatch)
    build_scene_data(root / "data", sizes=TINY_SCENES)
    return root


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(precision: str) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 4
    images = torch.randint(0, 255, (256, 3, 32, 32), generator=g, dtype=torch.uint8)
    for c in range(4):
        images[labels == c, :, 8 * c : 8 * c + 8, 8 * c : 8 * c + 8] = 255
    data = ImageSet(images, labels, tuple("abcd"))
    model = build_classifier("resnet18", 4)
    history = fit(model, data, TrainSettings(epochs=6, batch_size=64, lr=1e-3, device="cuda", precision=precision), progress=False)
    assert autocast_dtype(torch.device("cuda"), precision) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert next(model.parameters()).device.type == "cuda"
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    accuracy = (predict(model, images, device="cuda").argmax(1) == labels).float().mean()
    assert accuracy > 0.9


def test_a_cpu_model_evaluated_on_cuda_first_then_trains_there() -> None:
    """What a benchmark few-label cell does: score the loaded model (time-to-accuracy at step 0), then train it."""
    data = _images(64)
    model = build_classifier("small_cnn", 4)
    predict(model, data.images, device="cuda")
    assert next(model.parameters()).device.type == "cuda" and not any(p.is_inference() for p in model.parameters())
    history = fit(model, data, TrainSettings(epochs=2, batch_size=16, lr=1e-3, device="cuda"), progress=False)
    assert history[-1]["train_loss"] > 0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_trains_on_cuda_with_fused_updates(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    made: list[torch.optim.Optimizer] = []
    make = adaptflow.training.loop.make_optimizer
    monkeypatch.setattr(adaptflow.training.loop, "make_optimizer", lambda *a, **kw: made.append(make(*a, **kw)) or made[-1])
    torch.manual_seed(0)
    model = build_classifier("small_cnn", 4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    settings = TrainSettings(epochs=2, batch_size=16, lr=1e-3, device="cuda", precision="bf16", strategy="finetune", methods=[name],
                           augment=True, pseudo_label_threshold=0.0)
    history = fit(model, _images(), settings, unlabeled=_images(24, shift=40, seed=1), progress=False)
    assert all(math.isfinite(h["train_loss"]) for h in history)
    assert any(not torch.equal(before[k], v.cpu()) for k, v in model.state_dict().items())
    assert made and all(o.defaults["fused"] for o in made), "every parameter (a DANN discriminator's too) sits on the GPU"


def test_a_set_beyond_the_gpu_share_streams_from_pinned_memory_and_trains_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptflow.data.feed as feed

    data = _images(200, seed=3)
    device = torch.device("cuda")
    share = feed.RESIDENT_SHARE
    assert feed.DeviceRows([data.images, data.labels], device).resident
    monkeypatch.setattr(feed, "RESIDENT_SHARE", 0.0)  # as if the set were larger than its share of free memory
    rows = feed.DeviceRows([data.images, data.labels], device)
    assert not rows.resident and rows.index_device.type == "cpu"
    picks = [torch.randperm(200)[:48] for _ in range(5)]
    taken = [rows.take(index) for index in picks]  # more batches in flight than pinned buffers: none may be overwritten
    for index, (images, labels) in zip(picks, taken, strict=True):
        assert images.device.type == "cuda"
        assert torch.equal(images.cpu(), data.images[index]) and torch.equal(labels.cpu(), data.labels[index])
    assert torch.equal(torch.cat([b[0] for b in rows.slices(64)]).cpu(), data.images)

    def trained(share: float, methods: list[str]) -> list[dict[str, float]]:
        monkeypatch.setattr(feed, "RESIDENT_SHARE", share)
        torch.manual_seed(0)
        settings = TrainSettings(epochs=3, batch_size=32, lr=1e-3, device="cuda", precision="off", methods=methods, augment=True)
        return fit(build_classifier("small_cnn", 4), data, settings, unlabeled=_images(64, shift=40, seed=1), progress=False)

    for methods in ([], ["adabn", "dann", "self_training"]):
        resident, streamed = trained(share, methods), trained(0.0, methods)
        assert [h["train_loss"] for h in streamed] == pytest.approx([h["train_loss"] for h in resident], rel=1e-2)


def test_augmentation_with_low_resolution_on_cuda_matches_the_cpu() -> None:
    from adaptflow.training import Normalizer

    images = _images(64).images
    draws = Normalizer(torch.device("cpu"), low_resolution=0.5).draws(len(images), torch.Generator().manual_seed(0))
    on_cpu = Normalizer(torch.device("cpu"), low_resolution=0.5)(images, draws=draws)
    on_cuda = Normalizer(torch.device("cuda"), low_resolution=0.5)(images.cuda(), draws=draws)
    assert on_cuda.device.type == "cuda" and torch.allclose(on_cuda.cpu(), on_cpu, atol=1e-4)


@pytest.mark.parametrize("arch", ["yolov8n", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_detectors_pretrain_on_cuda_and_predict(arch: str, scenes: Path) -> None:
    from adaptflow.detection import stages
    from adaptflow.detection.models import load_detector, predict

    cfg = detection_config(arch, "pretrain.epochs=3", "pretrain.device=cuda")
    published = stages.pretrain(cfg.pretrain, cfg.data, scenes / "work")
    history = __import__("json").loads((scenes / f"models/source-{arch}/history.json").read_text())
    assert len(history) == 3
    model, meta = load_detector(published.path)
    test = stages.load_split(cfg.data, cfg.data.target, "test", meta["classes"])
    out = predict(model, arch, test.images, device="cuda")
    assert len(out) == len(test) and all(o["boxes"].device.type == "cpu" for o in out)


@pytest.mark.parametrize("precision", ["auto", "off"])
def test_yolo_trains_in_the_precision_asked_for_without_downloading_the_amp_check_model(precision: str, scenes: Path) -> None:
    from adaptflow.detection import stages

    cfg = detection_config("yolov8n", "pretrain.epochs=1", "pretrain.device=cuda", f"pretrain.precision={precision}")
    stages.pretrain(cfg.pretrain, cfg.data, scenes / "work")  # the network guard fails the test on any download attempt
    last = torch.load(scenes / "work" / "ultralytics" / "weights" / "last.pt", weights_only=False, map_location="cpu")
    assert last["train_args"]["amp"] is (precision == "auto")


def test_yolo_on_two_gpus_trains_in_ultralytics_ddp_and_reports_every_epoch(scenes: Path) -> None:
    from adaptflow.detection import stages
    from adaptflow.detection.models import load_detector

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 CUDA devices")
    cfg = detection_config("yolov8n", "pretrain.epochs=2", "pretrain.device=cuda", "pretrain.devices=2")
    seen: list[int] = []
    published = stages.pretrain(cfg.pretrain, cfg.data, scenes / "work", on_epoch=lambda epoch, row: seen.append(epoch))
    assert seen == [1, 2], "rank 0's epochs reach the parent"
    model, _ = load_detector(published.path)
    assert any(p.abs().sum() > 0 for p in model.parameters())
    assert published.metrics["source_map50"] >= 0.0

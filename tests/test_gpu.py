"""CUDA paths: mixed precision and channels-last training. Run on a machine with a GPU: pytest -m gpu."""

from __future__ import annotations

import pytest
import torch

from adaptflow.data import ImageSet
from adaptflow.models import build_classifier
from adaptflow.train import FitSettings, autocast_dtype, fit, predict
from test_detection import detection_config, scenes  # noqa: F401 - scenes is a fixture

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda() -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_on_cuda(precision: str) -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(256) % 4
    images = torch.randint(0, 255, (256, 3, 32, 32), generator=g, dtype=torch.uint8)
    for c in range(4):
        images[labels == c, :, 8 * c : 8 * c + 8, 8 * c : 8 * c + 8] = 255
    data = ImageSet(images, labels, tuple("abcd"))
    model = build_classifier("resnet18", 4)
    history = fit(model, data, FitSettings(epochs=6, batch_size=64, lr=1e-3, device="cuda", precision=precision), progress=False)
    assert autocast_dtype(torch.device("cuda"), precision) == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert next(model.parameters()).device.type == "cuda"
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    accuracy = (predict(model, images, device="cuda").argmax(1) == labels).float().mean()
    assert accuracy > 0.9


@pytest.mark.parametrize("arch", ["yolov8n", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_detectors_pretrain_on_cuda_and_predict(arch: str, scenes) -> None:  # noqa: ANN001 - the scenes project
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


def test_yolo_on_two_gpus_trains_in_ultralytics_ddp_and_reports_every_epoch(scenes) -> None:  # noqa: ANN001
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

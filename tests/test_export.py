"""`adaptflow export`: ONNX and TorchScript files that match PyTorch on real images, logged to the model's run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptflow import tracking
from adaptflow.config import RegistryConfig, TrackingConfig
from adaptflow.export import ExportError, ModelSource, check_images, export_model, match_boxes

CLASSES = tuple(str(i) for i in range(10))


def _confident_detector(path: Path, arch: str) -> Path:
    """A freshly initialised detector whose class scores are raised, so that it finds boxes the check can compare."""
    from adaptflow.detection.models import build_detector, save_detector

    torch.manual_seed(0)
    model = build_detector(arch, len(CLASSES), 64)
    with torch.no_grad():
        if arch.startswith("yolo"):
            for branch in model.model[-1].cv3:
                branch[-1].bias += 6.0
        else:
            model.roi_heads.box_predictor.cls_score.bias[3] += 8.0
    save_detector(path, model, arch=arch, classes=CLASSES, image_size=64)
    return path


def test_a_classifier_exports_to_onnx_and_torchscript_that_give_adaptflows_logits(project: Path) -> None:
    import onnxruntime as ort

    from adaptflow.models import load_checkpoint
    from adaptflow.training import predict

    model_file = project / "models" / "source" / "model.pt"
    images = project / "data" / "uci_digits" / "test"
    onnx = export_model(ModelSource(model_file, str(model_file)), "onnx", images, project / "out" / "digits.onnx", dynamic=True)
    meta = json.loads(onnx.metadata.read_text())
    assert meta["input"] == {"name": "images", "shape": ["batch", 3, 16, 16], "dtype": "float32"}
    assert meta["opset"] == 18 and meta["classes"] == list(CLASSES) and meta["task"] == "classification"
    assert meta["preprocessing"]["scale"].startswith("pixel values / 255") and meta["check"]["count"] == 16
    assert meta["check"]["logits_max_abs_diff"] <= 1e-4 and meta["check"]["top1_agreement"] == 1.0

    # the file alone (ONNX Runtime, any batch) gives the logits adaptflow's own inference gives
    batch = check_images(images, 16, limit=40)
    session = ort.InferenceSession(str(onnx.path), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"images": batch.float().div(255).numpy()})[0]
    expected = predict(load_checkpoint(model_file)[0], batch, device="cpu").numpy()
    assert logits.shape == (40, 10) and np.abs(logits - expected).max() <= 1e-4

    # `adaptflow predict` takes the exported file and gives the classes the model file gives
    from adaptflow.predict import predict_any

    predict_any(onnx.path, images, project / "onnx.csv")
    predict_any(model_file, images, project / "torch.csv")
    assert (project / "onnx.csv").read_text().splitlines()[0] == "path,class,score"
    assert [line.split(",")[:2] for line in (project / "onnx.csv").read_text().splitlines()] == \
        [line.split(",")[:2] for line in (project / "torch.csv").read_text().splitlines()]

    script = export_model(ModelSource(model_file, str(model_file)), "torchscript", images, project / "out" / "digits.torchscript")
    loaded = torch.jit.load(str(script.path))
    assert torch.allclose(loaded(batch[:1].float() / 255), torch.from_numpy(expected[:1]), atol=1e-4)
    assert json.loads(script.metadata.read_text())["input"]["shape"] == [1, 3, 16, 16]


def test_an_export_that_does_not_match_is_refused_and_nothing_is_written(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import adaptflow.export

    model_file = project / "models" / "source" / "model.pt"
    monkeypatch.setattr(adaptflow.export, "LOGITS_TOLERANCE", -1.0)  # no difference is small enough
    with pytest.raises(ExportError, match=r"the onnx export does not match PyTorch: logits max abs diff .* on 16 images; nothing was written"):
        export_model(ModelSource(model_file, str(model_file)), "onnx", project / "data" / "uci_digits" / "test", project / "x.onnx")
    assert not (project / "x.onnx").exists() and not (project / "x.onnx.json").exists()
    with pytest.raises(ExportError, match="--format tflite: use one of onnx, torchscript"):
        export_model(ModelSource(model_file, str(model_file)), "tflite", project / "data" / "uci_digits" / "test")
    with pytest.raises(ExportError, match="not an adaptflow model file"):
        torch.save({"weights": torch.zeros(2)}, project / "plain.pt")
        export_model(ModelSource(project / "plain.pt", "plain.pt"), "onnx", project / "data" / "uci_digits" / "test")


def test_a_registered_model_exports_from_the_command_line_into_its_runs_artifacts(project: Path) -> None:
    from adaptflow.models import build_classifier, save_checkpoint

    track, reg = TrackingConfig(), RegistryConfig(model_name="digits")
    save_checkpoint(project / "m.pt", build_classifier("small_cnn", 10), arch="small_cnn", classes=CLASSES, image_size=16)
    run_id = tracking.start_run(track, "run", {"data_version": "md5"}, {"data": {"root": "data", "target": "uci_digits"}})
    tracking.register_model(reg, track, run_id, project / "m.pt", {"target_accuracy": 0.5}, {})
    out = subprocess.run([sys.executable, "-m", "adaptflow", "export", "models:/digits@champion", "--format", "onnx"],
                         cwd=project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "exports/digits-v1.onnx (digits-v1.onnx.json): check passed, logits max abs diff" in out.stdout
    assert f"logged to MLflow run {run_id} under exports/onnx/" in out.stdout
    logged = sorted(a.path for a in tracking.client(track).list_artifacts(run_id, "exports/onnx"))
    assert logged == ["exports/onnx/digits-v1.onnx", "exports/onnx/digits-v1.onnx.json"]
    described = json.loads((project / "exports" / "digits-v1.onnx.json").read_text())
    assert described["model"] == "models:/digits/1" and described["check"]["images"].endswith("data/uci_digits/test")

    bad = subprocess.run([sys.executable, "-m", "adaptflow", "export", "runs/none"], cwd=project, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 3 and "error: runs/none: no such file or folder; give models:/NAME@ALIAS, a run folder or a model file" in bad.stderr


@pytest.mark.parametrize(("arch", "fmt"), [("yolov8n", "onnx"), ("yolov8n", "torchscript"), ("fasterrcnn_mobilenet_v3_large_fpn", "onnx")])
def test_a_detector_exports_with_the_same_boxes(project: Path, arch: str, fmt: str) -> None:
    from adaptflow.data.scenes import build_scene_data

    build_scene_data(project / "data", sizes={"photo_scenes": {"test": 8}})
    images = project / "data" / "photo_scenes" / "test" / "images"
    model = _confident_detector(project / f"{arch}.pt", arch)
    result = export_model(ModelSource(model, str(model)), fmt, images, project / "out" / f"{arch}.{fmt}")
    assert result.check["boxes"] > 0 and result.check["matched"] == result.check["boxes"], result.check
    described = json.loads(result.metadata.read_text())
    assert described["task"] == "detection" and described["family"] == ("yolo" if arch == "yolov8n" else "fasterrcnn")
    if fmt == "onnx":
        assert described["opset"] >= 17 and described["input"]["shape"] == [1, 3, 64, 64]
    if arch == "yolov8n":
        assert described["check"]["raw_max_abs_diff"] <= described["check"]["raw_limit"]
    with pytest.raises(ExportError, match="--half: a .* exports in fp16 on a CUDA GPU only"):
        if torch.cuda.is_available():
            pytest.skip("fp16 detector export runs on this GPU")
        export_model(ModelSource(model, str(model)), fmt, images, half=True)


def test_boxes_match_one_to_one_by_iou_and_class() -> None:
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    a = [{"boxes": boxes, "labels": torch.tensor([1, 2]), "scores": torch.ones(2)}]
    assert match_boxes(a, a) == (2, 2)
    moved = [{"boxes": boxes + torch.tensor([0.5, 0.0, 0.5, 0.0]), "labels": torch.tensor([1, 2]), "scores": torch.ones(2)}]
    assert match_boxes(a, moved) == (0, 2)  # IoU 0.9: not the same box
    relabeled = [{"boxes": boxes, "labels": torch.tensor([2, 1]), "scores": torch.ones(2)}]
    assert match_boxes(a, relabeled) == (0, 2)
    assert match_boxes(a, [{"boxes": boxes[:1], "labels": torch.tensor([1]), "scores": torch.ones(1)}]) == (1, 2)


def test_the_demos_efficientnet_lite0_with_imagenet_weights_exports_within_1e_4(project: Path) -> None:
    from adaptflow.models import load_source_model, save_checkpoint
    from adaptflow.weights import fetch_pretrained

    ref = fetch_pretrained("package:efficientnet_lite0")
    model, meta = load_source_model(ref.path, "efficientnet_lite0")
    save_checkpoint(project / "lite.pt", model, arch="efficientnet_lite0", classes=meta["classes"], image_size=64)
    images = project / "data" / "uci_digits" / "test"
    result = export_model(ModelSource(project / "lite.pt", "lite.pt"), "onnx", images, project / "lite.onnx")
    assert result.check["logits_max_abs_diff"] <= result.check["tolerance"] and result.check["top1_agreement"] == 1.0
    print(f"efficientnet_lite0 ONNX: {result.check['summary']}")


def test_the_registered_yolo_opens_in_ultralytics_with_its_names_and_adaptflows_boxes(project: Path) -> None:
    """`YOLO(path)` on the registered model's `ultralytics.pt` has the class names, and its own predict and val run on
    it and find the boxes adaptflow's inference finds."""
    from adaptflow.data.scenes import build_scene_data
    from adaptflow.detection import yolo
    from adaptflow.detection.data import load_detection_split, stage_yolo_dataset
    from adaptflow.detection.models import load_detector
    from adaptflow.weights import fetch_pretrained

    build_scene_data(project / "data", sizes={"photo_scenes": {"test": 8}})
    test = project / "data" / "photo_scenes" / "test"
    _confident_detector(project / "model.pt", "yolov8n")
    track, reg = TrackingConfig(), RegistryConfig(model_name="digits-detector", metric="target_map50")
    run_id = tracking.start_run(track, "run", {}, {})
    tracking.register_model(reg, track, run_id, project / "model.pt", {"target_map50": 0.0}, {"task": "detection"})
    folder = Path(fetch_pretrained("models:/digits-detector@champion").path).parent
    assert sorted(p.name for p in folder.iterdir()) == ["model.pt", "ultralytics.pt"]
    requirements = (folder.parent / "requirements.txt").read_text().split()
    assert requirements[0] == "adaptflow==0.1.0" and any(r.startswith("ultralytics==") for r in requirements)

    native = yolo.ultralytics().YOLO(str(folder / "ultralytics.pt"))
    assert native.names == dict(enumerate(CLASSES)) and native.task == "detect"
    split = load_detection_split(test, 64, CLASSES)
    ours = yolo.predict(load_detector(folder / "model.pt")[0], split.images, 8, "cpu", conf=0.25)
    files = sorted((test / "images").iterdir())
    theirs = [{"boxes": r.boxes.xyxy * 64 / 128, "labels": r.boxes.cls.long(), "scores": r.boxes.conf}  # scenes are 128 px
              for r in native.predict([str(f) for f in files], imgsz=64, conf=0.25, device="cpu", verbose=False)]
    matched, total = match_boxes(ours, theirs, iou=0.9)  # Ultralytics resizes with OpenCV, adaptflow with PIL
    assert total > 0 and matched >= 0.9 * total, (matched, total)
    dataset = stage_yolo_dataset({"train": test, "val": test}, CLASSES, project / "work" / "dataset")
    metrics = native.val(data=str(dataset), split="val", imgsz=64, batch=8, device="cpu", plots=False, verbose=False,
                         project=str(project / "work" / "val"))
    assert 0.0 <= metrics.box.map50 <= 1.0
    assert isinstance(yolo.load_ultralytics_checkpoint(folder / "ultralytics.pt"), dict)  # adaptflow opens it without unpickling code


DEMO = Path(os.environ.get("ADAPTFLOW_DEMO_PROJECT", Path(__file__).resolve().parents[1]))


@pytest.mark.skipif(not (DEMO / "models" / "source-yolo" / "model.pt").is_file(), reason="needs `make demo-detection` (its source YOLO)")
def test_the_demos_yolo_validates_in_ultralytics_to_adaptflows_map50(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detection demo's source YOLO, written as the registry writes it for Ultralytics: `YOLO(path).val` on the target
    test split gives adaptflow's own mAP50 within 0.01."""
    from adaptflow.config import EvaluateConfig, load_config
    from adaptflow.detection import yolo
    from adaptflow.detection.data import stage_yolo_dataset
    from adaptflow.detection.models import load_detector
    from adaptflow.detection.stages import measure

    monkeypatch.setenv("ADAPTFLOW_ROOT", str(DEMO))
    monkeypatch.setenv("ADAPTFLOW_CACHE", str(tmp_path / "cache"))
    cfg = load_config(DEMO / "configs" / "detection.yaml")
    model, meta = load_detector(DEMO / "models" / "source-yolo" / "model.pt")
    native = yolo.save_ultralytics(tmp_path / "ultralytics.pt", model, arch=meta["arch"], classes=meta["classes"],
                                   image_size=meta["image_size"])
    ours = measure(EvaluateConfig(batch_size=64), cfg.data, DEMO / "models" / "source-yolo" / "model.pt", "cpu")["target_map50"]
    test = DEMO / cfg.data.root / cfg.data.target / "test"
    dataset = stage_yolo_dataset({"train": test, "val": test}, meta["classes"], tmp_path / "dataset")
    theirs = yolo.ultralytics().YOLO(str(native)).val(data=str(dataset), split="val", imgsz=meta["image_size"], batch=64, device="cpu",
                                                      plots=False, verbose=False, project=str(tmp_path / "val")).box.map50
    print(f"target test mAP50: adaptflow {ours:.4f}, Ultralytics {theirs:.4f}")
    assert abs(ours - theirs) <= 0.01

"""`adaptflow predict`: the champion over a folder, as evaluation scored it; bad input writes nothing."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adaptflow.predict import PredictError, predict_folder
from conftest import tiny_config


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_predict_classifies_a_folder_with_the_champion_as_evaluation_did(project: Path) -> None:
    from adaptflow.pipeline import run_transfer

    result = run_transfer(tiny_config(), project / "runs" / "champion", version=False)
    test = project / "data" / "uci_digits" / "test"
    out = subprocess.run([sys.executable, "-m", "adaptflow", "predict", str(test), "-o", "out/predictions.csv"],
                         cwd=project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = _rows(project / "out" / "predictions.csv")
    files = sorted(test.rglob("*.png"))
    assert [r["path"] for r in rows] == [p.relative_to(test).as_posix() for p in files]
    accuracy = sum(r["class"] == Path(r["path"]).parent.name for r in rows) / len(rows)
    assert accuracy == pytest.approx(result["metrics"]["target_accuracy"], abs=1 / len(rows))
    assert all(0 < float(r["score"]) <= 1 for r in rows)
    assert f"{len(rows)} images -> out/predictions.csv (models:/adaptflow-classifier/{result['registration']['version']})" in out.stdout
    assert "no domain check: it compares with" in out.stdout, "the test split compared with itself"

    # a few images at a time streams through to the same table (scores to float rounding: batch sizes and threads differ)
    predict_folder(project / "runs" / "champion" / "finetune" / "model.pt", test, project / "small.csv", batch_size=7)
    small = _rows(project / "small.csv")
    assert [(r["path"], r["class"]) for r in small] == [(r["path"], r["class"]) for r in rows]
    assert [float(r["score"]) for r in small] == pytest.approx([float(r["score"]) for r in rows], abs=1e-5)

    # the domain check tells the source domain's digits from the target's, and the target's unlabeled images not
    model = project / "runs" / "champion" / "finetune" / "model.pt"
    source = predict_folder(model, project / "data" / "mnist" / "test", project / "mnist.csv", reference=test).check
    same = predict_folder(model, project / "data" / "uci_digits" / "unlabeled", project / "same.csv", reference=test).check
    assert source.differs and source.auc > 0.9, source
    assert not same.differs and same.auc < 0.75, same
    assert same.images == len(rows) and same.reference == str(test)


def test_an_image_that_does_not_decode_stops_predict_before_anything_is_written(project: Path, tmp_path: Path) -> None:
    model = project / "models" / "source" / "model.pt"
    images = tmp_path / "work" / "inbox"
    (images / "cam1").mkdir(parents=True)
    for i, source in enumerate(sorted((project / "data" / "mnist" / "test").rglob("*.png"))[:5]):
        (images / "cam1" / f"{i}.png").write_bytes(source.read_bytes())
    (images / "cam1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    output = tmp_path / "work" / "predictions.csv"
    output.write_text("yesterday's predictions\n")
    with pytest.raises(PredictError, match=r"inbox/cam1/broken\.png: cannot be decoded .* No predictions were written"):
        predict_folder(model, images, output)
    assert output.read_text() == "yesterday's predictions\n"
    assert sorted(p.name for p in (tmp_path / "work").iterdir()) == ["inbox", "predictions.csv"], "a temporary file was left behind"

    (images / "cam1" / "broken.png").unlink()
    found = predict_folder(model, images, output, reference=project / "data" / "mnist" / "test")
    assert found.counts.total() == 5 and len(_rows(output)) == 5
    assert found.check is None, "5 images are too few to tell domains apart"


def test_predict_names_what_is_wrong_with_its_input(project: Path, tmp_path: Path) -> None:
    model = project / "models" / "source" / "model.pt"
    with pytest.raises(PredictError, match=r"nowhere: no such folder"):
        predict_folder(model, tmp_path / "nowhere", tmp_path / "p.csv")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no images here")
    with pytest.raises(PredictError, match=r"notes: no images \(.*\.png.*\) in it or below it"):
        predict_folder(model, tmp_path / "notes", tmp_path / "p.csv")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "weights.pt")
    with pytest.raises(PredictError, match=r"weights\.pt: not an adaptflow classifier checkpoint .* takes a classifier"):
        predict_folder(tmp_path / "weights.pt", project / "data" / "mnist" / "test", tmp_path / "p.csv")
    assert not (tmp_path / "p.csv").exists()
    out = subprocess.run([sys.executable, "-m", "adaptflow", "predict", "data/mnist/test", "--model", "models:/nosuch@champion",
                          "-o", str(tmp_path / "p.csv")], cwd=project, capture_output=True, text=True, timeout=300)
    assert out.returncode == 5 and "error: --model 'models:/nosuch@champion': nothing is registered" in out.stderr, out.stderr
    assert not (tmp_path / "p.csv").exists()


def test_predict_detects_objects_in_a_folder_with_boxes_in_each_images_pixels(project: Path, tmp_path: Path) -> None:
    """A detector over a folder: one row per box, in the pixels of the file on disk (whatever its size), the same boxes
    from its ONNX export, copies with the boxes drawn, and the domain check on the backbone's features."""
    import json

    from PIL import Image

    from adaptflow.data.scenes import build_scene_data
    from adaptflow.detection.data import load_detection_split
    from adaptflow.detection.models import build_detector, load_detector, predict, save_detector
    from adaptflow.export import ModelSource, export_model
    from adaptflow.predict import predict_any

    build_scene_data(project / "data", sizes={"mnist_scenes": {"test": 24}, "photo_scenes": {"test": 24}})
    torch.manual_seed(0)
    model = build_detector("yolov8n", 10, 64)
    with torch.no_grad():
        for branch in model.model[-1].cv3:
            branch[-1].bias += 6.0
    save_detector(project / "yolo.pt", model, arch="yolov8n", classes=tuple(str(i) for i in range(10)), image_size=64)
    inbox = tmp_path / "inbox"
    (inbox / "cam").mkdir(parents=True)
    sources = sorted((project / "data" / "photo_scenes" / "test" / "images").iterdir())[:3]
    for i, source in enumerate(sources):  # one at twice the size: its boxes come back at twice the scale
        with Image.open(source) as img:
            (img.resize((256, 256)) if i == 0 else img).save(inbox / "cam" / f"{i}.png")
    result = predict_any(project / "yolo.pt", inbox, tmp_path / "boxes.csv", save_images=tmp_path / "drawn", conf=0.25)
    rows = _rows(tmp_path / "boxes.csv")
    assert list(rows[0]) == ["path", "class", "score", "x1", "y1", "x2", "y2"] and result.counts.total() == len(rows) > 0
    expected = predict(load_detector(project / "yolo.pt")[0], "yolov8n", load_detection_split(project / "data" / "photo_scenes" / "test", 64,
                       tuple(str(i) for i in range(10))).images[:3], device="cpu")
    for i in range(3):
        mine = [r for r in rows if r["path"] == f"cam/{i}.png"]
        keep = expected[i]["scores"] >= 0.25
        assert len(mine) == int(keep.sum())
        scale = (256 if i == 0 else 128) / 64
        got = torch.tensor([[float(r[k]) for k in ("x1", "y1", "x2", "y2")] for r in mine])
        assert torch.allclose(got, expected[i]["boxes"][keep] * scale, atol=0.05 * scale)
    with Image.open(tmp_path / "drawn" / "cam" / "0.png") as drawn, Image.open(inbox / "cam" / "0.png") as original:
        assert drawn.size == original.size and np.asarray(drawn).tolist() != np.asarray(original.convert("RGB")).tolist()

    exported = export_model(ModelSource(project / "yolo.pt", "yolo.pt"), "onnx", project / "data" / "photo_scenes" / "test" / "images",
                            tmp_path / "yolo.onnx")
    predict_any(exported.path, inbox, tmp_path / "boxes.json", conf=0.25)
    from_onnx = json.loads((tmp_path / "boxes.json").read_text())
    assert [(r["path"], r["class"]) for r in from_onnx] == [(r["path"], r["class"]) for r in rows]
    assert np.allclose([r["x1"] for r in from_onnx], [float(r["x1"]) for r in rows], atol=0.1)

    # the domain check tells digits on flat backgrounds from digits on photographs
    check = predict_any(project / "yolo.pt", project / "data" / "mnist_scenes" / "test", tmp_path / "source.csv",
                        reference=project / "data" / "photo_scenes" / "test").check
    assert check is not None and check.images == 24 and check.auc > 0.9, check
    assert len(list((tmp_path / "cache" / "images").glob("detection-*.pt"))) == 1  # the reference, decoded once
    again = predict_any(project / "yolo.pt", project / "data" / "mnist_scenes" / "test", tmp_path / "source.csv",
                        reference=project / "data" / "photo_scenes" / "test").check
    assert again.auc == check.auc

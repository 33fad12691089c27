"""Detection through the same DAG: scene data, both detector families, mAP, the registry pyfunc."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import netguard
from conftest import tiny_config

TINY_SCENES = {"mnist_scenes": {"train": 24, "test": 8}, "photo_scenes": {"train": 12, "unlabeled": 6, "test": 8}}
DETECTION = [
    "task=detection", "data.source=mnist_scenes", "data.target=photo_scenes", "data.image_size=64",
    "finetune.strategy=finetune", "registry.model_name=adaptflow-detector", "registry.metric=target_map50",
    "registry.guard_metric=source_map50", "pretrain.epochs=1", "finetune.epochs=1", "pretrain.batch_size=8",
    "finetune.batch_size=4", "evaluate.batch_size=16",
]


def detection_config(arch: str = "yolov8n", *overrides: str):
    return tiny_config(*DETECTION, f"pretrain.arch={arch}", f"finetune.arch={arch}",
                       f"pretrain.output=models/source-{arch}", f"pretrained.uri=models/source-{arch}/model.pt", *overrides)


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_scene_build_is_byte_identical_valid_yolo_and_splits_photos_by_image(tmp_path: Path) -> None:
    from adaptflow.data.scenes import TEST_PHOTOS, TRAIN_PHOTOS, build_scene_data
    from adaptflow.detection.data import load_detection_split, read_names
    from adaptflow.validate import Report, check_detection_split

    build_scene_data(tmp_path / "a", sizes=TINY_SCENES)
    build_scene_data(tmp_path / "b", sizes=TINY_SCENES)
    assert tree_digest(tmp_path / "a") == tree_digest(tmp_path / "b")
    assert not set(TRAIN_PHOTOS) & set(TEST_PHOTOS)

    domain = tmp_path / "a" / "photo_scenes"
    classes = read_names(domain)
    assert classes == tuple(str(i) for i in range(10))
    report = Report()
    for split in ("train", "test"):
        check_detection_split(domain / split, len(classes), report)
    assert report.ok, str(report)
    test = load_detection_split(domain / "test", 128, classes)
    assert test.images.shape == (8, 3, 128, 128) and len(test.boxes) >= 8
    assert ((test.boxes[:, 2:] >= 0) & (test.boxes[:, 2:] <= 128)).all()
    assert (test.boxes[:, 4] > test.boxes[:, 2]).all() and (test.boxes[:, 5] > test.boxes[:, 3]).all()
    assert sorted(p.suffix for p in (domain / "test" / "images").iterdir())[0] == ".jpg"  # JPEG artefacts are the target's


def test_detection_config_errors_name_the_field_and_the_fix() -> None:
    from adaptflow.config import ConfigError

    with pytest.raises(ConfigError, match="finetune.arch 'yolov8n' is a detector but task is classification"):
        tiny_config("finetune.arch=yolov8n")
    with pytest.raises(ConfigError, match="registry.metric 'target_accuracy' is a classification metric"):
        tiny_config(*DETECTION[:5], "pretrain.arch=yolov8n", "finetune.arch=yolov8n", "registry.metric=target_accuracy")
    for strategy in ("lp_ft", "discriminative", "gradual_unfreeze", "surgical"):  # none of them would change how a detector trains
        with pytest.raises(ConfigError, match=f"finetune.strategy {strategy} is for classifiers; with task detection use finetune or linear_probe"):
            detection_config("yolov8n", f"finetune.strategy={strategy}", "finetune.epochs=3")
    with pytest.raises(ConfigError, match="finetune.target_batch_size sizes the unlabeled batch of a classifier's methods"):
        detection_config("yolov8n", "finetune.target_batch_size=8")
    with pytest.raises(ConfigError, match=r"pretrain.precision=bf16: Ultralytics trains YOLO in fp16 mixed precision only; set "
                                          r"pretrain.precision to auto or fp16 \(mixed\), or off \(fp32\)"):
        detection_config("yolov8n", "pretrain.precision=bf16")
    assert detection_config("fasterrcnn_mobilenet_v3_large_fpn", "finetune.precision=bf16").finetune.precision == "bf16"
    with pytest.raises(ConfigError, match="pretrain.low_resolution=0.5: detectors augment in their own way, or pretrain.low_resolution=0"):
        detection_config("yolov8n", "pretrain.low_resolution=0.5")


@pytest.fixture
def scenes(project: Path) -> Path:
    from adaptflow.data.scenes import build_scene_data

    build_scene_data(project / "data", sizes=TINY_SCENES)
    return project


def test_detection_data_missing_or_without_a_dataset_file_is_named_once_per_domain(tmp_path: Path) -> None:
    from adaptflow.validate import DataValidationError, validate

    (tmp_path / "photo_scenes" / "train").mkdir(parents=True)  # the target folder without its data.yaml; no source folder
    with pytest.raises(DataValidationError) as err:
        validate(detection_config("yolov8n", f"data.root={tmp_path}", "pretrained.uri=torchvision:resnet18"), "transfer")
    assert [str(p) for p in err.value.report.errors] == [
        f"{tmp_path / 'mnist_scenes'}: no such domain folder; build the data (adaptflow data build), `dvc pull`, or fix data.root",
        f"{tmp_path / 'photo_scenes' / 'data.yaml'}: no dataset file; a detection domain needs data.yaml with `names:`; "
        "write data.yaml with `names:` (see data/mnist_scenes)",
    ]


def test_yolo_flows_register_a_detector_that_predicts_boxes_from_the_registry(prefect_api, scenes: Path, capfd: pytest.CaptureFixture) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.io import read_json
    from flows.pretrain import pretrain
    from flows.transfer import transfer

    cfg = detection_config("yolov8n")
    published = pretrain(config=cfg)["published"]
    assert 0.0 <= published["metrics"]["source_map50"] <= 1.0
    result = transfer(config=cfg)
    run_dir = Path(result["run_dir"])
    metrics = read_json(run_dir / "evaluate" / "metrics.json")
    for key in ("target_map50", "target_map50_95", "source_map50", "baseline_target_map50", "gain", "forgetting"):
        assert -1.0 <= metrics[key] <= 1.0, key
    report = read_json(run_dir / "evaluate" / "report.json")
    assert set(report["target"]["ap50_95_per_class"]) == {str(i) for i in range(10)}
    for plot in ("pr_curve.png", "predictions.png"):
        assert (run_dir / "evaluate" / plot).read_bytes()[:4] == b"\x89PNG"
    assert not list((scenes / "data").rglob("*.cache")), "training wrote label caches into the versioned data"

    client = MlflowClient(env.default_tracking_uri())
    champion = client.get_model_version_by_alias("adaptflow-detector", "champion")
    assert champion.tags["adaptflow.task"] == "detection"
    assert len(client.get_metric_history(champion.run_id, "train_box_loss")) == cfg.finetune.epochs

    model = mlflow.pyfunc.load_model(f"models:/adaptflow-detector/{champion.version}")
    image = np.asarray(__import__("PIL.Image").Image.open(next((scenes / "data" / "photo_scenes" / "test" / "images").iterdir())).convert("RGB"))
    boxes = model.predict(np.stack([image, image]), params={"conf": 0.0})
    assert list(boxes.columns) == ["image", "class_index", "class", "score", "x1", "y1", "x2", "y2"]
    assert len(boxes) > 0 and set(boxes["image"]) <= {0, 1}
    assert (boxes["x2"] <= image.shape[1] + 1).all() and (boxes["x1"] >= -1).all()
    assert netguard.refused() == [], "a connection beyond 127.0.0.1 was attempted (here or in the training process)"
    shown = "".join(capfd.readouterr())
    assert "finetune" in shown and "Average Precision" not in shown, "pycocotools' summary tables reached the run log"


def test_the_adapter_leaves_the_thread_count_of_later_processes_alone_and_keeps_its_files_in_the_cache(tmp_path: Path) -> None:
    """Importing Ultralytics sets OMP_NUM_THREADS=1, which every process started later (a DVC stage,
    torchrun workers) would inherit: trained on another thread count, their models would differ.
    Its folders (where its AMP check looks for its reference model) are the project cache's from the
    first import in a fresh cache on."""
    probe = ("import os; from adaptflow.detection import yolo; yolo.ultralytics(); from ultralytics import utils; "
             "print(os.environ.get('OMP_NUM_THREADS'), utils.WEIGHTS_DIR, utils.DATASETS_DIR, utils.RUNS_DIR)")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"} | {"ADAPTFLOW_CACHE": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    folders = tmp_path / "ultralytics"
    assert out.stdout.split() == ["None", str(folders / "weights"), str(folders / "datasets"), str(folders / "runs")]


def test_yolo_finetune_gives_the_losses_of_plain_ultralytics_on_the_same_data_weights_and_settings(scenes: Path) -> None:
    """adaptflow's YOLO fine-tune (the trainer's process loads the detector file and writes the result; and the
    same in the stage's own process, as a stage command trains) and `YOLO(checkpoint).train(...)` from the same
    weights, images, settings and seed: identical per-epoch losses (CPU, Ultralytics' deterministic mode)."""
    import json

    import torch

    from adaptflow.detection import stages, yolo
    from adaptflow.detection.models import build_detector, save_detector
    from adaptflow.io import read_json
    from adaptflow.weights import fetch_pretrained
    from perf.yolo_overhead import PLAIN, plain_args

    cfg = detection_config("yolov8n", "finetune.epochs=2", "finetune.device=cpu")
    classes = stages.domain_classes(cfg.data, cfg.data.target)
    torch.manual_seed(0)
    model = build_detector("yolov8n", len(classes), cfg.data.image_size)
    save_detector(scenes / "start.pt", model, arch="yolov8n", classes=classes, image_size=cfg.data.image_size)
    yolo.save_ultralytics(scenes / "start-ultralytics.pt", model, arch="yolov8n", classes=classes, image_size=cfg.data.image_size)

    trained = stages.finetune(cfg.finetune, cfg.data, fetch_pretrained(str(scenes / "start.pt")), scenes / "run")
    assert read_json(Path(trained.path).with_name("history.json"))  # written by this process, the model by the trainer's
    ours = [{k: row[k] for k in ("train_box_loss", "train_cls_loss", "train_dfl_loss")} for row in read_json(scenes / "run" / "history.json")]

    train = scenes / "run" / "dataset" / "data.yaml"  # the same images: the run's staged dataset (train and val: the target's train split)
    out = subprocess.run([sys.executable, "-c", PLAIN, str(scenes / "start-ultralytics.pt"), json.dumps(plain_args(cfg, train, scenes / "plain"))],
                         capture_output=True, text=True, cwd=scenes)
    assert out.returncode == 0, out.stderr[-3000:]
    plain = [{k.replace("/", "_"): v for k, v in row.items()} for row in json.loads(out.stdout.strip().splitlines()[-1])["losses"]]
    assert len(ours) == 2 and ours == plain
    assert all(v > 0 for row in ours for v in row.values())

    from adaptflow import child

    with child.in_this_process():
        stages.finetune(cfg.finetune, cfg.data, fetch_pretrained(str(scenes / "start.pt")), scenes / "here")
    here = [{k: row[k] for k in ("train_box_loss", "train_cls_loss", "train_dfl_loss")} for row in read_json(scenes / "here" / "history.json")]
    assert here == plain


def test_faster_rcnn_pretrains_finetunes_and_is_measured_by_the_same_map(scenes: Path) -> None:
    from adaptflow.detection import stages
    from adaptflow.weights import fetch_pretrained

    cfg = detection_config("fasterrcnn_mobilenet_v3_large_fpn")
    published = stages.pretrain(cfg.pretrain, cfg.data, scenes / "work" / "pretrain")
    ref = fetch_pretrained(cfg.pretrained.uri)
    assert ref.sha256 == published.sha256
    model = stages.finetune(cfg.finetune, cfg.data, ref, scenes / "work" / "finetune")
    metrics = stages.evaluate(cfg.evaluate, cfg.data, model.path, ref, scenes / "work" / "evaluate", "cpu")
    assert set(metrics) >= {"target_map50", "source_map50", "baseline_target_map50", "gain"}
    assert metrics == pytest.approx(stages.measure(cfg.evaluate, cfg.data, model.path, "cpu") | {
        k: v for k, v in metrics.items() if k.startswith("baseline") or k in ("gain", "forgetting")})


def test_ultralytics_asset_is_downloaded_cached_and_fine_tuned_with_a_new_head(scenes: Path, tmp_path: Path, monkeypatch) -> None:
    from adaptflow.detection import stages, yolo
    from adaptflow.detection.models import load_detector
    from adaptflow.weights import fetch_pretrained
    from test_fetch import Server

    served = tmp_path / "assets"
    served.mkdir()
    yolo.ultralytics()
    from ultralytics import YOLO

    YOLO("yolov8n.yaml").save(served / "yolov8n.pt")  # an Ultralytics checkpoint, as its releases publish them (80 classes)
    sha = hashlib.sha256((served / "yolov8n.pt").read_bytes()).hexdigest()  # a plain-http mirror needs the digest pinned
    server = Server(served)
    monkeypatch.setenv("ADAPTFLOW_ULTRALYTICS_ASSETS_URL", server.url)
    ref = fetch_pretrained("ultralytics:yolov8n.pt", sha)
    assert ref.arch == "yolov8n" and server.hits == {"/yolov8n.pt": 1}
    server.httpd.shutdown()
    assert fetch_pretrained("ultralytics:yolov8n.pt", sha) == ref  # offline now: the cache answers
    assert load_detector(ref.path)[1]["arch"] == "yolov8n"  # pickled, yet only torch's and Ultralytics' model classes are rebuilt

    cfg = detection_config("yolov8n", "pretrained.uri=ultralytics:yolov8n.pt", f"pretrained.sha256={sha}")
    trained = stages.finetune(cfg.finetune, cfg.data, ref, scenes / "work" / "finetune")
    model, meta = load_detector(trained.path)
    assert meta["classes"] == tuple(str(i) for i in range(10)) and model.model[-1].nc == 10


def test_data_add_takes_yolo_folders_checks_them_first_and_names_by_content(scenes: Path, tmp_path: Path) -> None:
    from adaptflow.detection.ingest import add_detection_images
    from adaptflow.data.scenes import build_scene_data
    from adaptflow.validate import DataValidationError

    build_scene_data(tmp_path / "new", sizes={"photo_scenes": {"fresh": 3}})
    fresh = tmp_path / "new" / "photo_scenes" / "fresh"
    split = scenes / "data" / "photo_scenes" / "train"
    before = len(list((split / "images").iterdir()))
    assert add_detection_images(fresh, split, 10) == {"images": 3}
    assert add_detection_images(fresh, split, 10) == {}  # the same images again add nothing
    assert len(list((split / "images").iterdir())) == before + 3 == len(list((split / "labels").iterdir()))

    seen = sorted((split.parent / "test" / "images").iterdir())[0]  # an image the test split holds
    shutil.copy(seen, fresh / "images" / f"seen{seen.suffix}")
    shutil.copy(split.parent / "test" / "labels" / f"{seen.stem}.txt", fresh / "labels" / "seen.txt")
    with pytest.raises(DataValidationError, match=f"seen{seen.suffix}: already in the test split"):
        add_detection_images(fresh, split, 10)
    assert len(list((split / "images").iterdir())) == before + 3, "nothing was added"

    (fresh / "labels" / "00000.txt").write_text("12 0.5 0.5 0.2 0.2\n")
    with pytest.raises(DataValidationError, match="(?s)in the new images; nothing was added:.*class id 12 out of range"):
        add_detection_images(fresh, tmp_path / "elsewhere", 10)
    assert not (tmp_path / "elsewhere").exists()  # nothing is copied when anything is wrong


@pytest.mark.parametrize("arch", ["yolov8n", "fasterrcnn_mobilenet_v3_large_fpn"])
def test_adabn_changes_only_batch_norm_statistics_of_a_detector(arch: str) -> None:
    import torch

    from adaptflow.detection.adapt import adapt_batch_norm, batch_norms
    from adaptflow.detection.models import build_detector

    model = build_detector(arch, 10, 64)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = torch.randint(0, 255, (6, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    adapt_batch_norm(model, arch, images, batch_size=4)
    after = model.state_dict()
    stats = {name for name, _ in model.named_buffers() if name.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and changed <= stats
    assert all(m.momentum is not None for m in batch_norms(model)) and not model.training


def test_pseudo_labels_respect_the_threshold_and_detection_rejects_classifier_methods() -> None:
    import torch

    from adaptflow.config import ConfigError
    from adaptflow.detection.adapt import pseudo_labels
    from adaptflow.detection.models import build_detector, predict

    model = build_detector("yolov8n", 10, 64)
    images = torch.randint(0, 255, (3, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    scores = torch.cat([o["scores"] for o in predict(model, "yolov8n", images, device="cpu")])
    threshold = float(scores.median())
    boxes = pseudo_labels(model, "yolov8n", images, threshold)
    assert 0 < len(boxes) == int((scores >= threshold).sum())
    with pytest.raises(ConfigError, match=r"finetune.methods \['coral'\] adapt classifiers"):
        detection_config("yolov8n", "finetune.methods=[coral]")


def test_yolo_input_sizes_the_config_refuses_are_those_yolo_cannot_take() -> None:
    import torch
    from pydantic import ValidationError

    from adaptflow.config import ConfigError
    from adaptflow.detection.benchmark import DetectionBenchmark
    from adaptflow.detection.models import build_detector

    with pytest.raises(ConfigError, match=r"data.image_size=48: yolov8n shrinks its input 32 times, so its side must be a multiple "
                                          r"of 32; set it to 32 or 64"):
        detection_config("yolov8n", "data.image_size=48")
    model = build_detector("yolov8n", 10, 64).eval()
    with torch.no_grad(), pytest.raises(RuntimeError, match="Sizes of tensors must match"):
        model(torch.zeros(1, 3, 48, 48))  # what a run would have met, epochs in
    assert model(torch.zeros(1, 3, 64, 64)) is not None
    assert detection_config("fasterrcnn_mobilenet_v3_large_fpn", "data.image_size=48").data.image_size == 48  # it pads its input
    with pytest.raises(ValidationError, match="detection.image_size=100: yolov8n .* set it to 96 or 128"):
        DetectionBenchmark(image_size=100)


def test_a_pseudo_label_split_written_again_replaces_the_first(scenes: Path, tmp_path: Path) -> None:
    """A retried self-training stage writes its split where the first try left one: it replaces it."""
    import torch

    from adaptflow.detection.adapt import write_pseudo_split

    split = scenes / "data" / "photo_scenes" / "unlabeled"
    dest = tmp_path / "pseudo"
    first = torch.tensor([[0, 3, 8.0, 8.0, 24.0, 24.0], [1, 5, 0.0, 0.0, 32.0, 32.0]])
    write_pseudo_split(split, first, 64, dest)
    (dest / "labels" / "stale.txt").write_text("9 0.5 0.5 0.1 0.1\n")
    write_pseudo_split(split, first[1:], 64, dest)
    labels = {p.name: p.read_text() for p in (dest / "labels").iterdir()}
    assert "stale.txt" not in labels and len(labels) == TINY_SCENES["photo_scenes"]["unlabeled"]
    assert [name for name, text in labels.items() if text] == ["00001.txt"]
    assert labels["00001.txt"].split()[0] == "5"


def test_detector_self_training_trains_on_pseudo_labeled_target_images(scenes: Path) -> None:
    from adaptflow.detection import stages
    from adaptflow.io import read_json
    from adaptflow.weights import fetch_pretrained

    cfg = detection_config("yolov8n", "finetune.methods=[adabn, self_training]", "finetune.pseudo_label_threshold=0.0")
    stages.pretrain(cfg.pretrain, cfg.data, scenes / "work" / "pretrain")
    ref = fetch_pretrained(cfg.pretrained.uri)
    trained = stages.finetune(cfg.finetune, cfg.data, ref, scenes / "work" / "finetune")
    pseudo = scenes / "work" / "finetune" / "pseudo" / "labels"
    assert len(list(pseudo.iterdir())) == TINY_SCENES["photo_scenes"]["unlabeled"]
    history = read_json(scenes / "work" / "finetune" / "history.json")
    assert history[-1]["pseudo_boxes"] == sum(len(p.read_text().splitlines()) for p in pseudo.iterdir()) > 0
    assert 0.0 <= history[-1]["pseudo_precision"] <= 1.0
    assert Path(trained.path).exists()


def test_benchmark_flow_adds_the_detection_table_plot_and_child_runs(prefect_api, scenes: Path) -> None:
    from mlflow import MlflowClient

    from adaptflow import env
    from adaptflow.benchmark import BenchmarkSpec
    from adaptflow.io import read_json
    from flows.benchmark import benchmark

    methods = ["source_only", "adabn", "self_training", "finetune"]
    spec = BenchmarkSpec(
        name="tiny-detection", image_size=16, pairs=[{"source": "mnist", "target": "uci_digits"}], seeds=[0], shots=[1],
        strategies=["finetune"], methods=["adabn"], source={"epochs": 1}, adapt={"epochs": 1}, few_shot={"steps": 2, "batch_size": 8},
        eval_points=2, workers=1, output=scenes / "reports" / "benchmark",
        detection={"image_size": 64, "seeds": [0], "source_epochs": 1, "adapt_epochs": 1, "finetune_epochs": 1, "batch_size": 8,
                   "methods": methods},
    )
    result = benchmark(spec=spec)
    out = scenes / "reports" / "benchmark"
    report = (out / "report.md").read_text()
    assert "## Detection: mnist_scenes -> photo_scenes" in report
    for method in methods:
        assert f"| {method} |" in report
    assert (out / "detection_map50.png").read_bytes()[:4] == b"\x89PNG"
    detection = read_json(out / "metrics.json")["detection"]
    assert set(detection) == set(methods) and detection["source_only"]["gain"] == 0.0

    client = MlflowClient(env.default_tracking_uri())
    parent = client.get_run(result["mlflow_run_id"])
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    detection_runs = [c for c in children if c.data.params.get("task") == "detection"]
    assert sorted(c.data.params["method"] for c in detection_runs) == sorted(methods)
    assert all("target_map50" in c.data.metrics for c in detection_runs)
    assert "detection_map50.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}

    # Run again: every finished detection cell and source detector is reused, not trained again.
    models = sorted((env.cache_dir() / "benchmark" / "detection").glob("*/model.pt"))
    stamps = [p.stat().st_mtime_ns for p in models]
    benchmark(spec=spec)
    assert len(models) == len(methods) + 1 and [p.stat().st_mtime_ns for p in models] == stamps
    assert read_json(out / "metrics.json")["detection"] == detection


def test_detection_metrics_equal_torchmetrics_map_to_1e_6() -> None:
    """Jittered true boxes, duplicates, false positives, tied scores, more than 100 boxes in an image, a
    class never predicted and one never present: every number of the report matches torchmetrics'."""
    import torch

    from adaptflow.detection.metrics import detection_report, torchmetrics_report

    g = torch.Generator().manual_seed(0)
    classes = tuple(str(i) for i in range(6))
    predictions, targets = [], []
    for i in range(40):
        n = int(torch.randint(0, 6, (1,), generator=g))
        xy = torch.rand(n, 2, generator=g) * 100
        truth = {"boxes": torch.cat([xy, xy + 8 + torch.rand(n, 2, generator=g) * 20], 1),
                 "labels": torch.randint(0, 5, (n,), generator=g)}  # class 5 never present
        jitter = truth["boxes"] + torch.randn(n, 4, generator=g) * 3
        extra = 120 if i == 3 else int(torch.randint(0, 8, (1,), generator=g))
        fxy = torch.rand(extra, 2, generator=g) * 100
        boxes = torch.cat([jitter, truth["boxes"][: n // 2] + 1, torch.cat([fxy, fxy + 10], 1)])
        labels = torch.cat([truth["labels"], truth["labels"][: n // 2], torch.randint(0, 6, (extra,), generator=g)])
        labels[labels == 4] = 0 if i % 2 else 4  # class 4 predicted in some images only
        scores = (torch.rand(len(boxes), generator=g) * 10).round() / 10  # ties
        predictions.append({"boxes": boxes, "scores": scores, "labels": labels})
        targets.append(truth)
    ours, reference = detection_report(predictions, targets, classes), torchmetrics_report(predictions, targets, classes)
    for key in ("map50", "map50_95", "mar100"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-6), key
    assert 0.05 < ours["map50"] < 0.95  # a score with room on both sides, not a degenerate 0 or 1
    assert ours["ap50_95_per_class"].keys() == reference["ap50_95_per_class"].keys()
    for name, ap in reference["ap50_95_per_class"].items():
        assert (ours["ap50_95_per_class"][name] is None) == (ap is None), name
        if ap is not None:
            assert ours["ap50_95_per_class"][name] == pytest.approx(ap, abs=1e-6), name
    assert ours["ap50_95_per_class"]["5"] is None
    assert ours["pr_curve"]["precision"] == pytest.approx(reference["pr_curve"]["precision"], abs=1e-6)

"""Images as a model sees them: images of more than 8 bits through `data.window`, and served images
prepared as training decoded them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_sample_image

from adaptflow.config import WindowConfig
from adaptflow.data.folders import HighBitDepthError, load_image_folder
from adaptflow.data.pixels import prepare

#: A 12-bit sensor with a black level: an 8-bit grey value g reads g * 16 + 100.
GAIN, BLACK = 16, 100
SENSOR = WindowConfig(kind="values", low=BLACK, high=BLACK + 255 * GAIN)


def _photo_crops(n: int = 6, side: int = 64) -> np.ndarray:
    """n real greyscale crops (uint8, n x side x side) of the photographs scikit-learn ships."""
    crops = []
    for name in ("china.jpg", "flower.jpg"):
        grey = np.asarray(Image.fromarray(load_sample_image(name)).convert("L"))
        crops += [grey[y : y + side, x : x + side] for y, x in [(40, 60), (200, 300), (300, 100)]]
    return np.stack(crops[:n])


def _write(folder: Path, images: np.ndarray) -> Path:
    """Images into folder/crops/<i>.png, in their order (uint16 ones as 16-bit PNGs)."""
    (folder / "crops").mkdir(parents=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels).save(folder / "crops" / f"{i}.png")
    return folder


def _read(path: Path, mode: str | None = None) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert(mode) if mode else image)


def _raw(grey: np.ndarray, gain: float = 1.0, offset: int = 0) -> np.ndarray:
    """What the 12-bit sensor records for 8-bit grey values, at a further exposure gain and offset."""
    return np.rint((grey.astype(np.float64) * GAIN + BLACK) * gain + offset).astype(np.uint16)


def test_a_value_window_brings_sixteen_bit_images_back_to_their_eight_bit_pixels(tmp_path: Path) -> None:
    grey = _photo_crops()
    eight = load_image_folder(_write(tmp_path / "eight", grey), 32)
    sixteen = _write(tmp_path / "sixteen", _raw(grey))
    with Image.open(next(sixteen.rglob("*.png"))) as image:
        assert image.mode == "I;16"
    windowed = load_image_folder(sixteen, 32, window=SENSOR)
    assert torch.equal(windowed.images, eight.images)
    # another window is another decoding, not a cached one
    narrow = load_image_folder(sixteen, 32, window=WindowConfig(kind="values", low=BLACK, high=BLACK + 127 * GAIN))
    assert (narrow.images.float().mean() - eight.images.float().mean()) > 20


def test_a_percentile_window_cancels_each_images_exposure(tmp_path: Path) -> None:
    grey = _photo_crops()
    window = WindowConfig(kind="percentiles", low=1, high=99)
    steady = load_image_folder(_write(tmp_path / "steady", _raw(grey)), 32, window=window)
    exposures = [(0.5, 0), (3.0, 2000), (1.0, 9000), (2.0, 40), (0.8, 500), (1.5, 0)]
    varied = np.stack([_raw(g, gain, offset) for g, (gain, offset) in zip(grey, exposures, strict=True)])
    changed = load_image_folder(_write(tmp_path / "varied", varied), 32, window=window)
    assert (changed.images.int() - steady.images.int()).abs().max() <= 1
    # a fixed window sees the exposures: the same images come out brighter and darker
    fixed = load_image_folder(tmp_path / "varied", 32, window=WindowConfig(kind="values", low=0, high=65535))
    assert (fixed.images.int() - steady.images.int()).abs().float().mean() > 20


def test_a_float_image_maps_its_window_and_clips_outside(tmp_path: Path) -> None:
    values = np.linspace(-1500, 1500, 16 * 16, dtype=np.float32).reshape(16, 16)  # Hounsfield-like: air to bone
    values[0, :3] = np.nan, np.inf, -np.inf  # no reading, saturated both ways
    (tmp_path / "scans" / "a").mkdir(parents=True)
    Image.fromarray(values).save(tmp_path / "scans" / "a" / "0.tif")
    image = load_image_folder(tmp_path / "scans", 16, window=WindowConfig(kind="values", low=-1000, high=1000)).images[0]
    expected = np.clip(np.rint((values.astype(np.float64) + 1000) * 255 / 2000), 0, 255)
    expected[0, :3] = 0, 255, 0
    expected = expected.astype(np.uint8)
    assert torch.equal(image, torch.from_numpy(expected).expand(3, -1, -1))


def test_a_sixteen_bit_image_without_a_window_is_refused_naming_the_file_and_the_field(tmp_path: Path) -> None:
    folder = _write(tmp_path / "sixteen", _raw(_photo_crops(2)))
    with pytest.raises(HighBitDepthError, match=r"sixteen/crops/0\.png: I;16 image .* set data\.window"):
        load_image_folder(folder, 32)
    with pytest.raises(ValueError, match="this model was trained on 8-bit images and takes uint8"):
        prepare(_raw(_photo_crops(2)), 32)


@pytest.mark.parametrize("kind", ["eight", "sixteen"])
def test_a_served_batch_is_prepared_as_training_decoded_its_files(tmp_path: Path, kind: str) -> None:
    grey = _photo_crops()
    if kind == "eight":  # colour, as cameras give it
        rgb = np.stack([load_sample_image("china.jpg")[y : y + 64, x : x + 64] for y, x in
                        [(40, 60), (200, 300), (300, 100), (100, 400), (250, 250), (0, 0)]])
        decoded, served = load_image_folder(_write(tmp_path / "rgb", rgb), 24), prepare(rgb, 24)
    else:
        raw = _raw(grey)
        decoded, served = load_image_folder(_write(tmp_path / "raw", raw), 24, window=SENSOR), prepare(raw.astype(np.float32), 24, SENSOR)
    assert served.shape == decoded.images.shape == (6, 3, 24, 24) and served.dtype == torch.uint8
    assert (served.int() - decoded.images.int()).abs().max() <= 1


def _as_sensor_frames(domain: Path, side: int = 32) -> None:
    """Rewrite a domain's 8-bit images as 16-bit frames of a 12-bit sensor, larger than the model's input, each at
    its own exposure: what a new camera gives."""
    rng = np.random.default_rng(0)
    for path in sorted(domain.rglob("*.png")):
        with Image.open(path) as image:
            grey = np.asarray(image.convert("L").resize((side, side), Image.Resampling.BILINEAR))
        Image.fromarray(_raw(grey, rng.uniform(0.5, 2.5), int(rng.integers(0, 4000)))).save(path)


def test_a_sixteen_bit_target_trains_registers_and_serves_its_raw_frames_as_evaluated(project: Path) -> None:
    import mlflow

    from adaptflow.models import load_checkpoint
    from adaptflow.pipeline import run_transfer
    from conftest import tiny_config

    _as_sensor_frames(project / "data" / "uci_digits")
    cfg = tiny_config("data.window.kind=percentiles", "data.window.low=1", "data.window.high=99")
    result = run_transfer(cfg, project / "runs" / "sensor", version=False)
    accuracy = result["metrics"]["target_accuracy"]

    model = mlflow.pyfunc.load_model(f"models:/{cfg.registry.model_name}/{result['registration']['version']}")
    spec = model.metadata.get_input_schema().inputs[0]
    assert (spec.type, spec.shape) == (np.dtype(np.float32), (-1, -1, -1))
    test = sorted((project / "data" / "uci_digits" / "test").rglob("*.png"))
    frames = np.stack([_read(p).astype(np.float32) for p in test])
    assert frames.shape[1:] == (32, 32) and frames.max() > 255
    served = model.predict(frames)
    assert (served["class"].to_numpy() == np.array([p.parent.name for p in test])).mean() == pytest.approx(accuracy, abs=1 / len(test))
    with pytest.raises(mlflow.exceptions.MlflowException, match="dtype"):
        model.predict(frames.astype(np.uint8))  # clipped frames are not what the model saw
    assert load_checkpoint(project / "runs" / "sensor" / "finetune" / "model.pt")[1]["window"] == cfg.data.window.model_dump()


def test_the_champion_served_larger_images_scores_them_as_evaluation_scored_their_files(project: Path) -> None:
    import mlflow

    from adaptflow import tracking
    from adaptflow.config import RegistryConfig, TrackingConfig
    from adaptflow.models import load_checkpoint
    from adaptflow.training import predict

    checkpoint = project / "models" / "source" / "model.pt"  # trained at 16 px on MNIST's 28 px digits
    model, meta = load_checkpoint(checkpoint)
    test = project / "data" / "mnist" / "test"
    evaluated = predict(model, load_image_folder(test, meta["image_size"], meta["classes"]).images).softmax(1)
    reg, track = RegistryConfig(model_name="digits"), TrackingConfig()
    run_id = tracking.start_run(track, "serve", {}, {})
    version = tracking.register_model(reg, track, run_id, checkpoint, {"target_accuracy": 0.5}, {}).version
    files = sorted(test.rglob("*.png"), key=lambda p: (int(p.parent.name), p.name))
    images = np.stack([_read(p, "RGB") for p in files])
    assert images.shape[1:] == (28, 28, 3)
    served = mlflow.pyfunc.load_model(f"models:/digits/{version}").predict(images)
    assert (served["index"].to_numpy() == evaluated.argmax(1).numpy()).all()
    assert np.abs(served["score"].to_numpy() - evaluated.max(1).values.numpy()).max() < 0.01


def test_data_add_takes_sixteen_bit_images_only_with_a_window(tmp_path: Path) -> None:
    from adaptflow.data.ingest import add_images
    from adaptflow.validate import DataValidationError

    new = _write(tmp_path / "new", _raw(_photo_crops(2)))
    with pytest.raises(DataValidationError, match=r"crops/0\.png: I;16 image .* set data\.window"):
        add_images(new, tmp_path / "train")
    assert not (tmp_path / "train").exists()
    assert add_images(new, tmp_path / "train", SENSOR) == {"crops": 2}
    assert torch.equal(load_image_folder(tmp_path / "train", 32, window=SENSOR).images.sort(0).values,
                       load_image_folder(new, 32, window=SENSOR).images.sort(0).values)


def test_validation_warns_once_per_folder_of_images_whose_transparency_decoding_drops(tmp_path: Path) -> None:
    from adaptflow.validate import Report, check_image_split

    folder = tmp_path / "products"
    crops = _photo_crops(3, side=16)
    for i, grey in enumerate(crops):
        rgba = np.dstack([grey, grey, grey, np.full_like(grey, 255)])
        if i:  # a cut-out: the corners transparent
            rgba[:4, :4, 3] = 0
        (folder / "a").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgba).save(folder / "a" / f"{i}.png")
    report = Report()
    check_image_split(folder, report)
    assert report.ok and len(report.warnings) == 1
    assert str(report.warnings[0]).startswith(f"{folder}: 2 image(s) with transparent pixels (e.g. 1.png): decoding drops alpha")
    for name in ("1.png", "2.png"):
        (folder / "a" / name).unlink()
    opaque = Report()
    check_image_split(folder, opaque)
    assert opaque.ok and not opaque.warnings

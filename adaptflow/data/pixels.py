"""How stored pixels become the 8-bit RGB images a model sees, in one place for training and serving.

Training decodes each file with PIL (`folders.load_image_folder`); serving gets arrays. Both map
images of more than 8 bits through the same window (`to_8bit`) and resize the same way (PIL's
bilinear filter widens with the scale factor, as torch's `antialias=True` does), so a served model
sees what evaluation saw, to within one grey level.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from adaptflow.config import WindowConfig

#: PIL modes of single-channel images with more than 8 bits: 16-bit PNG and TIFF, 32-bit integer and float TIFF.
HIGH_BIT_MODES = frozenset({"I;16", "I;16B", "I;16L", "I;16N", "I", "F"})
#: What to do about such an image when data.window is empty.
WINDOW_FIX = "set data.window (e.g. data.window.kind=percentiles) to map its values onto 8 bits, or convert it to 8-bit L or RGB"


def recorded_window(meta: dict) -> WindowConfig | None:
    """The window a model file records (`models.save_checkpoint`), or None for a model of 8-bit images."""
    window = meta.get("window")
    return WindowConfig.model_validate(window) if window else None


def to_8bit(values: np.ndarray, window: WindowConfig) -> np.ndarray:
    """uint8 images from raw single-channel values (..., H, W): `window.low` to `window.high` map linearly
    onto 0..255 and values outside clip. For percentiles, the bounds are each image's own. NaN (no
    reading, in a float image) is black."""
    values = np.asarray(values, dtype=np.float64)
    if window.kind == "values":
        low, high = np.float64(window.low), np.float64(window.high)
    else:
        low, high = np.nanpercentile(values, [window.low, window.high], axis=(-2, -1), keepdims=True)
        high = np.maximum(high, low + np.finfo(np.float32).eps)  # a flat image: all of it at the low end
    scaled = np.nan_to_num((values - low) * (255.0 / (high - low)), nan=0.0)
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 images (N x C x H x W) at size x size, filtered as `load_image_folder` filters them."""
    if tuple(images.shape[-2:]) == (size, size):
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round_().clamp_(0, 255).to(torch.uint8)


def prepare(images: np.ndarray, size: int, window: WindowConfig | None = None) -> torch.Tensor:
    """A served batch as the model's input: uint8 N x 3 x size x size from N x H x W (grey), N x H x W x 1 or
    N x H x W x 3 images. uint8 images are taken as they are; raw values of more bits (16-bit, float) go through
    `window`, which a model trained on such images records, and are refused without one."""
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] != 3):
        raise ValueError(f"images of shape {images.shape}: expected N x H x W (grey) or N x H x W x 3 (RGB)")
    if images.dtype != np.uint8:
        if window is None:
            raise ValueError(f"{images.dtype} images: this model was trained on 8-bit images and takes uint8 (0..255); "
                             "convert them, or train with data.window to serve images of more than 8 bits")
        if images.ndim == 4:
            raise ValueError(f"{images.dtype} images of shape {images.shape}: data.window maps single-channel images; "
                             "give them as N x H x W")
        images = to_8bit(images, window)
    batch = torch.from_numpy(np.ascontiguousarray(images))
    batch = batch.unsqueeze(1).expand(-1, 3, -1, -1) if batch.ndim == 3 else batch.permute(0, 3, 1, 2)
    return resize(batch, size).contiguous()

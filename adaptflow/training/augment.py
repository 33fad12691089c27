"""Normalisation and augmentation of uint8 batches on the device: a random affine per image and a random lower resolution."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from adaptflow.models import IMAGENET_MEAN, IMAGENET_STD
from adaptflow.training import runtime


class Normalizer(nn.Module):
    """uint8 N x C x H x W -> float, scaled to [0, 1], optionally augmented, then mean/std, channels-last.

    Augmentation is a random affine and, with `low_resolution` > 0, that share of the images seen at
    a random lower resolution (`random_low_resolution`).
    """

    def __init__(self, device: torch.device, low_resolution: float = 0.0) -> None:
        super().__init__()
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
        self.low_resolution = low_resolution

    def draws(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The random numbers augmenting `n` images takes (uniform in [0, 1)): drawn once for a global
        batch, so that data-parallel workers can each apply their own rows."""
        return torch.rand(n, AFFINE_DRAWS + (LOW_RESOLUTION_DRAWS if self.low_resolution else 0), generator=generator)

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None, draws: torch.Tensor | None = None) -> torch.Tensor:
        """Augment with numbers from `generator`, or with rows of `self.draws` drawn earlier. Token ids
        (int32: text, `adaptflow.text`) pass through as they are: the model embeds them itself."""
        if images.dtype == torch.int32:
            return images
        x = images.float().div_(255.0)
        if generator is not None or draws is not None:
            u = (draws if draws is not None else self.draws(len(x), generator)).to(x.device)
            if self.low_resolution:
                x = random_low_resolution(x, self.low_resolution, u[:, AFFINE_DRAWS:])
            x = random_affine(x, None, draws=u[:, :AFFINE_DRAWS])
        return ((x - self.mean) / self.std).contiguous(memory_format=runtime.MEMORY_FORMAT)


#: Random numbers per image: the affine's angle, scale and two shifts; the low resolution's whether and how low.
AFFINE_DRAWS, LOW_RESOLUTION_DRAWS = 4, 2
#: A low-resolution image is shown at one of this many sides, geometrically spaced from LOWEST_SIDE x its side up to it.
LOW_RESOLUTION_LEVELS = 8
LOWEST_SIDE = 0.25


def affine_draws(n: int, generator: torch.Generator) -> torch.Tensor:
    """The random numbers `random_affine` uses for `n` images (n x 4, uniform in [0, 1))."""
    return torch.rand(n, AFFINE_DRAWS, generator=generator)


def random_low_resolution(x: torch.Tensor, fraction: float, draws: torch.Tensor) -> torch.Tensor:
    """A `fraction` of the images downsampled (antialiased) to a random lower side and scaled back up:
    the blur and lost detail of a lower-resolution or defocused camera. `draws` (n x 2, uniform in
    [0, 1)) pick the images and their sides among LOW_RESOLUTION_LEVELS, from LOWEST_SIDE of the side
    up to the full side (shown as it is); each side is one pair of resizes of all the images drawn for it."""
    h, w = x.shape[-2:]
    sides = torch.logspace(math.log10(LOWEST_SIDE), 0, LOW_RESOLUTION_LEVELS, device=draws.device).mul(h).round().long().clamp(1, h)
    side = sides[(draws[:, 1] * LOW_RESOLUTION_LEVELS).long().clamp(max=LOW_RESOLUTION_LEVELS - 1)]
    side[draws[:, 0] >= fraction] = h
    out = x.clone()
    for s in side.unique().tolist():
        if s == h:
            continue
        rows = (side == s).nonzero().squeeze(1).to(x.device)
        low = F.interpolate(x[rows], size=(s, max(1, round(s * w / h))), mode="bilinear", antialias=True, align_corners=False)
        out[rows] = F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)
    return out


def random_affine(
    x: torch.Tensor, generator: torch.Generator | None, degrees: float = 15.0, scale: float = 0.1, shift: float = 0.1,
    draws: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotate, scale and shift every image of a batch by its own random amount, in one grid sample.

    `draws` (from `affine_draws`) replace the generator, so that data-parallel workers can draw
    for the whole global batch and each apply its own rows.
    """
    n = x.shape[0]
    u = (draws if draws is not None else affine_draws(n, generator)).to(x.device)
    angle = (u[:, 0] * 2 - 1) * math.radians(degrees)
    s = 1 + (u[:, 1] * 2 - 1) * scale
    cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
    tx, ty = (u[:, 2] * 2 - 1) * shift * 2, (u[:, 3] * 2 - 1) * shift * 2
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, align_corners=False, padding_mode="zeros")

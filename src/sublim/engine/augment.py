"""Affine augmentation of whole normalised batches: one grid_sample call per batch.

Each sample gets a random rotation, translation, integer crop shift and horizontal flip, drawn
from a generator derived from (seed, epoch, step), so a run's augmented stream is the same on
every device and in every grouping. Areas moved in from outside the image are filled with the
normalised value of a black pixel, as zero padding of the raw image would (`meanfill=1`: with 0,
the dataset's mean colour). With `batch=1` one set of parameters is drawn per batch, from the same
generator, and applied to every image of it (the KD_wo_CE reference); a crop and flip without
rotation or translation is then an exact integer shift and flip, without grid_sample.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from .. import seeds
from ..config.augmentspec import TRANSFORMS, parse_augment


class Draw(NamedTuple):
    """Random parameters for n samples: radians, shift (fraction of [-1, 1]), crop pixels
    ([n, 2] as (x, y), None without crop) and flip (-1.0 flips, 1.0 keeps)."""

    angle: torch.Tensor
    shift: torch.Tensor
    pixels: torch.Tensor | None
    flip: torch.Tensor


class Augmenter:
    """Applies the `--augment` settings of one run to normalised [B, C, H, W] batches."""

    def __init__(
        self, text: str, seed: int, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.settings = parse_augment(text)
        self.active = any(self.settings[k] for k in TRANSFORMS)
        self.seed = seed
        self.mean, self.std = tuple(mean), tuple(std)

    def background(self, channels: int) -> tuple[float, ...]:
        """Per channel, the normalised fill value: a black pixel (1-value constants broadcast),
        or 0 (the mean colour) with meanfill=1."""
        if self.settings["meanfill"]:
            return (0.0,) * channels
        mean = self.mean * channels if len(self.mean) == 1 else self.mean
        std = self.std * channels if len(self.std) == 1 else self.std
        return tuple(-m / s for m, s in zip(mean, std, strict=True))

    def draw(self, n: int, gen: torch.Generator) -> Draw:
        """The random parameters of n samples, in the generator's fixed order."""
        s = self.settings
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(s["rotate"])
        shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * s["translate"])
        pixels = None
        if s["crop"]:
            pixels = torch.randint(-int(s["crop"]), int(s["crop"]) + 1, (n, 2), generator=gen)
        flip = torch.where(torch.rand(n, generator=gen) < s["hflip"], -1.0, 1.0)
        return Draw(angle, shift, pixels, flip)

    @staticmethod
    def theta(d: Draw, height: int, width: int) -> torch.Tensor:
        """[n, 2, 3] affine matrices (output -> input coordinates, normalised to [-1, 1])."""
        shift = d.shift
        if d.pixels is not None:
            shift = shift + d.pixels * torch.tensor([2.0 / width, 2.0 / height])
        cos, sin = torch.cos(d.angle), torch.sin(d.angle)
        theta = torch.zeros(d.angle.shape[0], 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * d.flip, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin * d.flip, cos
        theta[:, :, 2] = shift
        return theta

    def matrices(self, n: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
        """[n, 2, 3] affine matrices of n random draws."""
        return self.theta(self.draw(n, gen), height, width)

    def __call__(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """Batch `x` augmented (a new tensor), or `x` itself when nothing is enabled."""
        if not self.active:
            return x
        n, c, h, w = x.shape
        gen = seeds.generator(self.seed, "augment", epoch, step)
        bg = torch.tensor(self.background(c), device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        if self.settings["batch"]:
            d = self.draw(1, gen)
            if not self.settings["rotate"] and not self.settings["translate"]:
                dx, dy = (0, 0) if d.pixels is None else d.pixels[0].tolist()
                return _shift_flip(x, dx, dy, bool(d.flip[0] < 0), bg)
            theta = self.theta(d, h, w).to(device=x.device, dtype=x.dtype)
            grid = F.affine_grid(theta, [1, c, h, w], align_corners=False).expand(n, h, w, 2)
        else:
            theta = self.theta(self.draw(n, gen), h, w).to(device=x.device, dtype=x.dtype)
            grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
        if self.settings["meanfill"]:
            return F.grid_sample(
                x, grid, mode="bilinear", padding_mode="zeros", align_corners=False
            )
        out = F.grid_sample(
            x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out + bg


def _shift_flip(x: torch.Tensor, dx: int, dy: int, flip: bool, fill: torch.Tensor) -> torch.Tensor:
    """out[..., i, j] = x[..., i + dy, j + dx] (`fill` where that is outside), then mirrored in
    width when `flip`: a padded crop and a flip of the whole batch, exact, as a new tensor."""
    h, w = x.shape[-2:]
    y0, y1 = min(h, max(0, -dy)), max(0, min(h, h - dy))
    x0, x1 = min(w, max(0, -dx)), max(0, min(w, w - dx))
    out = torch.empty_like(x)
    if y0 >= y1 or x0 >= x1:
        out.copy_(fill.expand_as(out))
    else:
        out[..., :y0, :] = fill
        out[..., y1:, :] = fill
        out[..., :, :x0] = fill
        out[..., :, x1:] = fill
        out[..., y0:y1, x0:x1] = x[..., y0 + dy : y1 + dy, x0 + dx : x1 + dx]
    return out.flip(-1) if flip else out

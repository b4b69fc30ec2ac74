"""Affine augmentation of whole normalised batches: one grid_sample call per batch.

Each sample gets a random rotation, translation, integer crop shift and horizontal flip, drawn
from a generator derived from (seed, epoch, step), so a run's augmented stream is the same on
every device and in every grouping. Areas moved in from outside the image are filled with the
normalised value of a black pixel, as zero padding of the raw image would.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import seeds
from ..config.augmentspec import parse_augment


class Augmenter:
    """Applies the `--augment` settings of one run to normalised [B, C, H, W] batches."""

    def __init__(
        self, text: str, seed: int, mean: tuple[float, ...], std: tuple[float, ...]
    ) -> None:
        self.settings = parse_augment(text)
        self.active = any(self.settings.values())
        self.seed = seed
        self.mean, self.std = tuple(mean), tuple(std)

    def background(self, channels: int) -> tuple[float, ...]:
        """Per channel, the normalised value of a black pixel (1-value constants broadcast)."""
        mean = self.mean * channels if len(self.mean) == 1 else self.mean
        std = self.std * channels if len(self.std) == 1 else self.std
        return tuple(-m / s for m, s in zip(mean, std, strict=True))

    def matrices(self, n: int, height: int, width: int, gen: torch.Generator) -> torch.Tensor:
        """[n, 2, 3] affine matrices (output -> input coordinates, normalised to [-1, 1])."""
        s = self.settings
        angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(s["rotate"])
        shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * s["translate"])
        if s["crop"]:
            pixels = torch.randint(-int(s["crop"]), int(s["crop"]) + 1, (n, 2), generator=gen)
            shift = shift + pixels * torch.tensor([2.0 / width, 2.0 / height])
        flip = torch.where(torch.rand(n, generator=gen) < s["hflip"], -1.0, 1.0)
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = torch.zeros(n, 2, 3)
        theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
        theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
        theta[:, :, 2] = shift
        return theta

    def __call__(self, x: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        """Batch `x` augmented (a new tensor), or `x` itself when nothing is enabled."""
        if not self.active:
            return x
        n, c, h, w = x.shape
        gen = seeds.generator(self.seed, "augment", epoch, step)
        theta = self.matrices(n, h, w, gen).to(device=x.device, dtype=x.dtype)
        grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
        bg = torch.tensor(self.background(c), device=x.device, dtype=x.dtype).view(1, c, 1, 1)
        out = F.grid_sample(
            x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False
        )
        return out + bg

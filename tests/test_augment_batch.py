"""--augment batch= and meanfill=: the KD_wo_CE reference's whole-batch crop and flip, and the
per-sample path unchanged for existing strings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sublim import seeds
from sublim.config.augmentspec import canonical
from sublim.engine.augment import Augmenter

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
BLACK = tuple(-m / s for m, s in zip(MEAN, STD, strict=True))
OLD = [
    "rotate=30,translate=0.1,crop=1,hflip=0.5",
    "crop=4,hflip=0.5",
    "crop=4",
    "hflip=0.5",
    "rotate=60,crop=2",
    "translate=0.2",
]


def _frozen_per_sample(text: str, x: torch.Tensor, seed: int, epoch: int, step: int):
    """The per-sample augmentation exactly as it was before batch= and meanfill= existed."""
    s = {"rotate": 0.0, "translate": 0.0, "crop": 0, "hflip": 0.0}
    for part in text.split(","):
        key, _, raw = part.partition("=")
        s[key] = int(raw) if key == "crop" else float(raw)
    n, c, h, w = x.shape
    gen = seeds.generator(seed, "augment", epoch, step)
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(s["rotate"])
    shift = (torch.rand(n, 2, generator=gen) * 2 - 1) * (2 * s["translate"])
    if s["crop"]:
        pixels = torch.randint(-int(s["crop"]), int(s["crop"]) + 1, (n, 2), generator=gen)
        shift = shift + pixels * torch.tensor([2.0 / w, 2.0 / h])
    flip = torch.where(torch.rand(n, generator=gen) < s["hflip"], -1.0, 1.0)
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, [n, c, h, w], align_corners=False)
    bg = torch.tensor(BLACK, dtype=x.dtype).view(1, c, 1, 1)
    return (
        F.grid_sample(x - bg, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + bg
    )


@pytest.mark.parametrize("text", OLD)
def test_per_sample_path_is_bit_identical_to_before(text: str) -> None:
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    out = Augmenter(text, 11, MEAN, STD)(x, 3, 7)
    assert torch.equal(out, _frozen_per_sample(text, x, 11, 3, 7))


def test_old_strings_keep_their_canonical_form() -> None:
    assert [canonical(t) for t in OLD] == [
        "crop=1,hflip=0.5,rotate=30,translate=0.1",
        "crop=4,hflip=0.5",
        "crop=4",
        "hflip=0.5",
        "crop=2,rotate=60",
        "translate=0.2",
    ]
    assert canonical("") == canonical("none") == ""

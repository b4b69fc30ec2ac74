"""--augment batch= and meanfill=: the KD_wo_CE reference's whole-batch crop and flip, and the
per-sample path unchanged for existing strings."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sublim import seeds
from sublim.config.augmentspec import canonical, parse_augment
from sublim.engine.augment import Augmenter
from sublim.errors import ConfigError

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


def _marked(n: int = 32, size: int = 16, margin: int = 4) -> torch.Tensor:
    """Random images on a black background, each with one bright marker pixel at its own place
    at least `margin` pixels from the border."""
    gen = torch.Generator().manual_seed(1)
    x = torch.tensor(BLACK).view(1, 3, 1, 1).repeat(n, 1, size, size)
    x[:, :, margin:-margin, margin:-margin] = torch.rand(
        n, 3, size - 2 * margin, size - 2 * margin, generator=gen
    )
    inner = torch.randperm((size - 2 * margin) ** 2, generator=gen)[:n]
    ys, xs = inner // (size - 2 * margin) + margin, inner % (size - 2 * margin) + margin
    x[torch.arange(n), :, ys, xs] = 10.0
    return x


def _where(x: torch.Tensor) -> list[tuple[int, int]]:
    """(row, column) of each image's marker."""
    flat = x[:, 0].flatten(1).argmax(dim=1)
    return [(int(i) // x.shape[-1], int(i) % x.shape[-1]) for i in flat]


def _moves(x: torch.Tensor, out: torch.Tensor) -> tuple[set, set]:
    """How the markers moved: {(rows, columns)} read as a shift, and {(rows, column sum)} read
    as a shift then a mirror; one image-independent move makes one of them a single element."""
    pairs = list(zip(_where(x), _where(out), strict=True))
    shifted = {(y1 - y0, x1 - x0) for (y0, x0), (y1, x1) in pairs}
    mirrored = {(y1 - y0, x1 + x0) for (y0, x0), (y1, x1) in pairs}
    return shifted, mirrored


def test_batch_one_shares_one_crop_offset_and_flip_across_the_batch() -> None:
    x = _marked()
    padded = torch.tensor(BLACK).view(1, 3, 1, 1).repeat(32, 1, 24, 24)
    padded[:, :, 4:20, 4:20] = x  # the reference's padding, exactly
    a = Augmenter("crop=4,hflip=0.5,batch=1", 3, MEAN, STD)
    seen = set()
    for step in range(40):
        out = a(x, 0, step)
        shifted, mirrored = _moves(x, out)
        # exactly one reading fits every image with one move
        assert sorted([len(shifted), len(mirrored)])[0] == 1, (shifted, mirrored)
        assert len(shifted) != len(mirrored)  # distinct marker columns: the reading is unique
        flip = len(mirrored) == 1
        ((rows, cols),) = mirrored if flip else shifted
        # out[i, j] = x[i + dy, j + dx] (then mirrored): the reference's padded crop
        dy, dx = -rows, cols - 15 if flip else -cols
        assert max(abs(dy), abs(dx)) <= 4
        want = padded[:, :, 4 + dy : 20 + dy, 4 + dx : 20 + dx]
        assert torch.equal(out, want.flip(-1) if flip else want)
        seen.add((dy, dx, flip))
    assert len(seen) > 20 and {f for *_, f in seen} == {False, True}
    # per sample (batch=0) the images of one batch move differently
    shifted, mirrored = _moves(x, Augmenter("crop=4,hflip=0.5", 3, MEAN, STD)(x, 0, 0))
    assert min(len(shifted), len(mirrored)) > 5


@pytest.mark.parametrize("spec", ["crop=4,hflip=0.5", "crop=1", "hflip=0.5", "crop=20,hflip=1"])
def test_the_integer_fast_path_matches_the_grid_path(spec: str) -> None:
    """batch=1 crop and flip (integer shift, no grid_sample) equal grid_sample of the same draw;
    shifts beyond the image size leave only the fill."""
    x = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    fast = Augmenter(f"{spec},batch=1", 5, MEAN, STD)
    # rotate=1e-9 forces the grid path with the same draw order (angle, shift, crop, flip)
    grid = Augmenter(f"{spec},batch=1,rotate=1e-9", 5, MEAN, STD)
    for step in range(10):
        torch.testing.assert_close(fast(x, 1, step), grid(x, 1, step), atol=1e-5, rtol=0)


@pytest.mark.parametrize("extra", ["rotate=30", "translate=0.1", "rotate=20,crop=3,hflip=0.5"])
def test_batch_one_applies_the_same_transform_to_every_image(extra: str) -> None:
    """One draw per batch, whatever the batch size: each image alone gets the same result."""
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    a = Augmenter(f"{extra},batch=1", 9, MEAN, STD)
    out = a(x, 2, 5)
    alone = torch.cat([a(x[i : i + 1], 2, 5) for i in range(6)])
    torch.testing.assert_close(out, alone, atol=1e-6, rtol=0)
    per_sample = Augmenter(extra, 9, MEAN, STD)(x, 2, 5)
    assert not torch.allclose(out, per_sample)


@pytest.mark.parametrize("batch", [0, 1])
@pytest.mark.parametrize("spec", ["crop=4", "rotate=45", "translate=0.3"])
def test_padding_is_black_or_zero_with_meanfill(batch: int, spec: str) -> None:
    x = torch.full((16, 3, 16, 16), 2.0)
    for meanfill, fill in [(0, BLACK), (1, (0.0, 0.0, 0.0))]:
        a = Augmenter(f"{spec},batch={batch},meanfill={meanfill}", 0, MEAN, STD)
        outs = torch.cat([a(x, 0, step) for step in range(8)])
        filled = (outs - 2.0).abs().amax(dim=1) > 1e-4  # pixels not (only) from the image
        pure = (outs - torch.tensor(fill).view(1, 3, 1, 1)).abs().amax(dim=1) < 1e-5
        assert pure.any(), "no pixel was moved in from outside"
        assert pure[filled].float().mean() > 0.3  # the rest: bilinear edges between the two
        if spec == "crop=4":  # integer shifts: every moved-in pixel is exactly the fill
            assert torch.equal(pure, filled)


def test_deterministic_per_seed_epoch_and_step() -> None:
    x = _marked()
    for text in ["crop=4,hflip=0.5,batch=1", "rotate=30,crop=2,batch=1,meanfill=1"]:
        a = Augmenter(text, 7, MEAN, STD)
        assert torch.equal(a(x, 2, 3), Augmenter(text, 7, MEAN, STD)(x, 2, 3))
        assert not all(torch.equal(a(x, 2, 3), a(x, 2, s)) for s in range(4, 8))
        assert not all(torch.equal(a(x, 2, 3), a(x, e, 3)) for e in range(3, 7))
        b = Augmenter(text, 8, MEAN, STD)
        assert not all(torch.equal(a(x, 2, s), b(x, 2, s)) for s in range(4))


def test_switches_alone_change_nothing() -> None:
    x = _marked()
    for text in ["batch=1", "meanfill=1", "batch=1,meanfill=1", "batch=0,meanfill=0"]:
        assert Augmenter(text, 0, MEAN, STD)(x, 0, 0) is x
        assert canonical(text) == ""
    assert canonical("hflip=0.5,meanfill=1") == "hflip=0.5"  # nothing moved in: no fill
    assert canonical("crop=4,hflip=0.5,batch=0,meanfill=0") == "crop=4,hflip=0.5"
    assert canonical("meanfill=1,crop=4,batch=1,hflip=0.5") == (
        "batch=1,crop=4,hflip=0.5,meanfill=1"
    )
    assert parse_augment("crop=4,batch=1")["batch"] == 1


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("crop=4,batch=2", "batch: expected 0 or 1"),
        ("crop=4,batch=yes", "batch: expected 0 or 1"),
        ("crop=4,meanfill=0.5", "meanfill: expected 0 or 1"),
        ("crop=4,meanfill=-1", "meanfill: expected 0 or 1"),
        ("crop=4,fill=mean", "keys rotate, translate, crop, hflip, batch, meanfill"),
    ],
)
def test_bad_switch_values_are_rejected_in_one_line(bad: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_augment(bad)
    text = str(err.value)
    assert "\n" not in text
    assert text.startswith(f"--augment: invalid value {bad!r}; ")
    assert message in text

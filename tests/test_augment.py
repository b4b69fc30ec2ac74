"""--augment: parsing, determinism, exact geometry of each transform, statistics, wiring."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from sublim import ExperimentConfig
from sublim.config.augmentspec import canonical, parse_augment
from sublim.engine.augment import Augmenter
from sublim.engine.teacher import teacher_key
from sublim.errors import ConfigError

MEAN, STD = (0.1307,), (0.3081,)
BLACK = -MEAN[0] / STD[0]


def _images(n: int = 64, size: int = 12) -> torch.Tensor:
    """Normalised images: random blobs on a black background, away from the border."""
    gen = torch.Generator().manual_seed(0)
    x = torch.full((n, 1, size, size), BLACK)
    x[:, :, 3:-3, 3:-3] = torch.rand(n, 1, size - 6, size - 6, generator=gen) * 3
    return x


def test_parse_and_canonical_form() -> None:
    assert parse_augment("rotate=60, crop=2") == {
        "rotate": 60.0,
        "translate": 0,
        "crop": 2,
        "hflip": 0,
        "batch": 0,
        "meanfill": 0,
    }
    assert canonical("crop=2,rotate=60.0") == canonical("rotate=60,crop=2") == "crop=2,rotate=60"
    assert canonical("") == canonical("none") == canonical("rotate=0") == ""
    for bad, message in [
        ("rotate", "key=value"),
        ("zoom=2", "key=value"),
        ("crop=1.5", "crop: expected a int"),
        ("translate=2", "translate: expected 0..1"),
        ("hflip=nan", "hflip: expected 0..1"),
    ]:
        with pytest.raises(ConfigError, match=f"--augment: invalid value .*{message}"):
            parse_augment(bad)


def test_nothing_enabled_is_the_identity() -> None:
    x = _images()
    assert Augmenter("", 0, MEAN, STD)(x, 0, 0) is x


def test_deterministic_per_seed_epoch_and_step() -> None:
    x = _images()
    a = Augmenter("rotate=30,translate=0.1,crop=1,hflip=0.5", 7, MEAN, STD)
    assert torch.equal(a(x, 2, 3), a(x, 2, 3))
    assert not torch.equal(a(x, 2, 3), a(x, 2, 4))
    assert not torch.equal(a(x, 2, 3), Augmenter("rotate=30", 8, MEAN, STD)(x, 2, 3))


def test_crop_is_an_integer_shift_with_black_fill_uniform_over_the_range() -> None:
    x = _images(n=600)
    out = Augmenter("crop=2", 1, MEAN, STD)(x, 0, 0)
    shifts = Counter()
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), value=BLACK)
    for i in range(x.shape[0]):
        found = [
            (dy, dx)
            for dy in range(-2, 3)
            for dx in range(-2, 3)
            if torch.allclose(
                out[i, 0], padded[i, 0, 2 + dy : 14 + dy, 2 + dx : 14 + dx], atol=1e-5
            )
        ]
        assert found, f"sample {i} is not an integer shift of its input"
        shifts.update(found[:1])
    per_axis = Counter(dy for dy, _ in shifts.elements())
    assert sorted(per_axis) == [-2, -1, 0, 1, 2]
    assert all(80 <= c <= 160 for c in per_axis.values()), per_axis  # 120 expected each


def test_hflip_one_mirrors_every_image() -> None:
    x = _images()
    out = Augmenter("hflip=1", 0, MEAN, STD)(x, 0, 0)
    torch.testing.assert_close(out, x.flip(-1), atol=1e-5, rtol=0)


def test_rotation_angles_are_uniform_and_keep_the_content() -> None:
    a = Augmenter("rotate=60", 3, MEAN, STD)
    theta = a.matrices(4000, 12, 12, torch.Generator().manual_seed(0))
    angles = torch.rad2deg(torch.atan2(theta[:, 1, 0], theta[:, 0, 0]))
    assert angles.abs().max() <= 60.0001
    assert abs(angles.mean().item()) < 2.0
    assert angles.std().item() == pytest.approx(60 / 3**0.5, rel=0.05)  # uniform on [-60, 60]
    x = _images()
    out = a(x, 0, 0)
    # a rotation about the centre moves the blob but keeps its mass (border is black)
    mass = (x - BLACK).sum(dim=(1, 2, 3))
    assert torch.allclose((out - BLACK).sum(dim=(1, 2, 3)), mass, rtol=0.08)


def test_augment_enters_the_teacher_identity_and_changes_training() -> None:
    base = ExperimentConfig()
    aug = ExperimentConfig(augment="rotate=60,crop=2")
    assert teacher_key(base) != teacher_key(aug)
    assert base.config_hash != aug.config_hash
    assert ExperimentConfig(augment="crop=2,rotate=60").config_hash == aug.config_hash

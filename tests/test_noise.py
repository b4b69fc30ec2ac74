"""Noise samplers: statistics, ranges, normalisation and the fixed student stream."""

from __future__ import annotations

import math

import pytest
import torch

from sublim.config import ExperimentConfig
from sublim.data.noise import noise_batch, perlin, sample_noise
from sublim.engine.train import student_noise

SHAPE = (1, 28, 28)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_uniform_statistics() -> None:
    x = sample_noise("uniform", 2000, SHAPE, _gen())
    assert x.shape == (2000, *SHAPE) and x.dtype == torch.float32
    assert -1 <= x.min() and x.max() <= 1
    assert abs(x.mean().item()) < 0.005
    assert abs(x.var().item() - 1 / 3) < 0.005


def test_normal_statistics() -> None:
    x = sample_noise("normal", 2000, SHAPE, _gen())
    assert abs(x.mean().item()) < 0.005 and abs(x.std().item() - 1) < 0.005


def test_perlin_is_smooth_and_scaled_to_unit_max() -> None:
    x = perlin(200, SHAPE, 4, _gen())
    peak = x.abs().flatten(1).amax(dim=1)
    assert torch.allclose(peak, torch.ones(200))
    # gradient noise is spatially smooth: neighbours are strongly correlated, unlike white noise
    a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
    corr = torch.corrcoef(torch.stack((a, b)))[0, 1].item()
    assert corr > 0.9
    assert abs(x.mean().item()) < 0.05


def test_perlin_resolution_changes_the_spatial_scale() -> None:
    def corr(res: int) -> float:
        x = perlin(200, SHAPE, res, _gen())
        a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
        return torch.corrcoef(torch.stack((a, b)))[0, 1].item()

    assert corr(2) > corr(8) > corr(14)


def test_normalize_applies_mean_and_std() -> None:
    raw = noise_batch(3, ("p",), 0, "uniform", 500, SHAPE)
    norm = noise_batch(3, ("p",), 0, "uniform", 500, SHAPE, normalize=((0.1307,), (0.3081,)))
    assert torch.allclose(norm, (raw - 0.1307) / 0.3081)


def test_out_buffer_gives_the_same_values() -> None:
    for dist in ("uniform", "normal", "perlin"):
        a = noise_batch(1, ("s",), 5, dist, 10, SHAPE)
        b = noise_batch(1, ("s",), 5, dist, 10, SHAPE, out=torch.full((10, *SHAPE), math.nan))
        assert torch.equal(a, b)


@pytest.mark.parametrize("dist", ["uniform", "normal", "perlin"])
def test_student_stream_is_independent_of_steps_per_epoch(dist: str) -> None:
    """Batch i is the same whatever noise_steps and student_epochs say."""
    a = ExperimentConfig(noise_steps=4, student_epochs=3, noise_dist=dist)
    b = ExperimentConfig(noise_steps=7, student_epochs=1, noise_dist=dist)
    cpu = torch.device("cpu")
    for i in (0, 3, 5):
        assert torch.equal(student_noise(a, i, cpu), student_noise(b, i, cpu))
    assert not torch.equal(student_noise(a, 0, cpu), student_noise(a, 1, cpu))
    assert not torch.equal(student_noise(a, 0, cpu), student_noise(a.replace(seed=1), 0, cpu))

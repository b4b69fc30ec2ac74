"""Noise samplers for the student stage: uniform, normal and Perlin, on whole batches.

Each batch comes from its own generator (see `noise_batch`), so batch i of a stream is the same
whatever the number of steps per epoch, the number of epochs or the order runs execute in.
"""

from __future__ import annotations

import torch

from .. import seeds

NOISE_DISTS = ("uniform", "normal", "perlin")


def _fade(t: torch.Tensor) -> torch.Tensor:
    return t * t * t * (t * (t * 6 - 15) + 10)


def perlin(n: int, shape: tuple[int, int, int], res: int, gen: torch.Generator) -> torch.Tensor:
    """2-D gradient (Perlin) noise on a res x res grid over H x W, each sample scaled to max |1|.

    Every channel gets its own gradients. Vectorised over samples; no per-sample Python.
    """
    c, h, w = shape
    angles = torch.rand(n * c, res + 1, res + 1, generator=gen) * (2 * torch.pi)
    grads = torch.stack((torch.cos(angles), torch.sin(angles)), dim=-1)  # [nc, r+1, r+1, 2]
    ys = torch.arange(h, dtype=torch.float32) * (res / h)
    xs = torch.arange(w, dtype=torch.float32) * (res / w)
    y0, x0 = ys.floor().long(), xs.floor().long()
    fy, fx = ys - y0, xs - x0  # fractional position inside the cell
    fy2, fx2 = fy[:, None].expand(h, w), fx[None, :].expand(h, w)
    yi, xi = y0[:, None].expand(h, w), x0[None, :].expand(h, w)

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = grads[:, yi + dy, xi + dx]  # [nc, h, w, 2]
        return g[..., 0] * (fy2 - dy) + g[..., 1] * (fx2 - dx)

    uy, ux = _fade(fy2), _fade(fx2)
    top = torch.lerp(corner(0, 0), corner(0, 1), ux)
    bottom = torch.lerp(corner(1, 0), corner(1, 1), ux)
    out = torch.lerp(top, bottom, uy).reshape(n, c * h * w)
    scale = out.abs().amax(dim=1, keepdim=True).clamp_min(1e-12)
    return (out / scale).reshape(n, c, h, w)


def sample_noise(
    dist: str,
    n: int,
    shape: tuple[int, int, int],
    gen: torch.Generator,
    perlin_res: int = 4,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """n float32 noise images of `shape` (C, H, W): U[-1, 1], N(0, 1) or Perlin in [-1, 1].

    Fills `out` in place when given (same values as a fresh tensor).
    """
    if out is None:
        out = torch.empty((n, *shape))
    if dist == "uniform":
        return out.uniform_(-1.0, 1.0, generator=gen)
    if dist == "normal":
        return out.normal_(generator=gen)
    if dist == "perlin":
        return out.copy_(perlin(n, shape, perlin_res, gen))
    raise ValueError(f"unknown noise distribution {dist!r}; allowed: {', '.join(NOISE_DISTS)}")


def noise_batch(
    seed: int,
    purpose: tuple[object, ...],
    index: int,
    dist: str,
    n: int,
    shape: tuple[int, int, int],
    perlin_res: int = 4,
    normalize: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Batch `index` of the noise stream (seed, *purpose), optionally normalised (x - mean) / std.

    Drawn on the CPU so that a stream is identical on every device.
    """
    gen = seeds.generator(seed, *purpose, index)
    x = sample_noise(dist, n, shape, gen, perlin_res, out)
    if normalize is not None:
        mean, std = normalize
        m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
        s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
        x = x.sub_(m).div_(s)
    return x

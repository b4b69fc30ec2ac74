"""Representational similarity: linear CKA and RSA, for one pair or batched over K stacked models.

Inputs are [N, D] or [K, N, D] (flatten per-sample features first); leading dimensions broadcast,
so one teacher [N, D] against K students [K, N, D] gives K values.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .gram import center_gram


def _center(x: Tensor) -> Tensor:
    x = x if x.is_floating_point() else x.float()
    return x - x.mean(dim=-2, keepdim=True)


def linear_cka(x: Tensor, y: Tensor) -> Tensor:
    """Linear CKA (Kornblith et al. 2019) of features centered over the N samples.

    |Yc^T Xc|_F^2 / (|Xc^T Xc|_F |Yc^T Yc|_F), through whichever of the D x D or N x N forms is
    cheaper; invariant to orthogonal transforms and isotropic scaling. A constant input gives NaN.
    """
    x, y = _center(x), _center(y)
    n, dx, dy = x.shape[-2], x.shape[-1], y.shape[-1]
    if n * n * (dx + dy) < n * (dx * dy + dx * dx + dy * dy):
        return linear_cka_gram(x @ x.mT, y @ y.mT, centered=True)
    xy = (y.mT @ x).square().sum((-2, -1))
    xx = (x.mT @ x).square().sum((-2, -1))
    yy = (y.mT @ y).square().sum((-2, -1))
    return xy / (xx * yy).sqrt()


def linear_cka_gram(kx: Tensor, ky: Tensor, *, centered: bool = False) -> Tensor:
    """Linear CKA from Gram matrices [..., N, N] (uncentered unless `centered`)."""
    if not centered:
        kx, ky = center_gram(kx), center_gram(ky)
    xy = (kx * ky).sum((-2, -1))
    return xy / ((kx * kx).sum((-2, -1)) * (ky * ky).sum((-2, -1))).sqrt()


def rdm(x: Tensor) -> Tensor:
    """Representational dissimilarity matrix 1 - Pearson correlation between samples' features."""
    x = x if x.is_floating_point() else x.float()
    z = x - x.mean(dim=-1, keepdim=True)
    z = z / z.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)
    return 1 - z @ z.mT


def rsa(x: Tensor, y: Tensor) -> Tensor:
    """RSA: Pearson correlation of the upper triangles (n < m) of the two RDMs (1 - correlation).

    Pearson, not the classic Spearman: no ranking, so it is cheap, batched and deterministic; a
    monotone but non-linear relation between the RDMs scores below 1.
    """
    u, v = _centered_triangle(rdm(x)), _centered_triangle(rdm(y))
    return (u * v).sum(-1) / (u.norm(dim=-1) * v.norm(dim=-1))


def _centered_triangle(r: Tensor) -> Tensor:
    """The upper triangle (n < m) of RDMs [..., N, N] as vectors, centered: what RSA correlates."""
    n = r.shape[-1]
    iu = torch.triu_indices(n, n, offset=1, device=r.device)
    u = r[..., iu[0], iu[1]]
    return u - u.mean(-1, keepdim=True)


class RepSummary(NamedTuple):
    """What linear CKA and RSA need of one representation on N samples, O(N^2) in memory.

    `gram`: the sample-centered Gram matrix [N, N] scaled to unit Frobenius norm, so linear CKA
    of two summaries is a dot product; `rdm`: the upper triangle (i < j) of the RDM, centered
    and scaled to unit norm, so RSA is one too.
    """

    gram: Tensor
    rdm: Tensor


def summarize(x: Tensor) -> RepSummary:
    """The CKA/RSA summary of features [N, ...] (flattened per sample), from one Gram matrix.

    One N x N x D matmul whatever D, so a 25,000-value conv map costs no more memory than a
    256-wide layer; the features can be dropped as soon as this returns.
    """
    f = x.reshape(x.shape[0], -1)
    f = f if f.dtype in (torch.float32, torch.float64) else f.float()
    d = f.shape[1]
    g = f @ f.T
    s = f.sum(dim=1)
    # the samples' Pearson correlations from the uncentered Gram: center each row over features
    rc = g - torch.outer(s, s) / d
    scale = rc.diagonal().clamp_min(torch.finfo(rc.dtype).tiny).rsqrt()
    u = _centered_triangle(1 - rc * scale[:, None] * scale[None, :])
    kc = center_gram(g)
    return RepSummary(kc / kc.square().sum(dtype=torch.float64).sqrt().to(kc.dtype), u / u.norm())


def compare_summaries(a: RepSummary, b: RepSummary) -> tuple[float, float]:
    """(linear CKA, RSA) of two representations of the same N samples; NaN when undefined.

    Dot products of the unit-norm summaries, summed in float64 on the CPU (MPS has no float64).
    """

    def dot(u: Tensor, v: Tensor) -> float:
        return float((u.cpu() * v.cpu()).sum(dtype=torch.float64))

    return dot(a.gram, b.gram), dot(a.rdm, b.rdm)

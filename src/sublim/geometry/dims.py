"""Intrinsic dimensions (PCA, TwoNN) and a linear probe, all computed from Gram matrices."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

TWONN_DISCARD = 0.1  # fraction of the largest mu ratios left out of the TwoNN fit (Facco et al.)
PROBE_STEPS = 200


def pca_dims(variances: Tensor, thresholds: tuple[float, ...] = (0.9, 0.95)) -> list[float]:
    """Number of leading principal axes explaining each fraction of the total variance (NaN
    when there is no variance)."""
    v = variances.double().clamp_min(0).sort(descending=True).values
    if not float(v.sum()) > 0:
        return [math.nan for _ in thresholds]
    cum = v.cumsum(0) / v.sum()
    return [min(int((cum < t).sum()) + 1, v.numel()) for t in thresholds]


def twonn(gram: Tensor, discard: float = TWONN_DISCARD) -> float:
    """TwoNN intrinsic dimension of the L2-normalised samples whose uncentered Gram is `gram`.

    mu = r2 / r1 (second over first nearest-neighbour distance; samples with r1 = 0 or r2 = r1
    dropped, as the reference drops r2 = r1); with mu sorted, F_i = i / n and the largest
    `discard` fraction left out, d is the least-squares slope through the origin of
    -ln(1 - F) against ln mu: d = sum(x y) / sum(x^2). The reference fits the same line by SGD
    on a Huber loss without discarding.
    """
    norms = gram.diagonal().clamp_min(0).sqrt()
    live = norms > 0  # a zero vector has no direction
    if int(live.sum()) < 3:
        return math.nan
    if not bool(live.all()):
        gram, norms = gram[live][:, live], norms[live]
    d2 = gram.div(norms[:, None]).div_(norms[None, :]).mul_(-2.0).add_(2.0)
    d2.fill_diagonal_(math.inf)
    near = torch.topk(d2, 2, dim=1, largest=False).values.double().clamp_min(0)
    r1, r2 = near[:, 0].sqrt(), near[:, 1].sqrt()
    keep = (r1 > 0) & (r2 > r1) & torch.isfinite(r2)
    mu = (r2[keep] / r1[keep]).sort().values
    n = mu.numel()
    if n < 2:
        return math.nan
    m = max(int(n * (1 - discard)), 1)
    x = mu[:m].log()
    y = -torch.log1p(-torch.arange(m, dtype=torch.float64) / n)
    return float((x * y).sum() / (x * x).sum())


def linear_probe(
    centered_gram: Tensor,
    labels: Tensor,
    num_classes: int,
    top_eig: float,
    steps: int = PROBE_STEPS,
) -> float:
    """Training accuracy of a softmax linear classifier fitted by full-batch gradient descent.

    Features are centered (and scaled by the largest variance), weights start at zero and the step
    is 1/L for the cross-entropy's smoothness bound L; deterministic, so no seed. From zero, the
    weights stay in the span of the samples (W = F^T alpha), so the logits are K alpha + b and
    each step costs one N x N x C product: the Gram is enough.
    """
    n = labels.numel()
    if top_eig <= 0:
        return float((labels == labels.mode().values).double().mean())
    k = centered_gram.double() / top_eig  # largest eigenvalue 1: L = 1 / (2 n) for the weights
    onehot = F.one_hot(labels.long(), num_classes).double()
    alpha = torch.zeros(n, num_classes, dtype=torch.float64)
    bias = torch.zeros(num_classes, dtype=torch.float64)
    lr_alpha, lr_bias = 2.0 * n, 2.0  # 1/L, applied to the mean gradient (P - Y) / n
    for _ in range(steps):
        resid = torch.softmax(k @ alpha + bias, dim=1) - onehot
        alpha -= lr_alpha * resid / n
        bias -= lr_bias * resid.mean(0)
    pred = (k @ alpha + bias).argmax(1)
    return float((pred == labels.long()).double().mean())

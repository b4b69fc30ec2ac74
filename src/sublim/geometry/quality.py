"""Per-layer knowledge quality (S, I, E, Q) from Gram matrices, as KD_wo_CE computes it (spec 2.2-2.3).

Sample set A gives the uncentered Gram G = F F^T: norms are its diagonal, |cos| = |G| / (|f_n| |f_m|),
squared distances |f_n|^2 + |f_m|^2 - 2 G. Set B gives one centered spectrum per class. Memory is
O(N^2), never O(N * D).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .dims import linear_probe, pca_dims, twonn
from .gram import center_gram, centered_spectrum

ED_THRESHOLD = 0.95  # class-wise embedding dimension: variance fraction
# The reference's divisor of I; its comment says "capped at 500 samples/class" (ln 500 meant?).
LN_DIVISOR = math.log(5)


def _class_index(labels: Tensor) -> list[Tensor]:
    return [torch.nonzero(labels == c).reshape(-1) for c in labels.unique(sorted=True)]


def separation_terms(g: Tensor, labels: Tensor) -> dict[str, float]:
    """Stats 4 and 6 of the reference on A: |cos| averages and minima, class norms, min inter distance."""
    groups = _class_index(labels)
    norms = g.diagonal().clamp_min(0).sqrt()
    sq = g.diagonal().double()
    cos = g.div(norms[:, None]).div_(norms[None, :]).abs_()
    onehot = torch.zeros(labels.numel(), len(groups), dtype=cos.dtype)
    for c, idx in enumerate(groups):
        onehot[idx, c] = 1.0
    block_sum = onehot.T @ (cos @ onehot)  # [C, C] sums of |cos| over class blocks
    sizes = onehot.sum(0)
    diag = torch.stack([cos.diagonal()[idx].sum() for idx in groups])
    avg_intra = (block_sum.diagonal() - diag) / (sizes * (sizes - 1))
    inter = block_sum / (sizes[:, None] * sizes[None, :])
    off = ~torch.eye(len(groups), dtype=torch.bool)
    cos.fill_diagonal_(math.inf)
    min_intra = torch.stack([cos[idx][:, idx].min() for idx in groups])
    del cos
    min_inter_sq = []
    for idx in groups:
        rows = sq[idx, None] + sq[None, :] - 2.0 * g[idx].double()  # float64: less cancellation
        rows[:, idx] = math.inf
        min_inter_sq.append(rows.min())
    min_inter = torch.stack(min_inter_sq).clamp_min(0).sqrt()
    class_norm = torch.stack([norms[idx].mean() for idx in groups])
    return {
        "cos_intra": float(avg_intra.double().mean()),
        "cos_inter": float(inter[off].double().mean()),
        "cos_min_intra": float(min_intra.double().mean()),
        "dist_min_inter": float(min_inter.double().mean()),
        "norm_mean": float(class_norm.double().mean()),
    }


def spectral_terms(spectra: list[Tensor], per_class: list[int]) -> dict[str, float]:
    """ED and class-wise spectral entropies from B's per-class spectra, the reference's way and corrected.

    Reference: ratios zero-padded to W = max n_c; ED_c = first k <= W-1 with cumulative >= 0.95;
    entropy over the first M = sum_c ED_c columns (capped at W), zeros -> 1e-127 in float32 (which
    underflows to 0, so a padded zero makes that class's entropy NaN -> 0, as in the reference).
    Corrected: each class's own first ED_c ratios, renormalised, entropy / ln(n_c).
    """
    width = max(per_class)
    lam = torch.zeros(len(spectra), width, dtype=torch.float32)
    for c, s in enumerate(spectra):
        total = s.sum()
        ratios = s / total
        ratios = (
            torch.where(ratios > 0, ratios, torch.full_like(ratios, 1e-30)) if total > 0 else ratios
        )
        lam[c, : s.numel()] = ratios.float()
    ed = torch.zeros(len(spectra), dtype=torch.long)
    if width > 1:
        stop = ~(lam.cumsum(1)[:, : width - 1] < ED_THRESHOLD)  # NaN stops, as in the reference
        ed = torch.where(stop.any(1), stop.long().argmax(1) + 1, width - 1).clamp_max(width - 1)
    cut = int(ed.sum())
    p = lam[:, :cut]
    p = torch.where(p == 0, 1e-127, p)
    p = p / p.sum(1, keepdim=True)
    h = -(p * torch.log(p)).sum(1)
    h[h != h] = 0
    h_corr = []
    for c in range(len(spectra)):
        q = lam[c, : int(ed[c])].double()
        q = q / q.sum()
        h_corr.append(float(-torch.special.xlogy(q, q).sum()) / math.log(per_class[c]))
    return {
        "ed": float(ed.double().mean()),
        "entropy": float(h.double().mean()),
        "entropy_corrected": float(sum(h_corr) / len(h_corr)),
    }


def combine(terms: dict[str, float], d_g: int, n_train: int) -> dict[str, float]:
    """S, I, E, Q and the corrected I and Q from the separation and spectral terms."""
    s = terms["cos_intra"] - terms["cos_inter"]
    i = (1 - terms["cos_min_intra"]) * terms["entropy"] / LN_DIVISOR
    i_corr = (1 - terms["cos_min_intra"]) * terms["entropy_corrected"]
    k = (n_train / math.pi) ** (1 / d_g)
    e = k * 2 * terms["dist_min_inter"] / terms["norm_mean"]
    root = math.sqrt(i * e) if i * e >= 0 else math.nan
    root_corr = math.sqrt(i_corr * e) if i_corr * e >= 0 else math.nan
    return {
        "s": s,
        "i": i,
        "e": e,
        "q": s + root,
        "sqrt_ie": root,
        "i_corrected": i_corr,
        "q_corrected": s + root_corr,
        "k": k,
        "d_g": d_g,
    }


def layer_row(
    g: Tensor,
    labels: Tensor,
    spectra: list[Tensor],
    per_class_b: list[int],
    *,
    dim: int,
    n_train: int,
    variances: Tensor | None = None,
    probe: bool = False,
) -> dict[str, float]:
    """Every metric of one layer from A's Gram `g` (labels `labels`) and B's per-class spectra.

    `variances` are A's principal variances when the caller has them cheaper than from `g`
    (a layer narrower than |A|); otherwise they come from the centered Gram.
    """
    labels = labels.reshape(-1).long()
    n = labels.numel()
    row = separation_terms(g, labels)
    row.update(spectral_terms(spectra, per_class_b))
    row.update(combine(row, min(n, dim), n_train))
    row["twonn"] = twonn(g)
    if variances is None:
        variances = centered_spectrum(g, min(n, dim))
    row["pca90"], row["pca95"] = pca_dims(variances)
    if probe:
        num_classes = int(labels.max()) + 1
        top = float(variances.max()) if variances.numel() else 0.0
        row["probe_acc"] = linear_probe(center_gram(g), labels, num_classes, top)
    return row

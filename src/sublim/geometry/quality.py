"""Per-layer knowledge quality (S, I, E, Q) from Gram matrices: KD_wo_CE's numbers and corrected ones.

Two families of columns (KD_wo_CE spec 2.2-2.3):
- `s`, `i`, `e`, `q`, `sqrt_ie`: what the reference code computes (Analysis.py, TrainerUtils.py),
  its quirks included: the intra-class |cos| mean and minimum over the whole class block, the
  diagonal of ones included (a 2 x P index tensor selects whole rows); I's entropy over the first
  M = sum_c ED_c ratios in float32, where the 1e-127 that should replace zero ratios underflows,
  so a class whose cut reaches a zero (padding past min(n_c, D)) gets entropy NaN -> 0; ln 5.
- `s_corrected`, `i_corrected`, `q_corrected`, `sqrt_ie_corrected`: the intended math, in float64:
  the mean over pairs n < m, and each class's entropy over its own ED_c ratios / ln n_c.
E is shared. Set A's Gram arrives centered (plus the mean's projections, see `Grams`), so
distances and cosines stay accurate under a large common offset; B's class spectra come from
Grams of class-centered features (float32 products, as the reference's float32 SVD). Memory is
O(N^2), never O(N * D).

A degenerate layer (a zero feature vector, or no within-class variance anywhere) gets NaN where a
term is undefined instead of an exception; `degenerate_classes` counts B's classes with zero
within-class variance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .dims import linear_probe, pca_dims, twonn
from .gram import eigvals_desc

ED_THRESHOLD = 0.95  # class-wise embedding dimension: variance fraction
# The reference's divisor of I; its comment says "capped at 500 samples/class" (ln 500 meant?).
LN_DIVISOR = math.log(5)
RATIO_FLOOR = 1e-30  # a computed ratio that rounds to <= 0: LAPACK's float32 SVD gives ~1e-15
KEY_COLUMNS = ("s", "i", "e", "q", "s_corrected", "i_corrected", "q_corrected")


@dataclass
class Grams:
    """Set A's Gram, kept so that both centered and uncentered products are accurate.

    `centered` is X_c X_c^T (float32) with X_c = F - mean(F); `proj` the float64 X_c mean;
    `mean_sq` |mean|^2. F F^T = centered + proj_i + proj_j + mean_sq (see `uncentered`).
    """

    centered: Tensor
    proj: Tensor
    mean_sq: float

    @classmethod
    def of(cls, feats: Tensor) -> Grams:
        """From a whole [N, D] feature matrix at once (tests, small inputs)."""
        f = feats.reshape(feats.shape[0], -1).double()
        mean = f.mean(0)
        xc = f - mean
        return cls((xc @ xc.T).float(), xc @ mean, float(mean @ mean))

    def uncentered(self) -> Tensor:
        """F F^T in float64."""
        g = self.centered.double()
        g += self.proj[:, None]
        g += self.proj[None, :]
        g += self.mean_sq
        return g


def _class_index(labels: Tensor) -> list[Tensor]:
    return [torch.nonzero(labels == c).reshape(-1) for c in labels.unique(sorted=True)]


def separation_terms(grams: Grams, labels: Tensor) -> dict[str, float]:
    """Stats 4 and 6 of the reference on A: |cos| means and minima (the reference's whole-block
    ones and the pairwise ones), the class-mean norm and the mean minimum inter-class distance."""
    groups = _class_index(labels)
    g = grams.uncentered()
    norms = g.diagonal().clamp_min(0).sqrt()
    cos = g.div_(norms[:, None]).div_(norms[None, :]).abs_()  # NaN rows for a zero vector
    onehot = torch.zeros(labels.numel(), len(groups), dtype=torch.float64)
    for c, idx in enumerate(groups):
        onehot[idx, c] = 1.0
    block_sum = onehot.T @ (cos @ onehot)  # [C, C] sums of |cos| over class blocks
    sizes = onehot.sum(0)
    diag = torch.stack([cos.diagonal()[idx].sum() for idx in groups])
    block_mean = block_sum.diagonal() / (sizes * sizes)  # the reference: diagonal included
    pair_mean = (block_sum.diagonal() - diag) / (sizes * (sizes - 1))
    inter = block_sum / (sizes[:, None] * sizes[None, :])
    off = ~torch.eye(len(groups), dtype=torch.bool)
    block_min = torch.stack([cos[idx][:, idx].min() for idx in groups])
    cos.fill_diagonal_(math.inf)
    pair_min = torch.stack([cos[idx][:, idx].min() for idx in groups])
    del cos, g
    sq = grams.centered.diagonal().double()
    min_inter_sq = []
    for idx in groups:
        rows = sq[idx, None] + sq[None, :] - 2.0 * grams.centered[idx].double()
        rows[:, idx] = math.inf
        min_inter_sq.append(rows.min())
    min_inter = torch.stack(min_inter_sq).clamp_min(0).sqrt()
    class_norm = torch.stack([norms[idx].mean() for idx in groups])
    singles = bool((sizes < 2).any())  # a one-sample class has no pair
    return {
        "cos_intra": math.nan if singles else float(pair_mean.mean()),
        "cos_intra_ref": float(block_mean.mean()),
        "cos_inter": float(inter[off].mean()),
        "cos_min_intra": math.nan if singles else float(pair_min.mean()),
        "cos_min_intra_ref": float(block_min.mean()),
        "dist_min_inter": float(min_inter.mean()),
        "norm_mean": float(class_norm.mean()),
    }


def spectral_terms(spectra: list[Tensor], per_class: list[int], dim: int) -> dict[str, float]:
    """ED and class-wise spectral entropies from B's per-class variances (descending, float64).

    Reference (float32, as its code): ratios zero-padded past min(n_c, D) to W = max n_c;
    ED_c = first k <= W-1 with cumulative >= 0.95; entropy over the first M = sum_c ED_c columns,
    a zero there makes the class's entropy NaN -> 0; a class without variance has NaN ratios.
    Corrected (float64): each class's own first ED_c ratios, renormalised, entropy / ln n_c; a
    class without variance (or with one sample) is left out of the mean.
    """
    width = max(per_class)
    lam = torch.zeros(len(spectra), width, dtype=torch.float32)
    h_corr: list[float] = []
    degenerate = 0
    for c, s in enumerate(spectra):
        s = s.double().clamp_min(0)[: min(per_class[c], dim)]
        total = float(s.sum())
        if total <= 0 or not math.isfinite(total):
            lam[c, : s.numel()] = math.nan  # 0 / 0, as the reference's S / totalVar
            degenerate += 1
            continue
        ratios = s / total
        lam[c, : s.numel()] = torch.where(ratios > 0, ratios, RATIO_FLOOR).float()
        cum = ratios.cumsum(0)
        ed_c = min(int((cum < ED_THRESHOLD).sum()) + 1, ratios.numel())
        q = ratios[:ed_c] / ratios[:ed_c].sum()
        if per_class[c] > 1:
            h_corr.append(float(-torch.special.xlogy(q, q).sum()) / math.log(per_class[c]))
    ed = torch.zeros(len(spectra), dtype=torch.long)
    if width > 1:
        stop = ~(lam.cumsum(1)[:, : width - 1] < ED_THRESHOLD)  # NaN stops, as in the reference
        ed = torch.where(stop.any(1), stop.long().argmax(1) + 1, width - 1).clamp_max(width - 1)
    cut = int(ed.sum())
    p = lam[:, :cut]
    p = torch.where(p == 0, torch.tensor(1e-127, dtype=torch.float32), p)  # underflows to 0
    p = p / p.sum(1, keepdim=True)
    h = -(p * torch.log(p)).sum(1)
    h[h != h] = 0
    every_class = degenerate == len(spectra)  # no within-class variance anywhere: undefined
    return {
        "ed": float(ed.double().mean()),
        "entropy": math.nan if every_class else float(h.mean()),
        "entropy_corrected": sum(h_corr) / len(h_corr) if h_corr else math.nan,
        "degenerate_classes": degenerate,
    }


def _ratio(num: float, den: float) -> float:
    return num / den if den != 0 and math.isfinite(den) else math.nan


def _root(x: float) -> float:
    return math.sqrt(x) if x >= 0 else math.nan  # NaN stays NaN: NaN >= 0 is False


def combine(terms: dict[str, float], d_g: int, n_train: int) -> dict[str, float]:
    """S, I, E, Q (the reference's) and their corrected versions from the terms; NaN where a
    term is undefined (a zero norm, no variance), never an exception."""
    s = terms["cos_intra_ref"] - terms["cos_inter"]
    s_corr = terms["cos_intra"] - terms["cos_inter"]
    i = (1 - terms["cos_min_intra_ref"]) * terms["entropy"] / LN_DIVISOR
    i_corr = (1 - terms["cos_min_intra"]) * terms["entropy_corrected"]
    k = (n_train / math.pi) ** (1 / d_g)
    e = k * 2 * _ratio(terms["dist_min_inter"], terms["norm_mean"])
    root, root_corr = _root(i * e), _root(i_corr * e)
    return {
        "s": s,
        "i": i,
        "e": e,
        "q": s + root,
        "sqrt_ie": root,
        "s_corrected": s_corr,
        "i_corrected": i_corr,
        "q_corrected": s_corr + root_corr,
        "sqrt_ie_corrected": root_corr,
        "k": k,
        "d_g": d_g,
    }


def undefined(row: dict[str, float]) -> list[str]:
    """The key columns of a row that are NaN."""
    return [k for k in KEY_COLUMNS if k in row and math.isnan(float(row[k]))]


def layer_row(
    grams: Grams,
    labels: Tensor,
    spectra: list[Tensor],
    per_class_b: list[int],
    *,
    dim: int,
    n_train: int,
    variances: Tensor | None = None,
    probe: bool = False,
) -> dict[str, float]:
    """Every metric of one layer from A's Grams (labels `labels`) and B's per-class variances.

    `variances` are A's principal variances when the caller has them cheaper than from the
    centered Gram (a layer narrower than |A|).
    """
    labels = labels.reshape(-1).long()
    n = labels.numel()
    row = separation_terms(grams, labels)
    row.update(spectral_terms(spectra, per_class_b, dim))
    row.update(combine(row, min(n, dim), n_train))
    row["twonn"] = twonn(grams.uncentered())
    if variances is None:
        variances = eigvals_desc(grams.centered, min(n, dim))
    row["pca90"], row["pca95"] = pca_dims(variances)
    if probe:
        num_classes = int(labels.max()) + 1
        top = float(variances.max()) if variances.numel() else 0.0
        row["probe_acc"] = linear_probe(grams.centered, labels, num_classes, top)
    return row

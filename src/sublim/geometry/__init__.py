"""Representation geometry: layer knowledge quality (S, I, E, Q), intrinsic dimensions, CKA and RSA.

A low-level numeric package (torch, plus sublim.errors and sublim.seeds): the engine, sublim.kd
and sublim.analysis build on it. Statistics come from Gram matrices, so memory is O(N^2) in the
number of samples, not O(N * D).

`layer_quality(features_fn, images, labels, C, layers)` gives one row per layer with keys: layer,
dim, n_a, n_b, seed; s, i, e, q, sqrt_ie (KD_wo_CE's code: S with the whole class block's |cos|
mean, I with its float32 entropy cut and ln 5, E, Q = S + sqrt(I E)); s_corrected, i_corrected,
q_corrected, sqrt_ie_corrected (pairwise |cos| mean; entropy over each class's own ED_c ratios /
ln n_c; float64); ed, entropy, entropy_corrected, degenerate_classes, d_g, k; cos_intra,
cos_min_intra (pairs), cos_intra_ref, cos_min_intra_ref (whole block), cos_inter,
dist_min_inter, norm_mean; pca90, pca95 (centered); twonn (L2-normalised features); probe_acc
when asked for. NaN marks a term that is undefined (a dead or constant layer).
"""

from __future__ import annotations

from .accumulate import QualityAccumulator
from .driver import QualityWarning, layer_quality
from .plan import DEFAULT_BUDGET, Slice, plan_passes
from .sampling import balanced_subsets
from .select import METRICS, select_layers
from .similarity import linear_cka, linear_cka_gram, rsa

__all__ = [
    "DEFAULT_BUDGET",
    "METRICS",
    "QualityAccumulator",
    "QualityWarning",
    "Slice",
    "balanced_subsets",
    "layer_quality",
    "linear_cka",
    "linear_cka_gram",
    "plan_passes",
    "rsa",
    "select_layers",
]

"""Representation geometry: layer knowledge quality (S, I, E, Q), intrinsic dimensions, CKA and RSA.

A low-level numeric package (torch only): the engine, sublim.kd and sublim.analysis build on it.
Statistics come from Gram matrices, so memory is O(N^2) in the number of samples, not O(N * D).
"""

from __future__ import annotations

from .accumulate import QualityAccumulator
from .driver import layer_quality
from .plan import DEFAULT_BUDGET, Slice, plan_passes
from .sampling import balanced_subsets
from .select import METRICS, select_layers
from .similarity import linear_cka, linear_cka_gram, rsa

__all__ = [
    "DEFAULT_BUDGET",
    "METRICS",
    "QualityAccumulator",
    "Slice",
    "balanced_subsets",
    "layer_quality",
    "linear_cka",
    "linear_cka_gram",
    "plan_passes",
    "rsa",
    "select_layers",
]

"""Automatic teacher-layer choice from layer-quality rows (KD_wo_CE spec section 2.4)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import ConfigError

# the reference's columns (the paper's choice) and the corrected ones (sublim.geometry.quality)
METRICS = (
    "q",
    "s",
    "i",
    "e",
    "sqrt_ie",
    "q_corrected",
    "s_corrected",
    "i_corrected",
    "sqrt_ie_corrected",
)


def select_layers(rows: Sequence[Mapping[str, float]], metric: str, k: int) -> list[int]:
    """The k layers with the largest `metric` (one of METRICS), in ascending layer order.

    Ties go to the shallower layer. A layer whose value is NaN (undefined: a dead or constant
    layer) is never chosen; fewer than k defined layers is a ConfigError.
    """
    if metric not in METRICS:
        raise ConfigError("metric", metric, f"allowed: {', '.join(METRICS)}")
    if not 1 <= k <= len(rows):
        raise ConfigError("k", k, f"need 1 <= k <= {len(rows)} (the number of analysed layers)")
    defined = [r for r in rows if not math.isnan(float(r[metric]))]
    if len(defined) < k:
        dead = sorted(int(r["layer"]) for r in rows if math.isnan(float(r[metric])))
        raise ConfigError(
            "k",
            k,
            f"only {len(defined)} layers have a defined {metric} (undefined, dead or constant: "
            f"{dead}); choose fewer layers or list them",
        )
    ranked = sorted(defined, key=lambda r: (-float(r[metric]), int(r["layer"])))
    return sorted(int(r["layer"]) for r in ranked[:k])

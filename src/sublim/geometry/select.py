"""Automatic teacher-layer choice from layer-quality rows (KD_wo_CE spec section 2.4)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from ..errors import ConfigError

METRICS = ("q", "s", "i", "e", "sqrt_ie")


def select_layers(rows: Sequence[Mapping[str, float]], metric: str, k: int) -> list[int]:
    """The k layers with the largest `metric` (q, s, i, e or sqrt_ie), in ascending layer order.

    Ties go to the shallower layer; NaN ranks last.
    """
    if metric not in METRICS:
        raise ConfigError("metric", metric, f"allowed: {', '.join(METRICS)}")
    if not 1 <= k <= len(rows):
        raise ConfigError("k", k, f"need 1 <= k <= {len(rows)} (the number of analysed layers)")

    def key(row: Mapping[str, float]) -> tuple[float, int]:
        value = float(row[metric])
        return (math.inf if math.isnan(value) else -value, int(row["layer"]))

    return sorted(int(r["layer"]) for r in sorted(rows, key=key)[:k])

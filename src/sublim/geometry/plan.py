"""Pass planner: group layers (or column slices of an oversize layer) so a pass fits a memory budget."""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

from ..errors import ConfigError

DEFAULT_BUDGET = int(2.5 * 2**30)  # bytes of float32 features held at once during one pass


class Slice(NamedTuple):
    """Columns [lo, hi) of a layer's flattened features."""

    layer: int
    lo: int
    hi: int


def plan_passes(
    dims: Mapping[int, int], n_samples: int, budget_bytes: int = DEFAULT_BUDGET
) -> list[list[Slice]]:
    """Group layers in ascending order into passes holding at most `budget_bytes` of features.

    A pass costs a forward up to its deepest layer, so layers are kept whole and a new pass starts
    when the next one does not fit; only a layer larger than the budget is cut into column slices
    (its Gram sums over them). Each slice of n_samples x columns float32 counts 4 bytes a value.
    """
    cap = budget_bytes // (4 * max(n_samples, 1))
    if cap < 1:
        raise ConfigError("budget_bytes", budget_bytes, f"need at least {4 * n_samples} bytes")
    passes: list[list[Slice]] = []
    current: list[Slice] = []
    used = 0
    for layer in sorted(dims):
        dim = int(dims[layer])
        if dim > cap:  # oversize: cut into full-budget slices, the last one may share a pass
            if current:
                passes.append(current)
            current, used = [], 0
            for lo in range(0, dim, cap):
                hi = min(lo + cap, dim)
                if hi - lo == cap:
                    passes.append([Slice(layer, lo, hi)])
                else:
                    current, used = [Slice(layer, lo, hi)], hi - lo
            continue
        if used + dim > cap:
            passes.append(current)
            current, used = [], 0
        current.append(Slice(layer, 0, dim))
        used += dim
    if current:
        passes.append(current)
    return passes


def pass_bytes(plan: list[Slice], n_samples: int) -> int:
    """Feature bytes one pass holds."""
    return 4 * n_samples * sum(s.hi - s.lo for s in plan)

"""Turning sublim's rows into tracker parameters and metrics (plain, library-free helpers)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

MAX_PARAM = 500  # characters kept of a parameter value (MLflow allows 6,000; TB shows a cell)


def param_text(value: Any) -> str:
    """A parameter value as text: JSON for lists and tables, `str` otherwise; long values cut."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= MAX_PARAM else text[: MAX_PARAM - 3] + "..."


def flat_params(config: Mapping[str, Any]) -> dict[str, str]:
    """A config's fields as parameters (nested values as JSON text)."""
    return {str(k): param_text(v) for k, v in config.items()}


def numeric(
    row: Mapping[str, Any], skip: set[str] | frozenset[str] = frozenset()
) -> dict[str, float]:
    """The finite numbers of a row (booleans and text left out) as metrics."""
    out: dict[str, float] = {}
    for k, v in row.items():
        if k in skip or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out

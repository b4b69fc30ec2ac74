"""Analysis of result files: load runs into pandas, summarise with bootstrap intervals, plot.

`load(outdir)` returns the runs as a DataFrame; `summarize(df, by=..., metrics=...)` returns
n, mean, std, median and a 95 % bootstrap confidence interval per group and metric. Reads
files only: never imports the engine, and torch only on demand.

Representation geometry (`sublim.geometry`, torch) is re-exported lazily, so `import
sublim.analysis` stays light: `layer_quality` (S, I, E, Q and geometry per layer),
`select_layers`, `linear_cka`, `linear_cka_gram` and `rsa`.
"""

from __future__ import annotations

from typing import Any

from .bootstrap import bootstrap_ci
from .load import load, load_configs
from .summary import detect_axes, summarize

_GEOMETRY = ("layer_quality", "linear_cka", "linear_cka_gram", "rsa", "select_layers")

__all__ = ["bootstrap_ci", "detect_axes", "load", "load_configs", "summarize", *_GEOMETRY]


def __getattr__(name: str) -> Any:
    """The geometry functions, imported (with torch) on first use."""
    if name in _GEOMETRY:
        from .. import geometry

        return getattr(geometry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

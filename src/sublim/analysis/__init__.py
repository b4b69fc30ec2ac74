"""Analysis of result files: load runs into pandas, summarise with bootstrap intervals, plot.

`load(outdir)` returns the runs as a DataFrame; `summarize(df, by=..., metrics=...)` returns
n, mean, std, median and a 95 % bootstrap confidence interval per group and metric. Reads
files only: never imports the engine or torch.
"""

from __future__ import annotations

from .bootstrap import bootstrap_ci
from .load import load, load_configs
from .summary import detect_axes, summarize

__all__ = ["bootstrap_ci", "detect_axes", "load", "load_configs", "summarize"]

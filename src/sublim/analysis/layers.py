"""Layer-similarity figures from layer_metrics.csv: teacher-student similarity per layer, init vs
final: the cosine of their weights, and the linear CKA and RSA of their representations.

One panel per condition (or per value of the sweep's categorical axis); in each, the similarity
of every layer at initialisation (grey) and after student training (coloured, one line per value
of a small numeric axis such as m, else pooled), with bootstrap CIs over runs.
"""

from __future__ import annotations

import json
import math
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import PlotOptions, fmt_value, series_colors, shared_legend, short_labels
from .style import PAGE_WIDTH, new_figure, styled
from .summary import detect_axes, natural_key

COMPARISONS = {"teacher_student_init": "initial", "teacher_student_final": "final"}


class Metric(NamedTuple):
    """How a layer_metrics.csv column is drawn: axis label, default title, what it measures
    (report captions) and the figure file's suffix after `<sweep>_layers`."""

    label: str
    title: str
    what: str
    suffix: str


METRICS = {  # column -> its figure
    "cosine": Metric(
        "cosine(teacher, student) of weights",
        "Teacher-student weight similarity per layer",
        "weight cosine",
        "",
    ),
    "linear_cka": Metric(
        "linear CKA(teacher, student)",
        "Teacher-student representational similarity per layer (linear CKA)",
        "linear CKA of representations",
        "_cka",
    ),
    "rsa": Metric(
        "RSA(teacher, student)",
        "Teacher-student representational similarity per layer (RSA)",
        "RSA of representations",
        "_rsa",
    ),
}
MAX_PANELS = 9
MAX_HUES = 6


def _layer_order(runs: pd.DataFrame, names: list[str]) -> list[str]:
    """Layers in model order (from student_layer_names), unknown names last."""
    order: list[str] = []
    for text in runs.get("student_layer_names", pd.Series(dtype=object)).dropna().unique():
        try:
            order += [n for n in json.loads(text) if n not in order]
        except (json.JSONDecodeError, TypeError):
            continue
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def similarity_frame(
    layer_metrics: pd.DataFrame, runs: pd.DataFrame, metric: str = "cosine"
) -> pd.DataFrame:
    """Teacher-student rows of these runs that carry `metric`, with the runs' axis columns.

    Weight cosines need comparable shapes; CKA and RSA compare representations of any width,
    and a layer's value is the same on its weight and bias rows (the weight row is taken).
    """
    lm = layer_metrics
    if metric not in lm:
        return pd.DataFrame()
    keep = (
        lm["comparison"].isin(list(COMPARISONS))
        & (lm["tensor_kind"] == "weight")
        & lm["run_id"].isin(runs["run_id"])
    )
    if metric == "cosine":
        keep &= lm["status"] == "comparable"
    else:
        keep &= pd.to_numeric(lm[metric], errors="coerce").notna()
    axes = [a for a in detect_axes(runs) if a in runs]
    cols = ["run_id", *[a for a in axes if a not in ("seed",)], "student_layer_names"]
    merged = lm.loc[keep, ["run_id", "comparison", "layer_name", metric]].merge(
        runs[list(dict.fromkeys(cols))], on="run_id", how="inner"
    )
    return merged.rename(columns={metric: "value"})


def _choose(runs: pd.DataFrame) -> tuple[str | None, str | None]:
    """(panel axis, hue axis): condition or a categorical axis for panels, a small numeric hue."""
    axes = detect_axes(runs)
    panel = next((a for a in axes if a == "condition"), None)
    if panel is None:
        panel = next(
            (a for a in axes if runs[a].dtype == object and runs[a].nunique() <= MAX_PANELS), None
        )
    hue = next(
        (
            a
            for a in axes
            if a != panel
            and pd.api.types.is_numeric_dtype(runs[a])
            and runs[a].nunique() <= MAX_HUES
        ),
        None,
    )
    return panel, hue


@styled
def layer_similarity_figure(
    layer_metrics: pd.DataFrame,
    runs: pd.DataFrame,
    opts: PlotOptions,
    title: str = "",
    metric: str = "cosine",
) -> Figure | None:
    """The figure of `metric` (a key of METRICS), or None when these runs have no such rows."""
    frame = similarity_frame(layer_metrics, runs, metric)
    if frame.empty:
        return None
    panel, hue = _choose(runs)
    panels = sorted(frame[panel].unique(), key=natural_key)[:MAX_PANELS] if panel else [None]
    labels = short_labels(list(panels)) if panel else {}
    layers = _layer_order(runs, list(frame["layer_name"].unique()))
    ncols = min(3, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(
        min(PAGE_WIDTH, 2.2 * ncols + 0.4), 2.1 * nrows + 0.6, ncols=ncols, nrows=nrows, sharey=True
    )
    flat = [ax for row in axes for ax in row]
    hues = sorted(frame[hue].unique(), key=natural_key) if hue else [None]
    colors = dict(zip(hues, series_colors(len(hues)), strict=True))
    xs = np.arange(len(layers))
    for ax, key in zip(flat, panels, strict=False):
        part = frame if key is None else frame[frame[panel] == key]
        _draw(ax, part, layers, xs, "teacher_student_init", None, "0.55", "initial", opts)
        for h in hues:
            sub = part if h is None else part[part[hue] == h]
            label = "final" if h is None else f"final, {hue} = {fmt_value(h)}"
            _draw(ax, sub, layers, xs, "teacher_student_final", h, colors[h], label, opts)
        ax.set_xticks(xs, layers, rotation=30, ha="right")
        name = labels.get(key, fmt_value(key))
        ax.set_title(
            "all runs" if key is None else name if panel == "condition" else f"{panel} = {name}"
        )
        ax.axhline(0, color="0.7", lw=0.6)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    for row in axes:
        row[0].set_ylabel(METRICS[metric].label)
    shared_legend(fig, flat[: len(panels)])
    fig.suptitle(title or METRICS[metric].title, fontsize=9)
    return fig


def _draw(
    ax: Any,
    part: pd.DataFrame,
    layers: list[str],
    xs: np.ndarray,
    comparison: str,
    hue: Any,
    color: Any,
    label: str,
    opts: PlotOptions,
) -> None:
    rows = part[part["comparison"] == comparison]
    if rows.empty:
        return
    table = opts.summarize(rows, ["layer_name"], "value").set_index("layer_name")
    table = table.reindex(layers)
    mean = table["mean"].to_numpy(dtype=float)
    low = mean - table["ci_low"].to_numpy(dtype=float)
    high = table["ci_high"].to_numpy(dtype=float) - mean
    marker = "s" if comparison.endswith("init") else "o"
    fill = "none" if comparison.endswith("init") else color
    ax.errorbar(
        xs,
        mean,
        # identical values (a layer's CKA repeats on its weight and bias rows) can put the mean
        # 1e-16 outside its interval: clipped, as matplotlib refuses negative error bars
        yerr=np.clip(np.nan_to_num(np.vstack([low, high])), 0.0, None),
        color=color,
        marker=marker,
        mfc=fill,
        capsize=2,
        lw=1.0,
        ls="--" if comparison.endswith("init") else "-",
        label=label,
    )

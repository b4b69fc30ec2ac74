"""The paper's figures 2 to 6, drawn from whichever runs supply their panels.

A recipe is chosen from the sweep name (`fig2_...`, `figure5...`) or forced with `--figure N`.
Panels are found from what varies, not from names: figure 3's class-count panel is any sweep in
which the number of classes varies, its depth panel any in which the student's depth does, so a
user's own sweep reproducing a figure gets the same plot.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import (
    PlotOptions,
    axis_label,
    legend_outside,
    plot_curves,
    reference_lines,
    series_colors,
    shared_legend,
)
from .style import PAGE_WIDTH, new_figure, styled
from .summary import natural_key

FIGURES = ("2", "3", "4", "5", "6")
_FIG_NAME = re.compile(r"^fig(?:ure)?[_-]?(\d+)", re.IGNORECASE)


class RecipeMismatch(Exception):
    """The runs do not hold what a figure recipe needs (the message says what is missing)."""


def figure_of(sweep_name: str) -> str | None:
    """The paper figure a sweep name refers to (`fig4_m1_noise_sweep` -> "4"), if any."""
    match = _FIG_NAME.match(str(sweep_name))
    return match.group(1) if match and match.group(1) in FIGURES else None


def _dims(text: object) -> tuple[int, ...]:
    try:
        value = json.loads(str(text))
    except json.JSONDecodeError:
        return ()
    return tuple(int(v) for v in value) if isinstance(value, list) else ()


def _series(runs: pd.DataFrame, fallback: str) -> str | None:
    """The condition column when the sweep named its conditions, else `fallback` if it varies."""
    for column in ("condition", fallback):
        if column in runs and runs[column].astype(str).ne("").all() and runs[column].nunique() > 1:
            return column
    return None


def _single_panel(
    runs: pd.DataFrame,
    x: str,
    metric: str,
    opts: PlotOptions,
    series: str | None,
    title: str,
    width: float = 5.0,
) -> Figure:
    fig, axes = new_figure(width, 3.0)
    ax = axes[0][0]
    colors = plot_curves(ax, runs, x, metric, opts, series)
    if metric.endswith("_acc"):
        reference_lines(ax, runs, x, opts, series=series, colors=colors)
    ax.set_title(title)
    legend_outside(fig, ax, title=series if series and series != "condition" else None)
    return fig


@styled
def figure2(runs: pd.DataFrame, metric: str, opts: PlotOptions) -> Figure:
    """Student accuracy against m, one line per student init condition."""
    if runs["m"].nunique() < 2:
        raise RecipeMismatch("figure 2 needs runs in which m varies")
    series = _series(runs, "student_init_config")
    return _single_panel(
        runs, "m", metric, opts, series, "Student accuracy vs aux logits, by student init"
    )


@styled
def figure3(runs: pd.DataFrame, metric: str, opts: PlotOptions) -> Figure:
    """Panels: EMNIST class count, first-layer width, depth change, MLP -> CNN student."""
    runs = runs.copy()
    student = runs["student_hidden_dims"].map(_dims)
    runs["student_first_width"] = student.map(lambda d: d[0] if d else np.nan)
    runs["student_depth"] = student.map(len)
    panels: list[tuple[str, pd.DataFrame, str]] = []
    for _, part in runs.groupby("sweep_name", sort=True):
        if part["num_classes"].nunique() > 1:
            panels.append(("Class count (EMNIST)", part, "num_classes"))
        elif (part["student_type"] == "cnn").any():
            panels.append(("MLP teacher -> CNN student", part, "m"))
        elif part["student_depth"].nunique() > 1:
            panels.append(("Student depth", part, "student_depth"))
        elif part["student_first_width"].nunique() > 1:
            panels.append(("Student first-layer width", part, "student_first_width"))
    if not panels:
        raise RecipeMismatch(
            "figure 3 needs runs varying the class count, student width or depth, or a CNN student"
        )
    order = ["Class count", "Student first", "Student depth", "MLP teacher"]
    panels.sort(key=lambda p: next(i for i, o in enumerate(order) if p[0].startswith(o)))
    ncols = 2 if len(panels) > 1 else 1
    nrows = (len(panels) + 1) // 2
    width = PAGE_WIDTH if ncols == 2 else 5.0
    fig, axes = new_figure(width, 2.6 * nrows + 0.5, ncols=ncols, nrows=nrows)
    flat = [ax for row in axes for ax in row]
    all_m = sorted(runs["m"].unique())
    m_colors = dict(zip(all_m, series_colors(len(all_m)), strict=True))  # same m, same colour
    for ax, (title, part, x) in zip(flat, panels, strict=False):
        series = "m" if x != "m" else None
        if x == "student_depth":
            part = part.assign(student_depth=part["student_depth"].astype(str))
            teacher_depth = part["teacher_hidden_dims"].map(_dims).map(len).iloc[0]
            title = f"{title} (teacher: {teacher_depth})"
        if x == "m" and part["m"].nunique() <= 3:
            part = part.assign(m=part["m"].astype(str))
        colors = plot_curves(
            ax, part, x, metric, opts, series, label_of=lambda k: f"m = {k}", colors=m_colors
        )
        if metric.endswith("_acc"):
            reference_lines(ax, part, x, opts, series=series, colors=colors, values_in_labels=False)
        if x == "student_first_width":
            teacher_width = part["teacher_hidden_dims"].map(_dims).iloc[0]
            if teacher_width:
                ax.axvline(teacher_width[0], color="0.6", lw=0.7, ls="-.", label="teacher width")
        ax.set_title(title)
    for ax in flat[len(panels) :]:
        ax.set_visible(False)
    if len(panels) == 1:
        legend_outside(fig, flat[0])
    else:
        shared_legend(fig, flat[: len(panels)])
    fig.suptitle("Figure 3: students that differ from their teacher", fontsize=9)
    return fig


@styled
def figure4(runs: pd.DataFrame, metric: str, opts: PlotOptions) -> Figure:
    """Heat map over m x N, and the m = 1 and N = 1 curves (from their sweeps or the grid)."""
    grid = runs[
        runs.groupby("sweep_name")["m"].transform("nunique").gt(1)
        & runs.groupby("sweep_name")["noise_steps"].transform("nunique").gt(1)
    ]
    m1 = runs[
        (runs["m"] == 1) & runs.groupby("sweep_name")["noise_steps"].transform("nunique").gt(1)
    ]
    n1 = runs[
        (runs["noise_steps"] == 1) & runs.groupby("sweep_name")["m"].transform("nunique").gt(1)
    ]
    panels = [p for p in (len(grid), len(m1), len(n1)) if p]
    if not panels:
        raise RecipeMismatch("figure 4 needs runs in which m or noise_steps varies")
    widths = ([1.5] if len(grid) else []) + [1.0] * (bool(len(m1)) + bool(len(n1)))
    fig, axes = new_figure(
        PAGE_WIDTH if len(widths) > 1 else 4.0, 3.0, ncols=len(widths), width_ratios=widths
    )
    flat = list(axes[0])
    curve_axes = flat[1:] if len(grid) else flat
    if len(grid):
        _heatmap(fig, flat.pop(0), grid, metric, opts)
    for part, x, title in ((m1, "noise_steps", "m = 1"), (n1, "m", "N = 1")):
        if not len(part):
            continue
        ax = flat.pop(0)
        part = part.drop_duplicates("run_id") if "run_id" in part else part
        plot_curves(ax, part, x, metric, opts)
        if metric.endswith("_acc"):
            reference_lines(ax, part, x, opts, values_in_labels=False)
        ax.set_title(title)
    shared_legend(fig, curve_axes)
    fig.suptitle("Figure 4: aux logits m and noise batches per epoch N", fontsize=9)
    return fig


def _heatmap(fig: Figure, ax: object, grid: pd.DataFrame, metric: str, opts: PlotOptions) -> None:
    table = opts.summarize(grid, ["noise_steps", "m"], metric)
    ms = sorted(table["m"].unique(), key=natural_key)
    ns = sorted(table["noise_steps"].unique(), key=natural_key)
    values = np.full((len(ns), len(ms)), np.nan)
    for row in table.itertuples():
        values[ns.index(row.noise_steps), ms.index(row.m)] = row.mean
    image = ax.imshow(
        values, origin="lower", aspect="auto", cmap="viridis", interpolation="nearest"
    )
    step_m = max(1, len(ms) // 8)
    step_n = max(1, len(ns) // 8)
    ax.set_xticks(range(0, len(ms), step_m), [str(v) for v in ms[::step_m]])
    ax.set_yticks(range(0, len(ns), step_n), [str(v) for v in ns[::step_n]])
    ax.set_xlabel(axis_label("m"))
    ax.set_ylabel(axis_label("noise_steps"))
    ax.grid(False)
    ax.set_title(f"m x N grid: mean over {int(table['n'].median())} seeds")
    fig.colorbar(image, ax=ax, label=axis_label(metric), shrink=0.9)


@styled
def figure5(runs: pd.DataFrame, metric: str, opts: PlotOptions) -> Figure:
    """Student accuracy against perturbation std, one line per perturbed head."""
    if runs["perturb_std"].nunique() < 2:
        raise RecipeMismatch("figure 5 needs runs in which the perturbation std varies")
    series = _series(runs, "perturb_layers")
    return _single_panel(
        runs, "perturb_std", metric, opts, series, "Student accuracy vs head perturbation", 4.8
    )


@styled
def figure6(runs: pd.DataFrame, metric: str, opts: PlotOptions) -> Figure:
    """Student accuracy against hidden width D (the last hidden layer), per frozen-head variant."""
    runs = runs.assign(
        hidden_width=runs["student_hidden_dims"].map(lambda t: (_dims(t) or (np.nan,))[-1])
    )
    if runs["hidden_width"].nunique() < 2:
        raise RecipeMismatch("figure 6 needs runs in which the last hidden width varies")
    series = _series(runs, "student_trainable_config")
    return _single_panel(
        runs, "hidden_width", metric, opts, series, "Student accuracy vs hidden width D", 5.4
    )


RECIPES: dict[str, Callable[[pd.DataFrame, str, PlotOptions], Figure]] = {
    "2": figure2,
    "3": figure3,
    "4": figure4,
    "5": figure5,
    "6": figure6,
}

"""Plot building blocks: metric against an axis with bootstrap CI bands, reference lines, labels.

Every curve is a `summarize` of the runs (mean and CI over seeds), so what a figure shows is
what summary.csv lists. A geometric axis (m, widths, noise steps) is drawn on a log scale.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .bootstrap import DEFAULT_RESAMPLES
from .style import new_figure, styled
from .summary import detect_axes, natural_key, summarize

# Axis labels with units, for the columns figures use.
AXIS_LABELS: dict[str, str] = {
    "m": "aux logits m",
    "noise_steps": "noise batches per epoch N",
    "perturb_std": "perturbation std (absolute)",
    "num_classes": "number of classes K",
    "class_count": "number of classes K",
    "student_first_width": "student first hidden width D1",
    "hidden_width": "second hidden width D",
    "student_depth": "student hidden layers",
    "teacher_lr": "teacher learning rate",
    "student_lr": "student learning rate",
    "student_epochs": "student epochs",
    "teacher_epochs": "teacher epochs",
}
METRIC_LABELS: dict[str, str] = {
    "student_final_acc": "student test accuracy",
    "student_init_acc": "student test accuracy at init",
    "teacher_final_acc": "teacher test accuracy",
    "teacher_init_acc": "teacher test accuracy at init",
    "student_final_aux_loss": "student aux loss on noise (final)",
    "student_final_class_loss": "student class loss on test (final)",
}


@dataclass(frozen=True)
class PlotOptions:
    """How curves are summarised: CI level, method, resamples and seed."""

    level: float = 0.95
    method: str = "percentile"
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0

    def summarize(
        self, runs: pd.DataFrame, by: Sequence[str], metric: str | Sequence[str]
    ) -> pd.DataFrame:
        """`summarize` of one metric (or several) with these options."""
        return summarize(
            runs,
            by=list(by),
            metrics=[metric] if isinstance(metric, str) else list(metric),
            level=self.level,
            method=self.method,
            n_resamples=self.n_resamples,
            seed=self.seed,
        )


def axis_label(name: str) -> str:
    """Readable label (with units where there are any) for a column."""
    return AXIS_LABELS.get(name) or METRIC_LABELS.get(name) or name.replace("_", " ")


def is_numeric(values: pd.Series) -> bool:
    """Whether a column can be a numeric x axis."""
    return pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)


def is_geometric(values: Sequence[float]) -> bool:
    """Whether sorted distinct positive values are more evenly spaced in log than linearly."""
    v = np.unique(np.asarray([x for x in values if np.isfinite(x)], dtype=float))
    if v.size < 3 or v[0] <= 0:
        return False
    lin, log = np.diff(v), np.diff(np.log(v))
    cv = lambda d: float(np.std(d) / np.mean(d))  # noqa: E731
    return v[-1] / v[0] >= 8 and cv(log) < cv(lin)


def short_labels(values: Sequence[Any]) -> dict[Any, str]:
    """Legend labels; JSON layer configs become the entries that differ from the usual value.

    `{"fc1":"random","fc2":"A",...}` among configs that are mostly A reads `fc1=random`; the
    config with no exception reads `all A`.
    """
    parsed = {}
    for v in values:
        try:
            d = json.loads(v) if isinstance(v, str) and v.startswith("{") else None
        except json.JSONDecodeError:
            d = None
        parsed[v] = d
    if not values or not all(isinstance(d, dict) for d in parsed.values()):
        return {v: fmt_value(v) for v in values}
    keys = list(dict.fromkeys(k for d in parsed.values() for k in d))
    usual = {}
    for k in keys:
        seen = [str(d.get(k)) for d in parsed.values()]
        usual[k] = max(dict.fromkeys(seen), key=seen.count)
    out = {}
    for v, d in parsed.items():
        odd = [f"{k}={d.get(k)}" for k in keys if str(d.get(k)) != usual[k]]
        common = [u for u in dict.fromkeys(usual.values()) if u != "None"]
        out[v] = ", ".join(odd) or "all " + "/".join(common)
    return out


def fmt_value(value: Any) -> str:
    """A cell as short text (floats without trailing zeros)."""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def series_colors(n: int) -> list[Any]:
    """Distinct colours: tab10 for up to 10 series, viridis beyond."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return [matplotlib.colormaps["viridis"](i / max(n - 1, 1)) for i in range(n)]


def plot_curves(
    ax: Axes,
    runs: pd.DataFrame,
    x: str,
    metric: str,
    opts: PlotOptions,
    series: str | None = None,
    *,
    label_of: Callable[[Any], str] | None = None,
    colors: dict[Any, Any] | None = None,
    style: dict[str, Any] | None = None,
    band: bool = True,
) -> dict[Any, Any]:
    """Mean of `metric` against `x` with a CI band, one line per `series` value; returns colours.

    A numeric `x` is drawn at its values (log scale when geometric); any other `x` at evenly
    spaced positions with its values as tick labels.
    """
    by = [series, x] if series else [x]
    table = opts.summarize(runs, by, metric)
    keys = sorted(table[series].unique(), key=natural_key) if series else [None]
    labels = short_labels(list(keys)) if series else {}
    palette = colors or dict(zip(keys, series_colors(len(keys)), strict=True))
    numeric = is_numeric(runs[x])
    positions = None
    if not numeric:
        order = sorted(table[x].unique(), key=natural_key)
        positions = {v: i for i, v in enumerate(order)}
        ax.set_xticks(range(len(order)), [fmt_value(v) for v in order])
    for n, key in enumerate(keys):
        part = table if key is None else table[table[series] == key]
        part = part.iloc[sorted(range(len(part)), key=lambda i: natural_key(part[x].iat[i]))]
        label = None if key is None else (label_of(key) if label_of else labels[key])
        color = palette.get(key, "C0") if key is not None else "C0"
        if not numeric:  # categories: points with CI bars, side by side, never joined
            xs = part[x].map(positions).to_numpy(dtype=float) + _dodge(n, len(keys))
            if style and style.get("ls") == "--":  # a reference curve: short dashes per category
                for xi, yi in zip(xs, part["mean"], strict=True):
                    ax.hlines(yi, xi - 0.2, xi + 0.2, color=color, lw=0.9, ls="--")
                continue
            low = (part["mean"] - part["ci_low"]).fillna(0).clip(lower=0)
            high = (part["ci_high"] - part["mean"]).fillna(0).clip(lower=0)
            ax.errorbar(
                xs, part["mean"], yerr=[low, high], fmt="o", color=color, capsize=3, label=label
            )
            continue
        xs = part[x].to_numpy(dtype=float)
        kw = {"marker": "o", **(style or {})}
        ax.plot(xs, part["mean"], color=color, label=label, **kw)
        if band and part["ci_low"].notna().any():
            ax.fill_between(
                xs, part["ci_low"], part["ci_high"], color=color, alpha=0.18, lw=0, zorder=1
            )
    if not numeric:
        ax.set_xlim(-0.6, len(positions) - 0.4)
    if numeric and is_geometric(runs[x].dropna().unique()):
        log_axis(ax, runs[x].dropna().unique())
    ax.set_xlabel(axis_label(x))
    ax.set_ylabel(axis_label(metric))
    return palette


def log_axis(ax: Axes, values: Sequence[float]) -> None:
    """Log-scaled x with plain-number tick labels (3, 10, 250 rather than 10^0.5)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    ax.set_xscale("log")
    ticks = sorted(float(v) for v in values)
    if len(ticks) > 7:
        lo, hi = np.log10(ticks[0]), np.log10(ticks[-1])
        ticks = [10.0**e for e in range(int(np.floor(lo)), int(np.ceil(hi)) + 1)]
        ticks = [t for t in ticks if ticks and min(values) / 1.5 <= t <= max(values) * 1.5]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def shared_legend(fig: Figure, axes: Sequence[Axes]) -> None:
    """One legend below all panels, each label once, never over the data."""
    seen: dict[str, Any] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if not label.startswith("_"):
                seen.setdefault(label, handle)
    if seen:
        fig.legend(
            list(seen.values()), list(seen), loc="outside lower center", ncol=min(len(seen), 5)
        )


def _dodge(n: int, total: int, width: float = 0.3) -> float:
    """Horizontal offset of series n of `total` at a categorical position."""
    return 0.0 if total < 2 else -width / 2 + width * n / (total - 1)


def reference_lines(
    ax: Axes,
    runs: pd.DataFrame,
    x: str,
    opts: PlotOptions,
    *,
    series: str | None = None,
    colors: dict[Any, Any] | None = None,
    values_in_labels: bool = True,
) -> None:
    """Teacher accuracy (dashed) and chance level 1/K (dotted).

    The teacher line is flat when the teacher's accuracy does not change along `x`, a curve
    when it does, and one line per series (in the series' colour) when it differs by series.
    """
    ylabel, xlabel = ax.get_ylabel(), ax.get_xlabel()
    dashed = {"ls": "--", "marker": None, "lw": 0.9}
    if "teacher_final_acc" in runs:
        along_x = opts.summarize(runs, [x], "teacher_final_acc")["mean"]
        by_series = (
            opts.summarize(runs, [series], "teacher_final_acc")["mean"]
            if series and colors
            else pd.Series(dtype=float)
        )
        if _varies(by_series):
            plot_curves(
                ax,
                runs,
                x,
                "teacher_final_acc",
                opts,
                series,
                colors=colors,
                style=dashed,
                band=False,
                label_of=lambda _k: "_nolegend_",
            )
            ax.plot([], [], color="0.3", label="teacher (dashed, same colour)", **dashed)
        elif _varies(along_x):
            plot_curves(ax, runs, x, "teacher_final_acc", opts, colors={None: "0.3"}, style=dashed)
            ax.lines[-1].set_label("teacher")
        else:
            value = float(runs["teacher_final_acc"].mean())
            label = f"teacher ({value:.3f})" if values_in_labels else "teacher"
            ax.axhline(
                value,
                color="0.3",
                label=label,
                **{k: v for k, v in dashed.items() if k != "marker"},
            )
    if "num_classes" in runs and runs["num_classes"].notna().all():
        ks = sorted(runs["num_classes"].unique())
        if len(ks) <= 3:
            for k in ks:
                label = f"chance (1/{int(k)})" if values_in_labels or len(ks) > 1 else "chance"
                ax.axhline(1 / k, ls=":", color="0.45", lw=0.9, label=label)
        elif x in ("num_classes", "class_count") and is_numeric(runs[x]):
            grid = np.array(sorted(runs[x].unique()), dtype=float)
            ax.plot(grid, 1 / grid, ls=":", color="0.45", lw=0.9, label="chance (1/K)")
    ax.set_ylabel(ylabel)
    ax.set_xlabel(xlabel)


def _varies(values: pd.Series, tol: float = 0.005) -> bool:
    v = values.dropna()
    return bool(len(v) > 1 and float(v.max() - v.min()) > tol)


def legend_outside(fig: Figure, ax: Axes, title: str | None = None) -> None:
    """A legend to the right of the axes, never over the data."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        ncol = 1 if len(handles) <= 14 else 2
        fig.legend(handles, labels, loc="outside right upper", title=title, ncol=ncol)


@styled
def generic_figure(
    runs: pd.DataFrame,
    metric: str,
    x: str,
    opts: PlotOptions,
    *,
    series: str | None = None,
    title: str | None = None,
) -> Figure:
    """`metric` against any axis, one line per value of the other axes (combined into one label)."""
    runs = runs.copy()
    others = [a for a in detect_axes(runs) if a != x and a != series]
    if series is None and others:
        series = "_series"
        runs[series] = runs[others].apply(
            lambda r: ", ".join(f"{k}={fmt_value(r[k])}" for k in others), axis=1
        )
    n_series = runs[series].nunique() if series else 1
    fig, axes = new_figure(5.2 if n_series > 1 else 3.6, 3.0)
    ax = axes[0][0]
    plot_curves(ax, runs, x, metric, opts, series)
    if metric.endswith("_acc"):
        reference_lines(ax, runs, x, opts)
    ax.set_title(title or f"{axis_label(metric)} vs {axis_label(x)}")
    legend_outside(fig, ax, title=None if series in (None, "_series") else series)
    return fig


def pick_x(runs: pd.DataFrame, axes: Sequence[str]) -> str | None:
    """The default x axis: the numeric varying axis with the most values (m on ties)."""
    numeric = [a for a in axes if is_numeric(runs[a])]
    if not numeric:
        return axes[0] if axes else None
    return max(numeric, key=lambda a: (runs[a].nunique(), a == "m"))

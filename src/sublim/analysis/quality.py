"""Layer knowledge quality in figures: the KD_wo_CE paper's "Layerwise Knowledge Quality" plot.

Reads `layer_quality.csv` files (written by `sublim kd analyze` into an experiment's directory:
one row per generalized layer with index, name, shape, rel_depth and the metrics of
`sublim.geometry.layer_quality`) with pandas; never imports torch or the KD code. Draws S, I, E
and Q against layer index and relative depth with the top-k layers by Q marked, Q against
relative depth across models, and teacher-student CKA heat maps.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import series_colors, shared_legend
from .style import PAGE_WIDTH, new_figure, styled

QUALITY_CSV = "layer_quality.csv"
COMPONENTS = ("s", "i", "e", "q")
LABELS = {"s": "S (separation)", "i": "I (information)", "e": "E (efficiency)", "q": "Q (quality)"}
COLORS = {"s": "#1f77b4", "i": "#2ca02c", "e": "#ff7f0e", "q": "#d62728"}


def top_layers(frame: pd.DataFrame, metric: str = "q", k: int = 4) -> list[int]:
    """The k layers with the largest `metric`, ascending (ties to the shallower; a NaN layer is
    never chosen): the rule of sublim.geometry.select_layers, for files read without torch."""
    defined = frame[frame[metric].astype(float).notna()]
    k = max(0, min(int(k), len(defined)))
    ranked = defined.assign(_v=defined[metric].astype(float)).sort_values(
        ["_v", "index"], ascending=[False, True], kind="stable"
    )
    return sorted(int(i) for i in ranked["index"].head(k))


def load_quality(
    root: str | os.PathLike[str], warn: Callable[[str], None]
) -> list[tuple[str, pd.DataFrame]]:
    """(label, rows) of every `layer_quality.csv` below `root`, in path order; the label is
    "<dataset> <model> (<experiment folder>)". Unreadable files are reported and skipped."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != "report")
        if QUALITY_CSV not in filenames:
            continue
        path = Path(dirpath) / QUALITY_CSV
        try:
            frame = pd.read_csv(path)
        except (OSError, ValueError) as exc:
            warn(f"{path}: unreadable ({exc}); skipped")
            continue
        missing = [c for c in ("index", "rel_depth", *COMPONENTS) if c not in frame.columns]
        if missing or frame.empty:
            warn(f"{path}: not a layer-quality table (missing {missing or 'rows'}); skipped")
            continue
        config = _config_beside(path)
        model = str(frame["model"].iloc[0]) if "model" in frame else config.get("model", "")
        dataset = str(frame["dataset"].iloc[0]) if "dataset" in frame else config.get("dataset", "")
        label = f"{dataset} {model} ({Path(dirpath).name})".strip()
        out.append((label, frame.sort_values("index").reset_index(drop=True)))
    return out


def _config_beside(path: Path) -> dict[str, str]:
    """The experiment's config.json next to a CSV ({} when absent or unreadable)."""
    try:
        data = json.loads((path.parent / "config.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


@styled
def quality_figure(frame: pd.DataFrame, title: str, top_k: int = 4) -> Figure:
    """S, I, E and Q (the reference's; corrected Q dashed) against generalized-layer index (left)
    and relative depth (right), the top-k layers by Q marked with black crosses (the paper's
    automatic "Ours" choice)."""
    fig, axes = new_figure(PAGE_WIDTH, 2.6, ncols=2, sharey=True)
    chosen = set(top_layers(frame, "q", top_k))
    marked = frame[frame["index"].isin(chosen)]
    for ax, x, xlabel in (
        (axes[0][0], "index", "generalized layer"),
        (axes[0][1], "rel_depth", "relative depth"),
    ):
        for name in COMPONENTS:
            ax.plot(frame[x], frame[name], marker="o", color=COLORS[name], label=LABELS[name])
        if "q_corrected" in frame:
            ax.plot(frame[x], frame["q_corrected"], ls="--", color=COLORS["q"], label="Q corrected")
        top = f"top {len(chosen)} by Q"
        ax.scatter(marked[x], marked["q"], marker="x", s=40, color="black", zorder=5, label=top)
        ax.set_xlabel(xlabel)
    axes[0][0].set_ylabel("value")
    if len(frame) <= 40:
        axes[0][0].set_xticks(frame["index"])
    shared_legend(fig, [axes[0][0]])  # below the panels: the curves fill the whole axes
    fig.suptitle(f"Layerwise knowledge quality: {title}")
    return fig


@styled
def depth_figure(tables: list[tuple[str, pd.DataFrame]], metric: str = "q") -> Figure:
    """`metric` (Q by default) against relative depth, one line per analysed model."""
    fig, axes = new_figure(min(PAGE_WIDTH, 4.5), 2.8)
    ax = axes[0][0]
    for (label, frame), color in zip(tables, series_colors(len(tables)), strict=True):
        ax.plot(frame["rel_depth"], frame[metric], marker="o", color=color, label=label)
    ax.set_xlabel("relative depth")
    ax.set_ylabel(LABELS.get(metric, metric))
    shared_legend(fig, [ax])
    ax.set_title(f"{metric.upper()} against relative depth")
    return fig


@styled
def cka_figure(frame: pd.DataFrame, title: str) -> Figure:
    """Heat map of linear CKA: student layers (rows) against teacher layers (columns), from the
    long table of `sublim kd analyze --against` (student_index, teacher_index, cka)."""
    grid = frame.pivot(index="student_index", columns="teacher_index", values="cka")
    n_s, n_t = grid.shape
    fig, axes = new_figure(min(PAGE_WIDTH, 1.6 + 0.28 * n_t), 1.2 + 0.24 * n_s)
    ax = axes[0][0]
    image = ax.imshow(grid.to_numpy(), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(n_t), [str(c) for c in grid.columns])
    ax.set_yticks(range(n_s), [str(r) for r in grid.index])
    ax.set_xlabel("teacher layer")
    ax.set_ylabel("student layer")
    ax.grid(False)
    best = np.nanargmax(np.nan_to_num(grid.to_numpy(), nan=-1.0), axis=1)
    ax.scatter(best, range(n_s), marker="o", s=8, facecolors="none", edgecolors="white")
    fig.colorbar(image, ax=ax, label="linear CKA")
    ax.set_title(title)
    return fig

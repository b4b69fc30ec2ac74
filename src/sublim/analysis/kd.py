"""KD experiments in reports: best- and last-epoch test accuracy per method, with CIs.

Reads each experiment's status.json and config.json (written by `sublim kd`); never imports
torch or the KD code. Papers differ on whether they report the best or the last epoch, so both
are summarised side by side.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .plots import PlotOptions, series_colors
from .style import PAGE_WIDTH, new_figure, styled

KD_AXES = ("dataset", "teacher", "student", "method")
KD_METRICS = ("best_acc", "last_acc")


def load_kd(root: str | os.PathLike[str], warn: Callable[[str], None]) -> pd.DataFrame:
    """One row per KD experiment below `root`: its status, configuration and accuracies."""
    rows = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in ("report",))
        if "status.json" not in filenames or "config.json" not in filenames:
            continue
        folder = Path(dirpath)
        try:
            status = json.loads((folder / "status.json").read_text())
            config = json.loads((folder / "config.json").read_text())
        except (OSError, json.JSONDecodeError) as exc:
            warn(f"{folder}: unreadable status.json or config.json ({exc}); skipped")
            continue
        if "role" not in config:
            continue  # not a KD experiment
        student = config.get("model")
        rows.append(
            {
                "dataset": config.get("dataset"),
                "teacher": config.get("teacher") or "-",
                "student": student,
                # a teacher, or a student alone (--method none): trained with cross-entropy only
                "method": config.get("label")
                or ("alone" if config.get("role") == "teacher" else config.get("method")),
                "seed": config.get("seed"),
                "status": status.get("status"),
                "epoch": status.get("epoch"),
                "best_acc": status.get("best_acc", np.nan),
                "last_acc": status.get("last_acc", np.nan),
                "recipe": _recipe(config),
                "dir": str(folder),
            }
        )
    return pd.DataFrame(rows)


def _recipe(config: dict) -> str:
    """Short hash of everything but the seed and the paths: experiments that differ only by
    seed share it, so they are summarised together."""
    skip = {"seed", "data_dir", "outdir", "device", "teacher_checkpoint_path", "config_hash"}
    text = json.dumps({k: v for k, v in config.items() if k not in skip}, sort_keys=True)
    return hashlib.blake2b(text.encode(), digest_size=4).hexdigest()


def summarize_kd(frame: pd.DataFrame, opts: PlotOptions) -> pd.DataFrame:
    """n, mean, std, median and CI of best and last accuracy per dataset, pair and method,
    over completed experiments (seeds)."""
    done = frame[frame["status"] == "completed"]
    if done.empty:
        return pd.DataFrame()
    by = list(KD_AXES)
    if (done.groupby(by)["recipe"].nunique() > 1).any():
        by.append("recipe")  # several recipes of one method: keep them apart
    return opts.summarize(done, by, list(KD_METRICS))


@styled
def kd_figure(summary: pd.DataFrame, dataset: str) -> Figure:
    """Best and last test accuracy per method (mean with CI bars) for one dataset."""
    part = summary[summary["dataset"] == dataset]
    keys = part[["teacher", "student", "method"]].drop_duplicates().values.tolist()
    pairs = {(t, s) for t, s, m in keys if t != "-"}
    one_pair = len(pairs) <= 1
    labels = [m if t == "-" or one_pair else f"{m}\n{t}->{s}" for t, s, m in keys]
    fig, axes = new_figure(min(PAGE_WIDTH, 1.0 + 0.55 * len(keys)), 3.0)
    ax = axes[0][0]
    colors = series_colors(2)
    for j, metric in enumerate(KD_METRICS):
        rows = part[part["metric"] == metric]
        means, lows, highs = [], [], []
        for t, s, m in keys:
            r = rows[(rows["teacher"] == t) & (rows["student"] == s) & (rows["method"] == m)]
            mean = float(r["mean"].iloc[0]) if len(r) else np.nan
            means.append(mean)
            lows.append(mean - float(r["ci_low"].iloc[0]) if len(r) else 0.0)
            highs.append(float(r["ci_high"].iloc[0]) - mean if len(r) else 0.0)
        x = np.arange(len(keys)) + (j - 0.5) * 0.35
        err = np.nan_to_num(np.array([lows, highs]))
        ax.bar(
            x,
            means,
            0.35,
            yerr=err,
            capsize=2,
            color=colors[j],
            label=metric.replace("_acc", " epoch").replace("_", " "),
        )
    ax.set_xticks(
        np.arange(len(keys)),
        labels,
        rotation=0 if one_pair else 30,
        ha="center" if one_pair else "right",
    )
    ax.set_ylabel("test accuracy")
    pair = f", {next(iter(pairs))[0]} -> {next(iter(pairs))[1]}" if one_pair and pairs else ""
    ax.set_title(f"KD on {dataset}{pair}: best and last epoch (mean, CI over seeds)")
    fig.legend(loc="outside lower center", ncol=2)
    finite = part["mean"].dropna()
    if len(finite):
        ax.set_ylim(max(0.0, float(finite.min()) - 0.1), min(1.0, float(finite.max()) + 0.05))
    return fig

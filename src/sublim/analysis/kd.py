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
    found = []
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
        if "role" in config:  # else not a KD experiment
            found.append((folder, status, config))
    # A student's teacher enters its recipe by the teacher's own recipe (seed left out), not by
    # the teacher's hash: students of different seeds, each with its teacher of the same recipe,
    # pool; a teacher trained differently keeps them apart.
    teachers = {
        str(c.get("config_hash")): _recipe(c) for _, _, c in found if c.get("role") == "teacher"
    }
    rows = []
    for folder, status, config in found:
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
                "recipe": _recipe(config, teachers),
                "dir": str(folder),
            }
        )
    return pd.DataFrame(rows)


def _recipe(config: dict, teachers: dict[str, str] | None = None) -> str:
    """Short hash of everything but the seeds and the paths: experiments that differ only by
    seed share it, so they are summarised together (automatically chosen layers count as the
    "auto:METRIC" the user asked for). `teachers` maps a teacher's config hash
    to its recipe, which stands for the student's `teacher_hash` when known."""
    skip = {
        *("seed", "teacher_seed", "data_dir", "outdir", "device"),
        *("teacher_checkpoint_path", "config_hash"),
    }
    kept = {k: v for k, v in config.items() if k not in skip}
    requested = kept.pop("teacher_layers_requested", None)
    if requested and isinstance(kept.get("method_params"), dict):  # "auto:q" as asked, not
        kept["method_params"] = {**kept["method_params"], "teacher_layers": requested}  # per seed
    teacher = str(kept.get("teacher_hash"))
    if teachers and teacher in teachers:
        kept["teacher_hash"] = f"recipe:{teachers[teacher]}"
    text = json.dumps(kept, sort_keys=True)
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
    # a row without a teacher (a teacher's training, a student alone) is named by its model too:
    # the teacher and the student alone differ only there
    labels = [f"{s}\n{m}" if t == "-" else m if one_pair else f"{m}\n{t}->{s}" for t, s, m in keys]
    fig, axes = new_figure(min(PAGE_WIDTH, max(4.8, 1.0 + 0.55 * len(keys))), 3.2)
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
    ax.set_title(f"KD on {dataset}{pair}\nbest and last epoch (mean and CI over seeds)")
    fig.legend(loc="outside lower center", ncol=2)
    finite = part["mean"].dropna()
    if len(finite):
        ax.set_ylim(max(0.0, float(finite.min()) - 0.1), min(1.0, float(finite.max()) + 0.05))
    return fig


def kd_gains(frame: pd.DataFrame, opts: PlotOptions) -> pd.DataFrame:
    """The gain of each distillation over its student trained alone (the KD_wo_CE paper's
    figure): per dataset, pair, method and metric, mean(method) - mean(alone) over completed
    seeds, with a bootstrap CI that resamples both groups independently (seeded per group)."""
    from .bootstrap import bootstrap_distribution, group_seed

    done = frame[frame["status"] == "completed"]
    alone = done[done["teacher"] == "-"]
    students = done[done["teacher"] != "-"]
    rows = []
    for (dataset, teacher, student, method), part in students.groupby(
        ["dataset", "teacher", "student", "method"], sort=True
    ):
        base = alone[(alone["dataset"] == dataset) & (alone["student"] == student)]
        if base.empty:
            continue
        for metric in KD_METRICS:
            a = part[metric].dropna().to_numpy(float)
            b = base[metric].dropna().to_numpy(float)
            if not len(a) or not len(b):
                continue
            gain = float(a.mean() - b.mean())
            low = high = np.nan
            if len(a) > 1 or len(b) > 1:
                rng = np.random.default_rng(
                    group_seed(opts.seed, dataset, teacher, student, method, metric)
                )
                diff = bootstrap_distribution(a, "mean", opts.n_resamples, rng)
                diff -= bootstrap_distribution(b, "mean", opts.n_resamples, rng)
                tail = (1 - opts.level) / 2
                low, high = (float(q) for q in np.quantile(diff, [tail, 1 - tail]))
            rows.append(
                {
                    "dataset": dataset,
                    "teacher": teacher,
                    "student": student,
                    "method": method,
                    "metric": metric,
                    "n": len(a),
                    "n_alone": len(b),
                    "alone_mean": float(b.mean()),
                    "gain": gain,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    return pd.DataFrame(rows)


@styled
def kd_gain_figure(gains: pd.DataFrame, metric: str = "best_acc") -> Figure:
    """Horizontal bars of method minus the student alone, in accuracy points, with CIs: one
    panel per pair (rows) and dataset (columns), methods in the same order everywhere."""
    part = gains[gains["metric"] == metric]
    datasets = sorted(part["dataset"].unique())
    pairs = sorted({(t, s) for t, s in part[["teacher", "student"]].itertuples(index=False)})
    methods = sorted(part["method"].unique())
    width = min(PAGE_WIDTH, max(4.8, 1.4 + 2.0 * len(datasets)))
    height = 0.9 + (0.25 * len(methods) + 0.5) * len(pairs)
    fig, axes = new_figure(width, height, nrows=len(pairs), ncols=len(datasets), sharey=True)
    for i, (teacher, student) in enumerate(pairs):
        for j, dataset in enumerate(datasets):
            ax = axes[i][j]
            cell = part[
                (part["teacher"] == teacher)
                & (part["student"] == student)
                & (part["dataset"] == dataset)
            ].set_index("method")
            y = np.arange(len(methods))
            gain = np.array([100 * cell["gain"].get(m, np.nan) for m in methods])
            low = np.array([100 * cell["ci_low"].get(m, np.nan) for m in methods])
            high = np.array([100 * cell["ci_high"].get(m, np.nan) for m in methods])
            err = np.nan_to_num(np.array([gain - low, high - gain]))
            colors = ["#2a7f62" if g >= 0 else "#b5523b" for g in np.nan_to_num(gain)]
            ax.barh(y, np.nan_to_num(gain), xerr=err, color=colors, capsize=1.5, height=0.7)
            ax.axvline(0.0, color="black", linewidth=0.6)
            ax.set_yticks(y, methods)
            if i == 0 and j == 0:  # the y axis is shared: invert it once, first method on top
                ax.invert_yaxis()
            ax.set_title(f"{teacher} -> {student}, {dataset}")
            if i == len(pairs) - 1:
                ax.set_xlabel("gain over the student alone (points)")
    which = "best" if metric == "best_acc" else "last"
    fig.suptitle(f"Distillation gain, {which}-epoch test accuracy\n(mean and CI over seeds)")
    return fig

"""Plots of runs recorded with `--diagnostics` (the course report's figures).

For each such run: training loss and test accuracy per epoch of teacher and student, a grid of
test images with the student's (and teacher's) predictions, and the distribution of teacher and
student aux outputs on noise. Reads `seed_*/diagnostics/<run_id>.npz`; never imports the engine.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from .load import SKIP_DIRS
from .style import new_figure, styled

MAX_RUNS = 6  # diagnostics plotted per report (the first runs by seed and label)


def find_diagnostics(root: str | os.PathLike[str]) -> list[Path]:
    """Every diagnostics file under `root`, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if Path(dirpath).name == "diagnostics":
            found += [Path(dirpath) / f for f in filenames if f.endswith(".npz")]
    return sorted(found)


def read(path: Path, warn: Callable[[str], None]) -> dict[str, np.ndarray] | None:
    """The arrays of one diagnostics file (None, with a warning, when it cannot be read)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except Exception as exc:  # noqa: BLE001 (a damaged file: zip, zlib or format errors)
        warn(f"{path}: unreadable diagnostics file ({str(exc).splitlines()[0]}); skipped")
        return None


@styled
def curves_figure(d: dict[str, np.ndarray], title: str) -> Figure:
    """Per-epoch training loss (left, log scale) and test accuracy (right) of both models."""
    fig, axes = new_figure(6.4, 2.6, ncols=2)
    loss_ax, acc_ax = axes[0]
    for key, label, color in (
        ("teacher_history", "teacher (cross-entropy)", "C0"),
        ("student_history", "student (distillation loss)", "C1"),
    ):
        if key not in d or not len(d[key]):
            continue
        h = d[key]
        loss_ax.plot(h[:, 0], h[:, 1], marker="o", color=color, label=label)
        acc_ax.plot(h[:, 0], h[:, 2], marker="o", color=color, label=label.split(" (")[0])
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("mean training loss")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("test accuracy")
    acc_ax.set_ylim(0, 1)
    chance = 1 / max(len(d.get("class_names", [])), 1)
    acc_ax.axhline(chance, ls=":", color="0.45", lw=0.9, label=f"chance ({chance:.2f})")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.get_major_locator().set_params(integer=True)
    loss_ax.legend(loc="upper right")
    acc_ax.legend(loc="lower right")
    fig.suptitle(title, fontsize=9)
    return fig


@styled
def predictions_figure(d: dict[str, np.ndarray], title: str) -> Figure:
    """Test images with the student's prediction (green when right, red when wrong)."""
    images, labels = d["sample_images"], d["sample_labels"]
    names = [str(n) for n in d.get("class_names", [])] or [str(i) for i in range(labels.max() + 1)]
    n = len(images)
    cols = min(8, n)
    rows = -(-n // cols)
    fig, axes = new_figure(0.85 * cols + 0.2, 1.0 * rows + 0.45, ncols=cols, nrows=rows)
    for i, ax in enumerate(ax for row in axes for ax in row):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i]
        if img.shape[0] == 1:
            ax.imshow(img[0], cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(np.transpose(img, (1, 2, 0)))
        pred, true = int(d["sample_student_pred"][i]), int(labels[i])
        ax.set_title(
            f"{names[pred]}\n(true {names[true]})",
            fontsize=6,
            color="tab:green" if pred == true else "tab:red",
        )
    right = float(np.mean(d["sample_student_pred"] == labels))
    teacher = float(np.mean(d["sample_teacher_pred"] == labels))
    fig.suptitle(
        f"{title}: student predictions ({right:.0%} right; teacher {teacher:.0%})", fontsize=8
    )
    return fig


@styled
def aux_figure(d: dict[str, np.ndarray], title: str) -> Figure:
    """Histogram of aux outputs on noise (teacher, student before and after) and a scatter."""
    fig, axes = new_figure(6.4, 2.6, ncols=2)
    hist_ax, scatter_ax = axes[0]
    teacher = d["noise_teacher_aux"].ravel()
    series = (
        (teacher, "teacher", "0.2"),
        (d["noise_student_aux_init"].ravel(), "student, initial", "C0"),
        (d["noise_student_aux_final"].ravel(), "student, final", "C1"),
    )
    low, high = np.percentile(np.concatenate([s for s, _, _ in series]), [0.5, 99.5])
    bins = np.linspace(low, high, 60)
    for values, label, color in series:
        hist_ax.hist(
            values, bins=bins, density=True, histtype="step", lw=1.2, color=color, label=label
        )
    hist_ax.set_xlabel("aux logit value on noise")
    hist_ax.set_ylabel("density")
    hist_ax.legend(loc="upper left")
    final = d["noise_student_aux_final"].ravel()
    init = d["noise_student_aux_init"].ravel()
    step = max(1, teacher.size // 4000)
    scatter_ax.scatter(teacher[::step], init[::step], s=2, alpha=0.3, color="C0", label="initial")
    scatter_ax.scatter(teacher[::step], final[::step], s=2, alpha=0.3, color="C1", label="final")
    scatter_ax.plot([low, high], [low, high], color="0.4", lw=0.8, ls="--")
    r = np.corrcoef(teacher, final)[0, 1] if teacher.std() > 0 and final.std() > 0 else np.nan
    scatter_ax.set_xlabel("teacher aux logit")
    scatter_ax.set_ylabel("student aux logit")
    scatter_ax.set_title(f"final correlation r = {r:.3f}")
    scatter_ax.legend(loc="upper left", markerscale=4)
    fig.suptitle(title, fontsize=9)
    return fig


def diagnostics_figures(
    root: str | os.PathLike[str], runs: pd.DataFrame, warn: Callable[[str], None]
) -> list[tuple[str, str, str, Figure]]:
    """(sweep, file stem, caption, figure) for up to MAX_RUNS runs with diagnostics."""
    known = set(runs["run_id"].astype(str)) if "run_id" in runs else set()
    files = [p for p in find_diagnostics(root) if p.stem in known]  # not orphans of a crash
    if len(files) > MAX_RUNS:
        warn(
            f"{len(files)} runs have diagnostics; plotting the first {MAX_RUNS} "
            "(run fewer with --diagnostics, or report a sub-directory)"
        )
    labels = runs.set_index("run_id") if "run_id" in runs else pd.DataFrame()
    out = []
    for path in files[:MAX_RUNS]:
        d = read(path, warn)
        if d is None:
            continue
        run_id = path.stem
        sweep, name = "", run_id
        if run_id in labels.index:
            row = labels.loc[run_id]
            sweep = str(row.get("sweep_name", ""))
            name = f"{row.get('run_label') or sweep} seed {row.get('seed')}"
        stem = f"diagnostics_{run_id}"
        out.append(
            (
                sweep,
                f"{stem}_curves",
                f"{name}: loss and accuracy per epoch",
                curves_figure(d, name),
            )
        )
        out.append(
            (
                sweep,
                f"{stem}_predictions",
                f"{name}: sample predictions",
                predictions_figure(d, name),
            )
        )
        out.append((sweep, f"{stem}_aux", f"{name}: aux outputs on noise", aux_figure(d, name)))
    return out

"""Group runs by the axes that vary and summarise each metric: n, mean, std, median, bootstrap CI.

Axis detection looks at the config columns of runs.csv, keeps those that vary, and drops any
column that does not split the runs further once the more readable columns are kept (for
example `student_init_config` when a sweep's `condition` already names it, or
`teacher_hidden_dims` when it moves in lockstep with `student_hidden_dims`).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from ..errors import UserError
from .bootstrap import DEFAULT_RESAMPLES, METHODS, bootstrap_ci, group_seed

# Config columns that may be axes, most readable first (detection keeps earlier ones).
AXIS_CANDIDATES: tuple[str, ...] = (
    "sweep_name",
    "condition",
    "dataset",
    "emnist_split",
    "num_classes",
    "class_count",
    "m",
    "noise_steps",
    "perturb_std",
    "perturb_layers",
    "perturb_target",
    "perturb_timing",
    "teacher_type",
    "student_type",
    "student_hidden_dims",
    "teacher_hidden_dims",
    "teacher_epochs",
    "student_epochs",
    "data_bsize",
    "noise_bsize",
    "teacher_lr",
    "student_lr",
    "noise_dist",
    "perlin_res",
    "normalize_noise",
    "distill_loss",
    "temperature",
    "head_layout",
    "init_scheme",
    "noise_pool",
    "augment",
    "image_size",
    "test_fraction",
    "data_mean",
    "data_std",
    "teacher_checkpoint",
    "eval_noise_batches",
    "eval_noise_bsize",
    "similarity_samples",
    "class_selection",
    "classes",
    "student_init_config",
    "teacher_init_config",
    "student_trainable_config",
    "teacher_trainable_config",
    "student_arch_description",
    "teacher_arch_description",
    "perturb_specs",
)
DEFAULT_METRICS: tuple[str, ...] = (
    "student_final_acc",
    "student_init_acc",
    "teacher_final_acc",
    "student_final_aux_loss",
)
SUMMARY_STATS: tuple[str, ...] = ("n", "mean", "std", "median", "ci_low", "ci_high")


def _key(value: Any) -> str:
    """A hashable text form of a cell (NaN and None as empty)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value)


def _n_groups(frame: pd.DataFrame, columns: Sequence[str]) -> int:
    if not columns:
        return 1 if len(frame) else 0
    return len(frame[list(columns)].map(_key).drop_duplicates())


def _content(frame: pd.DataFrame, key: tuple[Any, ...]) -> str:
    """What a group is, for its bootstrap seed: its run ids when known (so the same runs get
    the same interval however they are grouped), else its labels."""
    if "run_id" in frame:
        return ",".join(sorted(map(str, frame["run_id"])))
    return "|".join(map(_key, key))


def detect_axes(runs: pd.DataFrame) -> list[str]:
    """The config columns that vary across `runs`, without redundant ones (readable first)."""
    varying = [
        c
        for c in AXIS_CANDIDATES
        if c in runs and runs[c].map(_key).nunique() > 1 and runs[c].map(_key).ne("").any()
    ]
    if not varying:
        return []
    total = _n_groups(runs, varying)
    kept = list(varying)
    for column in reversed(varying):
        rest = [c for c in kept if c != column]
        if rest and _n_groups(runs, rest) == total:
            kept = rest
    return kept


def check_columns(runs: pd.DataFrame, names: Sequence[str], flag: str, what: str) -> None:
    """Raise a one-line UserError naming `flag` when a column is not in `runs`."""
    for name in names:
        if name not in runs.columns:
            choices = ", ".join(_choices(runs, what))
            raise UserError(f"{flag}: unknown {what} {name!r}; available: {choices}")


def _choices(runs: pd.DataFrame, what: str) -> list[str]:
    if what == "axis":
        return [c for c in AXIS_CANDIDATES if c in runs] + ["seed", "run_label"]
    return [c for c in runs.columns if pd.api.types.is_numeric_dtype(runs[c])]


def natural_key(value: Any) -> tuple[Any, ...]:
    """Sort key that orders numbers and number lists ('[256,8]' < '[256,16]') numerically."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value)) if not math.isnan(float(value)) else (3, 0.0)
    text = _key(value)
    if text.startswith("["):
        try:
            items = json.loads(text)
            if all(isinstance(v, (int, float)) for v in items):
                return (1, len(items), tuple(float(v) for v in items))
        except (json.JSONDecodeError, TypeError):
            pass
    parts = re.split(r"(\d+(?:\.\d+)?)", text)
    return (2, tuple((0, float(p)) if i % 2 else (1, p) for i, p in enumerate(parts)))


def summarize(
    runs: pd.DataFrame,
    by: Sequence[str] | None = None,
    metrics: Sequence[str] | None = None,
    *,
    level: float = 0.95,
    method: str = "percentile",
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> pd.DataFrame:
    """One row per group and metric: the `by` columns, metric, n, mean, std, median, CI.

    `by` defaults to `detect_axes(runs)`; `metrics` to the student and teacher accuracies and
    the student's final aux loss (those present). The CI is a seeded bootstrap of the mean
    (`method` "percentile" or "bca") at `level`, with a per-group seed derived from `seed`.
    """
    if method not in METHODS:
        raise UserError(f"--ci: invalid value {method!r}; allowed: {', '.join(METHODS)}")
    by = list(detect_axes(runs) if by is None else by)
    check_columns(runs, by, "--by", "axis")
    if metrics is None:
        metrics = [m for m in DEFAULT_METRICS if m in runs.columns]
    metrics = list(metrics)
    check_columns(runs, metrics, "--metric", "metric")
    for name in metrics:
        if not pd.api.types.is_numeric_dtype(runs[name]):
            choices = ", ".join(_choices(runs, "metric"))
            raise UserError(f"--metric: {name!r} is not numeric; numeric columns: {choices}")
    rows: list[dict[str, Any]] = []
    groups = runs.groupby(by, sort=False, dropna=False) if by else [((), runs)]
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            values = frame[metric].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            low, high = bootstrap_ci(
                values,
                level=level,
                method=method,
                n_resamples=n_resamples,
                seed=group_seed(seed, _content(frame, key), metric),
            )
            rows.append(
                {
                    **dict(zip(by, key, strict=True)),
                    "metric": metric,
                    "n": int(values.size),
                    "mean": float(values.mean()) if values.size else math.nan,
                    "std": float(values.std(ddof=1)) if values.size > 1 else math.nan,
                    "median": float(np.median(values)) if values.size else math.nan,
                    "ci_low": low,
                    "ci_high": high,
                }
            )
    table = pd.DataFrame(rows, columns=[*by, "metric", *SUMMARY_STATS])
    if by and len(table):
        order = sorted(
            range(len(table)),
            key=lambda i: tuple(natural_key(table[c].iat[i]) for c in by),
        )
        table = table.iloc[order].reset_index(drop=True)
    table.attrs.update(level=level, method=method, n_resamples=n_resamples, seed=seed)
    return table

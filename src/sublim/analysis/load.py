"""Read result files back into pandas, tolerating damage: a bad line is reported and skipped.

Results live in per-seed files (`seed_000042/runs.csv`) and optionally in the global aggregates
(`runs_all_seeds.csv`), possibly both, possibly in several output directories below one root.
`load` finds them all, reads each with a lenient CSV reader, drops duplicates by run id and
converts numeric columns. It never imports the engine (or torch).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

import pandas as pd

from ..config import ExperimentConfig
from ..errors import UserError
from ..records import LAYER_METRIC_VALUES
from ..store.schema import LAYER_METRICS_COLUMNS, PERTURBATION_COLUMNS, RUNS_COLUMNS

# table -> (per-seed file name, global aggregate file name)
TABLES: dict[str, tuple[str, str]] = {
    "runs": ("runs.csv", "runs_all_seeds.csv"),
    "layer_metrics": ("layer_metrics.csv", "layer_metrics_all_seeds.csv"),
    "perturbations": ("perturbations.csv", "perturbations_all_seeds.csv"),
}
CONFIGS_FILE = "configs.jsonl"
SKIP_DIRS = frozenset({"teachers", "report", ".sublim"})

# Text columns that must never be turned into numbers even when every value looks numeric.
TEXT_COLUMNS = frozenset(
    {
        "run_id",
        "timestamp",
        "sweep_name",
        "run_label",
        "condition",
        "config_hash",
        "torch_version",
        "device",
        "emnist_split",
        "layer_name",
        "tensor_kind",
        "comparison",
        "status",
        "distill_loss",
        "noise_dist",
        "dataset",
        "head_layout",
        "init_scheme",
        "augment",
        "teacher_checkpoint",
    }
)
# Columns written by sublim as numbers: a value there that does not parse marks a damaged row.
_NUMERIC_SUFFIXES = ("_acc", "_loss", "_seconds", "_parameters", "_seed", "_norm", "_rel")
_NUMERIC_PREFIXES = ("cos_", "rel_fro_", "diff_norm_", "weight_", "bias_")
_NUMERIC_CONFIG = {  # the config's numeric settings, written as runs.csv columns
    f.name
    for f in fields(ExperimentConfig)
    if isinstance(f.default, int | float) and not isinstance(f.default, bool)
}
_NUMERIC_NAMES = frozenset(
    {
        *_NUMERIC_CONFIG,
        "schema_version",
        "rng_base",
        "train_size",
        "test_size",
        "num_classes",
        "teacher_train_loss_last",
        "student_train_aux_loss_last",
        "base_num_classes",
        "std",
        *LAYER_METRIC_VALUES,
    }
)
_INTEGRAL = frozenset({"schema_version", "seed", "m", "num_classes", "noise_steps"})
_MISSING = frozenset({"", "nan", "NaN", "none", "None"})

Warn = Callable[[str], None]


class LoadWarning(UserWarning):
    """A result file or line that could not be read and was skipped."""


def _default_warn(message: str) -> None:
    warnings.warn(message, LoadWarning, stacklevel=3)


def is_numeric_column(name: str) -> bool:
    """Whether sublim writes `name` as a number (so an unparsable cell means damage)."""
    return (
        name in _NUMERIC_NAMES
        or name.endswith(_NUMERIC_SUFFIXES)
        or name.startswith(_NUMERIC_PREFIXES)
    )


def find_files(root: str | os.PathLike[str], table: str = "runs") -> list[Path]:
    """Every per-seed and aggregate file of `table` under `root` (any depth), sorted."""
    per_seed, aggregate = TABLES[table]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        here = Path(dirpath)
        if aggregate in filenames:
            found.append(here / aggregate)
        if per_seed in filenames and here.name.startswith("seed_"):
            found.append(here / per_seed)
    return sorted(found)


MAX_WARNINGS_PER_FILE = 5


class _Capped:
    """Forwards the first few warnings about one file, then counts the rest."""

    def __init__(self, warn: Warn, path: Path) -> None:
        self.warn, self.path, self.count = warn, path, 0

    def __call__(self, message: str) -> None:
        self.count += 1
        if self.count <= MAX_WARNINGS_PER_FILE:
            self.warn(message)

    def close(self) -> None:
        extra = self.count - MAX_WARNINGS_PER_FILE
        if extra > 0:
            self.warn(f"{self.path}: {extra} more damaged lines skipped")


def read_csv_lenient(path: Path, warn: Warn) -> tuple[list[str], list[list[str]]]:
    """Header and rows of one CSV file; lines that do not parse or have the wrong width are skipped."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        warn(f"{path}: cannot read ({exc.strerror or exc}); file skipped")
        return [], []
    reader = csv.reader(io.StringIO(text, newline=""))
    header: list[str] = []
    rows: list[list[str]] = []
    while True:
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            warn(f"{path}:{reader.line_num}: unreadable line ({exc}); skipped")
            continue
        if not row or row == [""]:
            continue
        if not header:
            header = row
            continue
        if len(row) != len(header):
            warn(
                f"{path}:{reader.line_num}: expected {len(header)} fields, found {len(row)} "
                "(damaged line); skipped"
            )
            continue
        rows.append(row)
    if not header:
        warn(f"{path}: empty file; skipped")
    return header, rows


def _convert(frame: pd.DataFrame, source: str, warn: Warn) -> pd.DataFrame:
    """Numeric columns as numbers; rows with junk in a numeric column are reported and dropped."""
    bad = pd.Series(False, index=frame.index)
    columns: dict[str, pd.Series] = {}
    for name in frame.columns:
        col = frame[name]
        columns[name] = col
        if name in TEXT_COLUMNS:
            continue
        missing = col.isna() | col.isin(_MISSING)
        numbers = pd.to_numeric(col.where(~missing, None), errors="coerce")
        junk = numbers.isna() & ~missing
        if junk.any() and not is_numeric_column(name):
            continue  # a text column
        for i in junk[junk & ~bad].index:
            run = frame["run_id"].iat[i] if "run_id" in frame else f"row {i + 1}"
            warn(
                f"{source}: run {run}: {name}={col.iat[i]!r} is not a number (damaged line); skipped"
            )
        bad |= junk
        columns[name] = numbers  # int64 when every cell is an integer (exact 64-bit seeds)
    out = pd.DataFrame(columns, index=frame.index)
    if bad.any():
        out = out[~bad].reset_index(drop=True)
        # a column that held junk may now be all-integer again
        for name in out.columns:
            if out[name].dtype == "float64" and out[name].notna().all():
                as_int = out[name].astype("int64")
                if (as_int == out[name]).all() and name in _INTEGRAL:
                    out[name] = as_int
    return out


def _schema(table: str) -> list[str]:
    return {"runs": RUNS_COLUMNS, "layer_metrics": LAYER_METRICS_COLUMNS}.get(
        table, PERTURBATION_COLUMNS
    )


def load(
    outdir: str | os.PathLike[str], table: str = "runs", warn: Warn | None = None
) -> pd.DataFrame:
    """All rows of `table` ("runs", "layer_metrics", "perturbations") under `outdir`, deduplicated.

    Per-seed files and aggregates may be mixed (a run present in both appears once); a missing or
    damaged file or line is reported through `warn` (default: a LoadWarning) and skipped. Runs get
    derived columns `perturb_std`, `perturb_layers`, `perturb_target`, `perturb_timing`.
    """
    if table not in TABLES:
        raise UserError(f"table: invalid value {table!r}; allowed: {', '.join(TABLES)}")
    root = Path(outdir)
    if not root.is_dir():
        raise UserError(f"OUTDIR {root}: not a directory; pass a sublim output directory")
    warn = warn or _default_warn
    frames: list[pd.DataFrame] = []
    for path in find_files(root, table):
        capped = _Capped(warn, path)
        header, rows = read_csv_lenient(path, capped)
        if header and len(set(header)) != len(header):
            capped(f"{path}: repeated column names in the header; file skipped")
            header = []
        frame = pd.DataFrame()
        if header:
            frame = _convert(pd.DataFrame(rows, columns=header, dtype=object), str(path), capped)
        capped.close()
        if not frame.empty:
            frames.append(frame.assign(_file=len(frames)))
    if not frames:
        frame = pd.DataFrame(columns=_schema(table))
    else:
        frame = pd.concat(frames, ignore_index=True, sort=False)
    frame = _dedupe(frame, table)
    if table == "runs":
        frame = add_derived_columns(frame)
    frame.attrs["outdir"] = str(root)
    return frame


def _dedupe(frame: pd.DataFrame, table: str) -> pd.DataFrame:
    """Each run's rows from the first file that has it (per-seed files and aggregates overlap)."""
    if frame.empty or "run_id" not in frame:
        return frame.drop(columns="_file", errors="ignore")
    first = frame.groupby("run_id", sort=False)["_file"].transform("min")
    keep = frame["_file"].eq(first) | frame["run_id"].isna()
    if table == "runs":
        keep &= ~frame["run_id"].duplicated() | frame["run_id"].isna()
    return frame[keep].drop(columns="_file").reset_index(drop=True)


def _perturb_summary(text: Any) -> dict[str, Any]:
    """Single values (joined with '+' when specs differ) of a run's perturbation specs."""
    out: dict[str, Any] = {
        "perturb_std": math.nan,
        "perturb_layers": "",
        "perturb_target": "",
        "perturb_timing": "",
    }
    try:
        specs = json.loads(text) if isinstance(text, str) and text else []
    except json.JSONDecodeError:
        return out
    if not isinstance(specs, list) or not specs:
        return out
    stds = {float(s.get("std", 0.0)) for s in specs if isinstance(s, dict)}
    out["perturb_std"] = stds.pop() if len(stds) == 1 else math.nan
    for key in ("layers", "target", "timing"):
        values = [_compact(s.get(key, "")) for s in specs if isinstance(s, dict)]
        out[f"perturb_{key}"] = "+".join(dict.fromkeys(values))
    return out


def _compact(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def add_derived_columns(runs: pd.DataFrame) -> pd.DataFrame:
    """Add the perturbation summary columns and a `condition` column (empty when absent)."""
    runs = runs.copy()
    if "condition" not in runs:
        runs["condition"] = ""
    runs["condition"] = runs["condition"].fillna("").astype(str)
    specs = runs["perturb_specs"] if "perturb_specs" in runs else [""] * len(runs)
    derived = pd.DataFrame([_perturb_summary(s) for s in specs], index=runs.index)
    for name in derived.columns:
        runs[name] = derived[name] if len(runs) else pd.Series(dtype=object)
    return runs


def load_configs(outdir: str | os.PathLike[str], warn: Warn | None = None) -> list[dict[str, Any]]:
    """The configs.jsonl lines under `outdir` (one per run id; broken lines reported and skipped)."""
    warn = warn or _default_warn
    seen: set[str] = set()
    out: list[dict[str, Any]] = []
    for path in _config_files(Path(outdir)):
        try:
            lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError as exc:
            warn(f"{path}: cannot read ({exc.strerror or exc}); file skipped")
            continue
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError:
                warn(f"{path}:{number}: not a JSON line (damaged); skipped")
                continue
            run_id = str(item.get("run_id", "")) if isinstance(item, dict) else ""
            if not run_id or run_id in seen:
                continue
            seen.add(run_id)
            out.append(item)
    return out


def _config_files(root: Path) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
        if CONFIGS_FILE in filenames and Path(dirpath).name.startswith("seed_"):
            yield Path(dirpath) / CONFIGS_FILE

"""Summary tables for people: one row per group, one `mean [low, high]` cell per metric."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from .plots import fmt_value, short_labels


def _num(value: float, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"


def wide_table(summary: pd.DataFrame, digits: int = 4) -> pd.DataFrame:
    """Groups as rows; n, then `mean [ci_low, ci_high]` for each metric, as text."""
    by = [c for c in summary.columns if c not in ("metric", "n", "mean", "std", "median")]
    by = [c for c in by if c not in ("ci_low", "ci_high")]
    if summary.empty:
        return pd.DataFrame(columns=[*by, "n"])
    rows: dict[tuple[Any, ...], dict[str, str]] = {}
    for rec in summary.itertuples(index=False):
        data = rec._asdict()
        key = tuple("" if _missing(data[c]) else str(data[c]) for c in by)
        row = rows.setdefault(
            key, {c: "-" if _missing(data[c]) else _label(summary, c, data[c]) for c in by}
        )
        row.setdefault("n", str(data["n"]))
        row[data["metric"]] = (
            f"{_num(data['mean'], digits)} [{_num(data['ci_low'], digits)}, "
            f"{_num(data['ci_high'], digits)}]"
        )
    return pd.DataFrame(list(rows.values()))


def _label(summary: pd.DataFrame, column: str, value: Any) -> str:
    labels = summary.attrs.setdefault("_labels", {})
    if column not in labels:
        labels[column] = short_labels(list(summary[column].unique()))
    return labels[column].get(value, fmt_value(value))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def text_table(frame: pd.DataFrame, max_rows: int = 40) -> str:
    """Aligned plain-text table; rows beyond `max_rows` are summarised in a last line."""
    if frame.empty:
        return "(no rows)"
    shown = frame.head(max_rows)
    cells = [list(map(str, frame.columns))] + [
        ["-" if _missing(v) else str(v) for v in row] for row in shown.itertuples(index=False)
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if len(frame) > max_rows:
        lines.append(f"... {len(frame) - max_rows} more rows (see summary.csv)")
    return "\n".join(lines)

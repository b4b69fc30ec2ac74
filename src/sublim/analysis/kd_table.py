"""The KD benchmark table in the papers' layout, reproduced beside published.

Methods are rows and teacher -> student pairs columns, as in the CRD paper and mdistiller's
README. Each cell gives our top-1 (%) over seeds, mean +- std and a bootstrap CI, at the best
and at the last epoch, then the published number and the difference. The difference compares
like with like: our last epoch against RepDistiller's (last-epoch) numbers, our best epoch
against mdistiller's and ReviewKD's (best-epoch) numbers; the published column says which.
"""

from __future__ import annotations

import math

import pandas as pd

from .published import lookup

# rows in the CRD paper's order, then the methods it does not have
ORDER = (
    *("teacher", "student", "kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab"),
    *("ft", "fsp", "nst", "crd", "crd_kd", "ofd", "reviewkd", "dkd", "kd_dot", "logit_std"),
)
COLUMNS = (
    *("dataset", "teacher", "student", "method", "n"),
    *("best_top1", "best_std", "best_ci_low", "best_ci_high"),
    *("last_top1", "last_std", "last_ci_low", "last_ci_high"),
    *("published_top1", "published_epoch", "published_table", "published_source", "diff"),
)


def benchmark_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per (dataset, pair, method) of `summarize_kd`'s output, in percent, with the
    teacher and the student trained alone as rows "teacher" and "student" of every pair, and
    the published reference (`sublim.analysis.published`) and our difference to it."""
    if summary.empty:
        return pd.DataFrame(columns=list(COLUMNS))
    records = summary.to_dict("records")
    recipes: dict[tuple, set] = {}
    for rec in records:
        key = (rec["dataset"], rec["teacher"], rec["student"], rec["method"])
        recipes.setdefault(key, set()).add(rec.get("recipe"))
    stats = {}
    for rec in records:
        method = rec["method"]
        key = (rec["dataset"], rec["teacher"], rec["student"], method)
        if len(recipes[key]) > 1:  # one method, several recipes: kept apart, only where it is so
            method = f"{method} [{rec['recipe']}]"
        key = (rec["dataset"], rec["teacher"], rec["student"], method)
        stats.setdefault(key, {})[rec["metric"]] = rec
    pairs = sorted({(d, t, s) for d, t, s, _ in stats if t != "-"})
    rows = []
    for dataset, teacher, student in pairs:
        cells = [("teacher", (dataset, "-", teacher, "alone"))]
        cells.append(("student", (dataset, "-", student, "alone")))
        methods = sorted(
            {m for d, t, s, m in stats if (d, t, s) == (dataset, teacher, student)},
            key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m),
        )
        cells += [(m, (dataset, teacher, student, m)) for m in methods]
        for method, key in cells:
            found = stats.get(key)
            if found is None:
                continue
            row: dict[str, object] = {
                "dataset": dataset,
                "teacher": teacher,
                "student": student,
                "method": method,
                "n": int(max(r["n"] for r in found.values())),
            }
            for metric, prefix in (("best_acc", "best"), ("last_acc", "last")):
                r = found.get(metric, {})
                for col, src in (("top1", "mean"), ("std", "std"), ("ci_low", "ci_low")):
                    row[f"{prefix}_{col}"] = _pct(r.get(src))
                row[f"{prefix}_ci_high"] = _pct(r.get("ci_high"))
            ref = lookup(dataset, teacher, student, method.split(" [")[0])
            row["published_top1"] = ref["top1"] if ref else math.nan
            row["published_epoch"] = ref["epoch"] if ref else ""
            row["published_table"] = ref["table"] if ref else ""
            row["published_source"] = ref["source"] if ref else ""
            ours = row[f"{ref['epoch']}_top1"] if ref else math.nan
            row["diff"] = ours - ref["top1"] if ref else math.nan  # type: ignore[operator]
            rows.append(row)
    return pd.DataFrame(rows, columns=list(COLUMNS))


def _pct(value: object) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan
    return 100.0 * number


def _num(value: object, digits: int = 2) -> str:
    number = float(value)  # type: ignore[arg-type]
    return "-" if math.isnan(number) else f"{number:.{digits}f}"


def _ours(row: pd.Series, prefix: str) -> str:
    mean, std = row[f"{prefix}_top1"], row[f"{prefix}_std"]
    if math.isnan(mean):
        return "-"
    text = _num(mean)
    if not math.isnan(std):
        text += f" ± {_num(std)}"
    low, high = row[f"{prefix}_ci_low"], row[f"{prefix}_ci_high"]
    if not (math.isnan(low) or math.isnan(high)):
        text += f" [{_num(low)}, {_num(high)}]"
    return text


def wide_benchmark(table: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """The paper layout of one dataset: a row per method, four columns per pair (ours at the
    last and the best epoch, the published number with its epoch, ours minus published)."""
    part = table[table["dataset"] == dataset]
    pairs = list(dict.fromkeys(zip(part["teacher"], part["student"], strict=True)))
    methods = sorted(
        part["method"].unique(), key=lambda m: (ORDER.index(m) if m in ORDER else len(ORDER), m)
    )
    out = []
    for method in methods:
        line = {"method": method}
        for teacher, student in pairs:
            pair = f"{teacher} -> {student}"
            hit = part[
                (part["teacher"] == teacher)
                & (part["student"] == student)
                & (part["method"] == method)
            ]
            row = hit.iloc[0] if len(hit) else None
            line[f"{pair}: last"] = "-" if row is None else _ours(row, "last")
            line[f"{pair}: best"] = "-" if row is None else _ours(row, "best")
            published = "-"
            if row is not None and not math.isnan(row["published_top1"]):
                published = f"{_num(row['published_top1'])} ({row['published_epoch']})"
            line[f"{pair}: published"] = published
            diff = "-" if row is None else _num(row["diff"])
            line[f"{pair}: diff"] = diff if diff == "-" else f"{float(row['diff']):+.2f}"
        out.append(line)
    return pd.DataFrame(out)


def markdown(table: pd.DataFrame) -> str:
    """Every dataset's paper-layout table as Markdown, with what the columns mean."""
    parts = [
        "# KD benchmark: reproduced and published top-1 (%)",
        "",
        "Ours: mean ± std [bootstrap CI] over seeds, at the last and at the best epoch. "
        "Published: the reference number with the epoch its source reports (RepDistiller: "
        "last; mdistiller, ReviewKD and their lineage: best). Diff: ours at that same epoch "
        "minus published. Sources: kd_benchmark.csv (published_table, published_source).",
    ]
    for dataset in sorted(table["dataset"].unique()):
        wide = wide_benchmark(table, dataset)
        n = table[table["dataset"] == dataset]["n"]
        seeds = f"{n.min()}" if n.min() == n.max() else f"{n.min()} to {n.max()}"
        parts += ["", f"## {dataset} (n = {seeds} seeds per cell)", ""]
        parts.append("| " + " | ".join(wide.columns) + " |")
        parts.append("|" + "---|" * len(wide.columns))
        for rec in wide.itertuples(index=False):
            parts.append("| " + " | ".join(str(v) for v in rec) + " |")
    return "\n".join(parts) + "\n"

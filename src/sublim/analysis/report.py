"""`sublim report`: summary tables, the paper's figures, generic and layer plots, an HTML page.

Everything is validated before anything is written; every file is written atomically under
`<outdir>/report/` (or `--out`), so an interrupted report never leaves half a file.
"""

from __future__ import annotations

import platform
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..errors import StoreError, UserError
from ..store.writer import check_writable
from .bootstrap import DEFAULT_RESAMPLES, METHODS
from .diagnostics import diagnostics_figures
from .html import Section, render_html
from .kd import kd_figure, kd_gain_figure, kd_gains, load_kd, summarize_kd
from .kd_table import benchmark_table, markdown, wide_benchmark
from .layers import METRICS as LAYER_METRICS
from .layers import layer_similarity_figure
from .load import load, load_configs
from .plots import PlotOptions, generic_figure, pick_x
from .quality import depth_figure, load_quality, quality_figure
from .recipes import FIGURES, RECIPES, RecipeMismatch, figure_of
from .style import FORMATS, close, render, save, write_atomic
from .summary import DEFAULT_METRICS, check_columns, detect_axes
from .tables import text_table, wide_table

# config fields that say nothing about the experiment (left out of the HTML config tables)
_NOISE_FIELDS = {"seed", "outdir", "data_dir", "run_label", "device", "num_workers"}


@dataclass
class ReportOptions:
    """What `sublim report` draws and how it summarises."""

    by: list[str] | None = None
    metrics: list[str] | None = None
    formats: tuple[str, ...] = ("png",)
    html: bool = False
    figure: str | None = None
    x: str | None = None
    level: float = 0.95
    method: str = "percentile"
    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    layers: bool = True

    def plot(self) -> PlotOptions:
        """The summarising options curves use."""
        return PlotOptions(self.level, self.method, self.n_resamples, self.seed)


@dataclass
class ReportResult:
    """What a report wrote and found."""

    out: Path
    summary: pd.DataFrame
    table_text: str
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_runs: int = 0


def check_options(options: ReportOptions) -> None:
    """Validate the options that do not depend on the data (one-line errors)."""
    for fmt in options.formats:
        if fmt not in FORMATS:
            raise UserError(f"--format: invalid value {fmt!r}; allowed: {', '.join(FORMATS)}")
    if options.figure is not None and options.figure not in FIGURES:
        raise UserError(
            f"--figure: invalid value {options.figure!r}; allowed: {', '.join(FIGURES)}"
        )
    if options.method not in METHODS:
        raise UserError(f"--ci: invalid value {options.method!r}; allowed: {', '.join(METHODS)}")
    if not 0 < options.level < 1:
        raise UserError(f"--level: invalid value {options.level!r}; expected a number in (0, 1)")
    if options.n_resamples < 100:
        raise UserError(f"--n-boot: invalid value {options.n_resamples!r}; expected >= 100")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "runs"


def build_report(
    outdir: str | Path,
    out: str | Path | None = None,
    options: ReportOptions | None = None,
    warn: Callable[[str], None] | None = None,
) -> ReportResult:
    """Load every run under `outdir`, write the summary, figures and (optionally) HTML."""
    options = options or ReportOptions()
    check_options(options)
    warnings: list[str] = []

    def note(message: str) -> None:
        warnings.append(message)
        if warn:
            warn(message)

    out_dir = Path(out) if out is not None else Path(outdir) / "report"
    try:
        check_writable(out_dir)
    except StoreError as exc:
        raise UserError(str(exc).replace("--outdir", "--out", 1)) from None
    runs = load(outdir, "runs", warn=note)
    kd_runs = load_kd(outdir, note)
    quality = load_quality(outdir, note)  # layer_quality.csv of analysed KD models
    if runs.empty and kd_runs.empty and not quality:
        raise UserError(
            f"OUTDIR {outdir}: no runs found (no seed_*/runs.csv or runs_all_seeds.csv, and no "
            "sublim kd experiment or layer_quality.csv, below it)"
        )
    by: list[str] = []
    summary = pd.DataFrame()
    sections: dict[str, str] = {}
    tables: dict[str, tuple[int, pd.DataFrame]] = {}
    if not runs.empty:
        by = options.by if options.by is not None else detect_axes(runs)
        check_columns(runs, by, "--by", "axis")
        metrics = options.metrics or [m for m in DEFAULT_METRICS if m in runs.columns]
        summary = options.plot().summarize(runs, by, metrics)
        if options.x is not None:
            check_columns(runs, [options.x], "--x", "axis")
        sections = _sections(runs, options)
        tables = _section_tables(runs, summary, sections, options)
    kd_summary = summarize_kd(kd_runs, options.plot()) if not kd_runs.empty else pd.DataFrame()
    gains = kd_gains(kd_runs, options.plot()) if not kd_runs.empty else pd.DataFrame()
    if not kd_summary.empty:
        tables[KD_SECTION] = (int((kd_runs["status"] == "completed").sum()), kd_summary)
    text = "\n\n".join(
        f"== {title}: {n} runs ==\n{text_table(wide_table(table))}"
        for title, (n, table) in tables.items()
    )
    result = ReportResult(out_dir, summary, text, n_runs=len(runs) + len(kd_runs))
    result.warnings = warnings
    if not runs.empty:
        _write(result, out_dir / "summary.csv", summary.to_csv(index=False).encode())
    if not kd_summary.empty:
        _write(result, out_dir / "kd_summary.csv", kd_summary.to_csv(index=False).encode())
        pending = kd_runs[kd_runs["status"] != "completed"]
        if len(pending):
            note(f"{len(pending)} KD experiments not completed (in progress or failed); left out")
    if not gains.empty:
        _write(result, out_dir / "kd_gains.csv", gains.to_csv(index=False).encode())
    bench = benchmark_table(kd_summary)
    if not bench.empty:  # the papers' layout, published numbers beside ours
        _write(result, out_dir / "kd_benchmark.csv", bench.to_csv(index=False).encode())
        _write(result, out_dir / "kd_benchmark.md", markdown(bench).encode())
    _write(result, out_dir / "summary.txt", (result.table_text + "\n").encode())

    figures: list[Drawn] = []
    if not runs.empty:
        plot_metrics = options.metrics or ["student_final_acc"]
        figures = _figures(runs, plot_metrics, options, sections, note)
        if options.layers:
            figures += _layer_figures(outdir, runs, options, sections, note)
        first = next(iter(sections.values()))
        figures += [
            (sections.get(sweep, first), stem, caption, fig)
            for sweep, stem, caption, fig in diagnostics_figures(outdir, runs, note)
        ]
    if not kd_summary.empty:
        for dataset in sorted(kd_summary["dataset"].unique()):
            fig = kd_figure(kd_summary, dataset)
            figures.append((KD_SECTION, f"kd_{dataset}", f"KD on {dataset}", fig))
    if not gains.empty:
        caption = "Gain of each method over the student trained alone (best epoch)"
        figures.append((KD_SECTION, "kd_gains", caption, kd_gain_figure(gains)))
    figures += quality_figures(quality)
    pngs: dict[str, list[tuple[str, bytes]]] = {}
    for sweep, stem, caption, fig in figures:
        try:
            try:
                encoded = save(fig, out_dir / stem, options.formats)
            except OSError as exc:
                reason = exc.strerror or exc
                raise UserError(f"--out {out_dir}: cannot write {stem} ({reason})") from None
            result.files += [out_dir / f"{stem}.{fmt}" for fmt in options.formats]
            if options.html:
                png = encoded.get("png") or render(fig, "png")
                pngs.setdefault(sweep, []).append((caption, png))
        finally:
            close(fig)
    if options.html:
        html = _html(
            *(outdir, runs, tables, by, sections, pngs, warnings, options, len(kd_runs)),
            bench if not bench.empty else None,
        )
        _write(result, out_dir / "report.html", html.encode())
    return result


def quality_figures(quality: list[tuple[str, pd.DataFrame]]) -> list[Drawn]:
    """The paper's "Layerwise Knowledge Quality" figure per analysed model and Q against
    relative depth across them (from `sublim kd analyze`'s layer_quality.csv files)."""
    drawn: list[Drawn] = []
    for label, frame in quality:
        stem = f"layer_quality_{_slug(label)}"
        drawn.append(
            (
                KD_SECTION,
                stem,
                f"Layerwise knowledge quality: {label}",
                quality_figure(frame, label),
            )
        )
    if quality:
        caption = "Knowledge quality Q against relative depth"
        drawn.append((KD_SECTION, "layer_quality_depth", caption, depth_figure(quality)))
    return drawn


def _write(result: ReportResult, path: Path, data: bytes) -> None:
    try:
        write_atomic(path, data)
    except OSError as exc:
        reason = exc.strerror or exc
        raise UserError(f"--out {path.parent}: cannot write {path.name} ({reason})") from None
    result.files.append(path)


Drawn = tuple[str, str, str, Any]  # (section, file stem, caption, Figure)
KD_SECTION = "KD experiments"


def _section_tables(
    runs: pd.DataFrame, summary: pd.DataFrame, sections: dict[str, str], options: ReportOptions
) -> dict[str, tuple[int, pd.DataFrame]]:
    """Per report section: its run count and its summary, grouped by what varies within it."""
    if len(set(sections.values())) == 1:
        return {next(iter(sections.values())): (len(runs), summary)}
    out = {}
    for title in dict.fromkeys(sections.values()):
        members = [s for s, t in sections.items() if t == title]
        part = runs[runs["sweep_name"].astype(str).isin(members)]
        by = options.by if options.by is not None else detect_axes(part)
        metrics = list(summary["metric"].unique())
        out[title] = (len(part), options.plot().summarize(part, by, metrics))
    return out


def _sections(runs: pd.DataFrame, options: ReportOptions) -> dict[str, str]:
    """Report section of each sweep: `Figure N` for sweeps drawn by a recipe, else its name."""
    out = {}
    for sweep in sorted(runs["sweep_name"].astype(str).unique()):
        figure = options.figure or figure_of(sweep)
        out[sweep] = f"Figure {figure}" if figure else sweep
    return out


def _figures(
    runs: pd.DataFrame,
    metrics: Sequence[str],
    options: ReportOptions,
    sections: dict[str, str],
    note: Callable[[str], None],
) -> list[Drawn]:
    """Recipe figures for sweeps named after a paper figure (or all, with --figure); generic
    plots for the others (and for every sweep when --x is given)."""
    plot = options.plot()
    check_columns(runs, metrics, "--metric", "metric")
    groups: dict[str, list[str]] = {}
    for sweep, section in sections.items():
        groups.setdefault(section, []).append(sweep)
    drawn: list[Drawn] = []
    for metric in metrics:
        suffix = "" if metric == "student_final_acc" else f"_{metric}"
        for section, sweeps in groups.items():
            figure = section.removeprefix("Figure ") if section.startswith("Figure ") else None
            subset = runs[runs["sweep_name"].astype(str).isin(sweeps)]
            generic = list(sweeps) if figure is None or options.x is not None else []
            if figure is not None:
                try:
                    fig = RECIPES[figure](subset, metric, plot)
                    caption = f"Figure {figure} from {', '.join(sweeps)}"
                    drawn.append((section, f"figure{figure}{suffix}", caption, fig))
                except RecipeMismatch as exc:
                    note(f"figure {figure}: {exc}; drawing generic plots instead")
                    generic = list(sweeps)
            for sweep in generic:
                part = runs[runs["sweep_name"].astype(str) == sweep]
                axes = [a for a in detect_axes(part) if a != "sweep_name"]
                x = options.x or pick_x(part, axes)
                if x is None:
                    continue  # one configuration: the summary table says it all
                fig = generic_figure(part, metric, x, plot, title=sweep)
                stem = f"{_slug(sweep)}_{metric}_vs_{x}"
                drawn.append((section, stem, f"{sweep}: {metric} vs {x}", fig))
    return drawn


def _layer_figures(
    outdir: str | Path,
    runs: pd.DataFrame,
    options: ReportOptions,
    sections: dict[str, str],
    note: Callable[[str], None],
) -> list[Drawn]:
    layer_metrics = load(outdir, "layer_metrics", warn=note)
    if layer_metrics.empty:
        return []
    drawn: list[Drawn] = []
    for sweep in sorted(runs["sweep_name"].astype(str).unique()):
        part = runs[runs["sweep_name"].astype(str) == sweep]
        for metric, m in LAYER_METRICS.items():
            fig = layer_similarity_figure(
                layer_metrics, part, options.plot(), title=f"{sweep}: {m.what}", metric=metric
            )
            if fig is not None:
                caption = f"{sweep}: teacher-student {m.what} per layer"
                drawn.append((sections[sweep], f"{_slug(sweep)}_layers{m.suffix}", caption, fig))
    return drawn


def _html(
    outdir: str | Path,
    runs: pd.DataFrame,
    tables: dict[str, tuple[int, pd.DataFrame]],
    by: list[str],
    sections: dict[str, str],
    pngs: dict[str, list[tuple[str, bytes]]],
    warnings: list[str],
    options: ReportOptions,
    n_kd: int = 0,
    bench: pd.DataFrame | None = None,
) -> str:
    level, method, n_boot = 100 * options.level, options.method, options.n_resamples
    configs = load_configs(outdir, warn=lambda _m: None)
    by_sweep: dict[str, list[dict[str, Any]]] = {}
    for item in configs:
        cfg = item.get("effective_config") or {}
        by_sweep.setdefault(str(cfg.get("sweep_name", "")), []).append(cfg)
    parts: list[Section] = []
    for title, (n_runs, table) in tables.items():
        members = [sweep for sweep, section in sections.items() if section == title]
        constant, varying = _config_split([c for s in members for c in by_sweep.get(s, [])])
        heading = title if title in members or not members else f"{title} ({', '.join(members)})"
        parts.append(
            Section(
                title=heading,
                table=wide_table(table),
                figures=pngs.get(title, []),
                constant=constant,
                varying=varying,
                n_runs=n_runs,
            )
        )
    if bench is not None:
        for dataset in sorted(bench["dataset"].unique()):
            parts.append(
                Section(
                    title=f"KD benchmark on {dataset}: reproduced and published top-1 (%)",
                    table=wide_benchmark(bench, dataset),
                    n_runs=n_kd,
                    note="Ours: mean ± std [bootstrap CI] over seeds at the last and the best "
                    "epoch. Published: the reference number and the epoch its source reports "
                    "(RepDistiller: last; mdistiller, ReviewKD: best); diff: ours at that epoch "
                    "minus published (kd_benchmark.csv names each number's source).",
                )
            )
    found = [f"{len(runs)} runs"] if not runs.empty else []
    if n_kd:
        found.append(f"{n_kd} KD experiments")
    grouping = (
        f"; summary.csv groups the runs by {', '.join(by) or 'nothing (one group)'}"
        if not runs.empty
        else ""
    )
    if n_kd:
        grouping += (
            "; kd_summary.csv groups KD experiments by dataset, teacher, student and method "
            "(and recipe where one method has several), pooling seeds"
        )
    notes = [
        f"{' and '.join(found) or 'Layer analyses'} from {outdir}. Cells: mean "
        f"[{level:g} % {method} bootstrap CI of the mean, {n_boot} resamples] over seeds"
        f"{grouping}.",
        *[f"warning: {w}" for w in warnings],
    ]
    return render_html("sublim report", parts, _versions(runs), notes, tracking_entries(outdir))


def tracking_entries(outdir: str | Path) -> list[dict[str, str]]:
    """The tracking locations recorded in <outdir>/tracking.json by `--track` (none when the
    file is missing or unreadable: the report reads files only)."""
    import json

    try:
        data = json.loads((Path(outdir) / "tracking.json").read_text())
        return [t for t in data.get("targets", []) if isinstance(t, dict)]
    except (OSError, ValueError, AttributeError):
        return []


def _config_split(configs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Config fields equal across `configs`, and the distinct values of those that differ."""
    if not configs:
        return {}, {}
    keys = list(dict.fromkeys(k for c in configs for k in c if k not in _NOISE_FIELDS))
    constant: dict[str, Any] = {}
    varying: dict[str, list[Any]] = {}
    for key in keys:
        values: list[Any] = []
        for c in configs:
            v = c.get(key)
            if v not in values:
                values.append(v)
        if len(values) == 1:
            constant[key] = values[0]
        else:
            varying[key] = values
    return constant, varying


def _versions(runs: pd.DataFrame) -> dict[str, str]:
    import matplotlib
    import numpy

    from .. import __version__

    recorded = lambda col: ", ".join(sorted(runs[col].astype(str).unique())) if col in runs else ""  # noqa: E731
    return {
        "sublim (report)": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "numpy": numpy.__version__,
        "pandas": pd.__version__,
        "matplotlib": matplotlib.__version__,
        "torch (runs)": recorded("torch_version"),
        "device (runs)": recorded("device"),
    }

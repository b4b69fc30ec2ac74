"""`sublim report OUTDIR`: summary tables with bootstrap CIs, the paper's figures, HTML."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..errors import ConfigError
from .args import PROG, parse_float, parse_int


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """The `report` subcommand."""
    report_p = sub.add_parser(
        "report",
        help="summary tables with bootstrap CIs, the paper's figures, an HTML report",
        description="Load every run under OUTDIR (per-seed files and *_all_seeds.csv, any "
        "depth; damaged lines are reported and skipped), group runs by the axes that vary "
        "(or --by), and write summary.csv/summary.txt (n, mean, std, median, bootstrap CI per "
        "metric), the paper's figures for sweeps named fig2..fig6 (or --figure N), generic plots "
        "for other sweeps, layer-similarity plots and, with --html, one self-contained "
        "report.html. Files go to OUTDIR/report/ unless --out is given.",
    )
    add_report_arguments(report_p)
    return report_p


def add_report_arguments(p: argparse.ArgumentParser) -> None:
    """The report's flags: what to summarise and which figures to draw."""
    p.add_argument("outdir", metavar="OUTDIR", help="a sublim output directory (or a parent)")
    p.add_argument("--out", default=None, help="where to write (default: OUTDIR/report)")
    g = p.add_argument_group("what to summarise")
    g.add_argument(
        "--by",
        action="append",
        default=None,
        metavar="AXIS",
        help="group by these columns (repeat or comma-separate; default: the axes that vary)",
    )
    g.add_argument(
        "--metric",
        action="append",
        default=None,
        metavar="NAME",
        help="metrics to summarise and plot (repeat or comma-separate; default: student and "
        "teacher final accuracy, student initial accuracy, student final aux loss; figures "
        "plot student_final_acc)",
    )
    g.add_argument(
        "--ci", default="percentile", help="bootstrap interval: percentile (default) or bca"
    )
    g.add_argument("--level", default="0.95", help="confidence level (default: %(default)s)")
    g.add_argument("--n-boot", default="10000", help="bootstrap resamples (default: %(default)s)")
    g.add_argument(
        "--ci-seed", default="0", help="seed of the bootstrap resampling (default: %(default)s)"
    )
    f = p.add_argument_group("figures")
    f.add_argument(
        "--figure",
        default=None,
        metavar="N",
        help="draw the paper's figure N (2-6) from all runs, whatever the sweep names",
    )
    f.add_argument(
        "--x",
        default=None,
        metavar="AXIS",
        help="also draw a generic plot of each sweep against this column",
    )
    f.add_argument("--format", default="png", help="figure formats, comma-separated: png, svg, pdf")
    f.add_argument("--html", action="store_true", help="also write one self-contained report.html")
    f.add_argument("--no-layers", action="store_true", help="skip the layer-similarity plots")
    f.add_argument("--quiet", action="store_true", help="do not print the summary table")


def _names(values: list[str] | None) -> list[str] | None:
    """Repeated and comma-separated flag values as one list (None when the flag is absent)."""
    if values is None:
        return None
    return [part.strip() for v in values for part in v.split(",") if part.strip()]


def cmd_report(ns: argparse.Namespace) -> int:
    """Build the report and print its table and where it went."""
    from ..analysis.report import ReportOptions, build_report

    options = ReportOptions(
        by=_names(ns.by),
        metrics=_names(ns.metric),
        formats=tuple(dict.fromkeys(_names([ns.format]) or [])),
        html=ns.html,
        figure=ns.figure,
        x=ns.x,
        level=parse_float("--level", ns.level),
        method=ns.ci,
        n_resamples=parse_int("--n-boot", ns.n_boot),
        seed=parse_int("--ci-seed", ns.ci_seed),
        layers=not ns.no_layers,
    )
    if not options.formats:
        raise ConfigError("--format", ns.format, "allowed: png, svg, pdf (comma-separated)")

    def warn(message: str) -> None:
        sys.stderr.write(f"{PROG}: warning: {message}\n")

    result = build_report(ns.outdir, ns.out, options, warn=warn)
    if not ns.quiet:
        print(result.table_text)
    figures = [f for f in result.files if f.suffix in (".png", ".svg", ".pdf")]
    print(
        f"report: {result.n_runs} runs, {len(figures)} figure files, "
        f"{len(result.warnings)} warnings -> {result.out}"
        + (f" (open {result.out / 'report.html'})" if options.html else "")
    )
    return 0

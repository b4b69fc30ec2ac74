"""Report building: every figure recipe renders, generic and layer plots, the HTML report."""

from __future__ import annotations

import html.parser
import re
import struct
from pathlib import Path

import pytest
import synthetic_results as sr

from sublim.analysis import load
from sublim.analysis.report import ReportOptions, build_report
from sublim.analysis.style import DPI, PAGE_WIDTH
from sublim.errors import UserError

FAST = {"n_resamples": 200}


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk."""
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# figure -> (writer, expected PNG size in pixels at 200 dpi)
RECIPES = {
    "2": (sr.fig2, (1000, 600)),
    "3": (sr.fig3, (1400, 1140)),
    "4": (sr.fig4, (1400, 600)),
    "5": (sr.fig5, (960, 600)),
    "6": (sr.fig6, (1080, 600)),
}


@pytest.mark.parametrize("figure", sorted(RECIPES))
def test_every_figure_recipe_renders_at_paper_size(tmp_path: Path, figure: str) -> None:
    write, size = RECIPES[figure]
    write(tmp_path / "results")
    seen: list[str] = []
    result = build_report(
        tmp_path / "results", tmp_path / "out", ReportOptions(**FAST), warn=seen.append
    )
    assert seen == []
    png = tmp_path / "out" / f"figure{figure}.png"
    assert png in result.files and png.stat().st_size > 20_000
    assert png_size(png) == size
    assert size[0] <= PAGE_WIDTH * DPI  # fits the page of a two-column paper
    layer_plots = list((tmp_path / "out").glob("*_layers.png"))
    assert layer_plots and all(p.stat().st_size > 10_000 for p in layer_plots)


def test_formats_and_forced_figure(tmp_path: Path) -> None:
    sr.write_sweep(
        tmp_path / "r",
        "my_own_sweep",
        [{"m": m} for m in (2, 8, 32)],
        range(3),
        lambda r, g: 0.1 + r["m"] / 40 + g.gauss(0, 0.01),
    )
    options = ReportOptions(formats=("png", "svg", "pdf"), figure="2", layers=False, **FAST)
    result = build_report(tmp_path / "r", tmp_path / "o", options)
    for fmt, magic in (("png", b"\x89PNG"), ("svg", b"<?xml"), ("pdf", b"%PDF")):
        assert (tmp_path / "o" / f"figure2.{fmt}").read_bytes().startswith(magic)
    assert not any(p.name.endswith("_layers.png") for p in result.files)


def test_unnamed_sweep_gets_a_generic_plot_and_recipe_mismatch_falls_back(tmp_path: Path) -> None:
    sr.write_sweep(
        tmp_path / "r",
        "lr_study",
        [{"student_lr": lr, "m": m} for lr in (1e-4, 1e-3, 1e-2) for m in (10, 50)],
        range(2),
        lambda r, g: 0.5 + g.gauss(0, 0.01),
    )
    out = tmp_path / "o"
    build_report(tmp_path / "r", out, ReportOptions(**FAST))
    generic = out / "lr_study_student_final_acc_vs_student_lr.png"
    assert png_size(generic) == (1040, 600)
    seen: list[str] = []
    build_report(tmp_path / "r", out, ReportOptions(figure="5", **FAST), warn=seen.append)
    assert any("figure 5 needs runs in which the perturbation std varies" in w for w in seen)
    build_report(tmp_path / "r", out, ReportOptions(x="m", **FAST))
    assert (out / "lr_study_student_final_acc_vs_m.png").exists()


def test_summary_files(tmp_path: Path) -> None:
    sr.fig2(tmp_path / "r", seeds=range(5))
    result = build_report(tmp_path / "r", tmp_path / "o", ReportOptions(layers=False, **FAST))
    summary = (tmp_path / "o" / "summary.csv").read_text().splitlines()
    assert summary[0] == "condition,m,metric,n,mean,std,median,ci_low,ci_high"
    assert len(summary) == 1 + 3 * 4 * 4  # conditions x m x default metrics
    text = (tmp_path / "o" / "summary.txt").read_text()
    assert "rand_first_hid" in text and "student_final_acc" in text
    assert re.search(r"0\.\d{4} \[0\.\d{4}, 0\.\d{4}\]", text)
    assert result.n_runs == 5 * 12


class _Checker(html.parser.HTMLParser):
    """Checks nesting of non-void tags and collects every URL-bearing attribute."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.urls: list[str] = []
        self.images = 0
        self.errors: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value:
                self.urls.append(value)
        self.images += tag == "img"
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()


def test_html_report_is_valid_and_self_contained(tmp_path: Path) -> None:
    sr.fig2(tmp_path / "r", seeds=range(3))
    sr.fig5(tmp_path / "r" / "fig5", seeds=range(3))
    result = build_report(tmp_path / "r", tmp_path / "o", ReportOptions(html=True, **FAST))
    page = (tmp_path / "o" / "report.html").read_text()
    assert page.startswith("<!DOCTYPE html>")
    checker = _Checker()
    checker.feed(page)
    assert checker.errors == [] and checker.stack == []
    assert all(u.startswith(("data:image/png;base64,", "#")) for u in checker.urls)
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)
    for external in ("http:", "https:", "//", "url(", "@import", "<script", "<link"):
        assert external not in text
    figures = [p for p in result.files if p.suffix == ".png"]
    assert checker.images == len(figures) == 4  # two figures + two layer plots
    for text in ("Figure 2", "Figure 5", "rand_first_hid", "matplotlib", "pandas", "2.13.0+cpu"):
        assert text in page


def test_nothing_is_written_for_bad_options(tmp_path: Path) -> None:
    sr.fig2(tmp_path / "r", seeds=[0, 1])
    out = tmp_path / "o"
    bad = [
        (ReportOptions(by=["nope"]), "--by: unknown axis 'nope'"),
        (ReportOptions(metrics=["nope"]), "--metric: unknown metric 'nope'"),
        (ReportOptions(x="nope"), "--x: unknown axis 'nope'"),
        (ReportOptions(formats=("gif",)), "--format: invalid value 'gif'"),
        (ReportOptions(figure="7"), "--figure: invalid value '7'"),
        (ReportOptions(method="t"), "--ci: invalid value 't'"),
        (ReportOptions(level=1.5), "--level"),
    ]
    for options, message in bad:
        with pytest.raises(UserError, match=re.escape(message)):
            build_report(tmp_path / "r", out, options)
    assert not out.exists()
    with pytest.raises(UserError, match="no runs found"):
        (tmp_path / "empty").mkdir()
        build_report(tmp_path / "empty", out)


def test_api_load_and_summarize_on_a_report_directory(tmp_path: Path) -> None:
    from sublim.analysis import summarize

    sr.fig6(tmp_path, seeds=range(3))
    runs = load(tmp_path)
    table = summarize(runs, by=["condition"], metrics=["teacher_final_acc"], n_resamples=200)
    emnist = table[table.condition == "emnist_m50"].iloc[0]
    assert emnist["n"] == 18 and emnist["mean"] == pytest.approx(0.85)

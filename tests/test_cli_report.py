"""`sublim report` as a user runs it: after a real sweep, on damaged files, with bad flags."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import synthetic_results as sr

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

SPEC = """
name = "fig2_tiny"
seeds = "0..2"
label = "{condition}_m{m}"

[base]
classes = [0, 1, 2]
teacher_epochs = 1
student_epochs = 1
noise_steps = 3
noise_bsize = 200
eval_noise_batches = 1
eval_noise_bsize = 200
teacher_hidden_dims = [32, 32]
student_hidden_dims = [32, 32]

[grid]
m = [2, 8]

[conditions.same_init]
student_init = "all:A"

[conditions.rand_aux_head]
student_init = "all:A,aux_head:random"
"""


def sublim(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sublim", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=ENV,
    )


@pytest.mark.slow  # a real sweep, then its report (~14 s); make test-slow
def test_report_after_a_real_sweep(tmp_path: Path) -> None:
    (tmp_path / "spec.toml").write_text(SPEC)
    proc = sublim("sweep", "spec.toml", "--outdir", "res", "--quiet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    proc = sublim("report", "res", "--html", "--n-boot", "500", "--format", "png,svg", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    out = proc.stdout
    assert out.startswith("== Figure 2: 12 runs ==\n")  # sweep fig2_* -> the figure 2 recipe
    assert out.splitlines()[1].split()[:3] == ["condition", "m", "n"] and "rand_aux_head" in out
    assert out.strip().endswith("(open res/report/report.html)")
    report = tmp_path / "res" / "report"
    for name in ("summary.csv", "summary.txt", "figure2.png", "figure2.svg", "report.html"):
        assert (report / name).stat().st_size > 0
    assert (report / "fig2_tiny_layers.png").exists()
    html = (report / "report.html").read_text()
    for metric, what in (("cka", "linear CKA"), ("rsa", "RSA")):  # from layer_metrics.csv
        assert (report / f"fig2_tiny_layers_{metric}.png").stat().st_size > 10_000
        assert f"teacher-student {what} of representations per layer" in html
    summary = (report / "summary.csv").read_text().splitlines()
    assert summary[0].startswith("condition,m,metric,n,")
    assert all(",3," in line for line in summary[1:])  # three seeds per group
    # the condition column is written by the sweep and read back
    header = (tmp_path / "res" / "runs_all_seeds.csv").read_text().splitlines()[0].split(",")
    assert "condition" in header


def test_damaged_line_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    sr.fig5(tmp_path / "res", seeds=[0, 1])
    path = tmp_path / "res" / "seed_000001" / "runs.csv"
    path.write_text(path.read_text() + "1,broken\n")
    (tmp_path / "res" / "runs_all_seeds.csv").unlink()
    proc = sublim("report", "res", "--quiet", "--n-boot", "200", "--no-layers", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning = f"sublim: warning: {Path('res') / 'seed_000001' / 'runs.csv'}:12: expected"
    assert proc.stderr.startswith(warning), proc.stderr
    assert "Traceback" not in proc.stderr
    assert "report: 20 runs, 1 figure files, 1 warnings" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing"], "OUTDIR missing: not a directory"),
        (["empty"], "OUTDIR empty: no runs found"),
        (["res", "--by", "condition,width"], "--by: unknown axis 'width'; available:"),
        (["res", "--metric", "acc"], "--metric: unknown metric 'acc'; available:"),
        (["res", "--format", "png,gif"], "--format: invalid value 'gif'; allowed: png, svg, pdf"),
        (["res", "--figure", "9"], "--figure: invalid value '9'; allowed: 2, 3, 4, 5, 6"),
        (["res", "--ci", "normal"], "--ci: invalid value 'normal'; allowed: percentile, bca"),
        (["res", "--level", "95"], "--level: invalid value 95.0; expected a number in (0, 1)"),
        (["res", "--level", "high"], "--level: invalid value 'high'; expected a number"),
        (["res", "--n-boot", "ten"], "--n-boot: invalid value 'ten'; expected an integer"),
        (["res", "--x", "D"], "--x: unknown axis 'D'"),
    ],
)
def test_bad_flags_are_one_line_and_write_nothing(
    tmp_path: Path, args: list[str], message: str
) -> None:
    sr.fig5(tmp_path / "res", seeds=[0])
    (tmp_path / "empty").mkdir()
    proc = sublim("report", *args, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sublim: error: {message}"), proc.stderr
    assert not (tmp_path / "res" / "report").exists()
    assert proc.stdout == ""


def test_unwritable_output_is_one_line(tmp_path: Path) -> None:
    sr.fig5(tmp_path / "res", seeds=[0])
    (tmp_path / "file").write_text("x")
    proc = sublim("report", "res", "--out", "file/sub", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sublim: error: --out file/sub:"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

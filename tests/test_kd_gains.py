"""The KD report's gains over the student alone (the KD_wo_CE paper's figure), on synthetic
experiment directories with known accuracies."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sublim.analysis.kd import kd_gains, load_kd
from sublim.analysis.plots import PlotOptions
from sublim.analysis.report import ReportOptions, build_report

PAIRS = [("resnet34", "resnet9"), ("vgg19_bn", "vgg11_bn")]


def _experiment(root: Path, config: dict, best: float, last: float) -> None:
    folder = root / f"{config['dataset']}_{config.get('label')}_{config['model']}_{config['seed']}"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    status = {"status": "completed", "best_acc": best, "last_acc": last, "epoch": 50}
    (folder / "status.json").write_text(json.dumps(status))


def _grid(root: Path) -> None:
    for dataset, offset in (("cifar10", 0.8), ("cifar100", 0.5)):
        for teacher, student in PAIRS:
            for seed in range(3):
                base = offset + 0.01 * seed
                alone = {"role": "teacher", "model": student, "dataset": dataset, "seed": seed}
                _experiment(root, {**alone, "label": "baseline"}, base, base - 0.01)
                for label, gain in (("ours", 0.05), ("vkd", -0.02)):
                    config = {
                        "role": "student",
                        "model": student,
                        "teacher": teacher,
                        "method": "fkd" if label == "ours" else "kd",
                        "label": label,
                        "dataset": dataset,
                        "seed": seed,
                    }
                    _experiment(root, config, base + gain, base + gain - 0.02)


def test_gains_are_method_minus_alone_with_intervals(tmp_path: Path) -> None:
    _grid(tmp_path)
    frame = load_kd(tmp_path, lambda m: None)
    assert set(frame["method"]) == {"baseline", "ours", "vkd"}  # labels name the methods
    gains = kd_gains(frame, PlotOptions(n_resamples=2000))
    assert len(gains) == 2 * 2 * 2 * 2  # datasets x pairs x methods x (best, last)
    best = gains[gains["metric"] == "best_acc"].set_index(["dataset", "student", "method"])
    assert best.loc[("cifar10", "resnet9", "ours"), "gain"] == pytest.approx(0.05)
    assert best.loc[("cifar100", "vgg11_bn", "vkd"), "gain"] == pytest.approx(-0.02)
    last = gains[gains["metric"] == "last_acc"].set_index(["dataset", "student", "method"])
    assert last.loc[("cifar10", "resnet9", "ours"), "gain"] == pytest.approx(0.04)
    row = best.loc[("cifar10", "resnet9", "ours")]
    assert row["ci_low"] < row["gain"] < row["ci_high"] and row["n"] == 3 == row["n_alone"]
    again = kd_gains(frame, PlotOptions(n_resamples=2000))
    assert np.array_equal(again["ci_low"].to_numpy(), gains["ci_low"].to_numpy())  # seeded


def test_report_writes_gains_and_the_paper_figure(tmp_path: Path) -> None:
    _grid(tmp_path / "kd")
    result = build_report(tmp_path / "kd", None, ReportOptions(n_resamples=500))
    out = tmp_path / "kd" / "report"
    assert (out / "kd_gains.csv").exists() and (out / "kd_gains.png").exists()
    assert "kd_gains" in {p.stem for p in result.files}

"""--diagnostics: what is recorded, that it changes nothing, and the report's three plots."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
import pytest

from sublim import ExperimentConfig, run, run_many
from sublim.analysis.report import ReportOptions, build_report
from sublim.store import RunStore

TINY = dict(
    teacher_epochs=2,
    student_epochs=3,
    noise_steps=3,
    eval_noise_batches=1,
    eval_noise_bsize=600,
    teacher_hidden_dims=(32, 32),
    student_hidden_dims=(32, 32),
    classes=(0, 1, 2),
    m=6,
)


def _arrays(record) -> dict[str, np.ndarray]:
    (path,) = [k for k in record.artifacts if k.startswith("diagnostics/")]
    assert path == f"diagnostics/{record.run['run_id']}.npz"
    with np.load(io.BytesIO(record.artifacts[path]), allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def recorded():
    return run(ExperimentConfig(diagnostics=True, **TINY))


def test_diagnostics_arrays(recorded) -> None:
    d = _arrays(recorded)
    row = recorded.run
    assert d["teacher_history"].shape == (2, 3) and d["student_history"].shape == (3, 3)
    assert list(d["student_history"][:, 0]) == [1, 2, 3]
    assert d["student_history"][-1, 2] == pytest.approx(row["student_final_acc"])
    assert d["teacher_history"][-1, 2] == pytest.approx(row["teacher_final_acc"])
    assert d["student_history"][-1, 1] == pytest.approx(row["student_train_aux_loss_last"])
    assert d["sample_images"].shape == (16, 1, 28, 28) and d["sample_images"].dtype == np.uint8
    assert set(d["sample_labels"]) <= {0, 1, 2}
    assert d["noise_teacher_aux"].shape == d["noise_student_aux_final"].shape == (512, 6)
    assert list(d["class_names"]) == ["0", "1", "2"]
    # the student moved towards the teacher on noise
    before = np.abs(d["noise_student_aux_init"] - d["noise_teacher_aux"]).mean()
    after = np.abs(d["noise_student_aux_final"] - d["noise_teacher_aux"]).mean()
    assert after < before


def test_diagnostics_change_no_result(recorded) -> None:
    plain = run(ExperimentConfig(**TINY)).run
    for key in ("teacher_final_acc", "student_final_acc", "student_final_aux_loss"):
        assert recorded.run[key] == plain[key]
    assert (
        ExperimentConfig(diagnostics=True, **TINY).config_hash
        == ExperimentConfig(**TINY).config_hash
    )


def test_run_many_records_diagnostics_too() -> None:
    configs = [ExperimentConfig(diagnostics=True, **{**TINY, "m": m}) for m in (2, 3)]
    for record in run_many(configs):
        assert _arrays(record)["noise_teacher_aux"].shape[1] == record.run["m"]


def _size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])


def test_report_draws_the_three_plots_and_skips_damaged_files(recorded, tmp_path: Path) -> None:
    with RunStore(tmp_path / "r") as store:
        store.write(recorded)
    run_id = recorded.run["run_id"]
    out = tmp_path / "o"
    build_report(tmp_path / "r", out, ReportOptions(n_resamples=200, html=True))
    sizes = {
        "curves": (1280, 520),
        "predictions": (1400, 490),
        "aux": (1280, 520),
    }
    for kind, size in sizes.items():
        png = out / f"diagnostics_{run_id}_{kind}.png"
        assert png.stat().st_size > 10_000 and _size(png) == size
    assert "sample predictions" in (out / "report.html").read_text()
    # a file of no loaded run (left by a crash before the rows) is ignored
    folder = tmp_path / "r" / "seed_000042" / "diagnostics"
    (folder / "orphan.npz").write_bytes((folder / f"{run_id}.npz").read_bytes())
    seen: list[str] = []
    result = build_report(tmp_path / "r", out, ReportOptions(n_resamples=200), warn=seen.append)
    assert seen == [] and not any("orphan" in p.name for p in result.files)
    # a damaged diagnostics file is reported and skipped
    (folder / f"{run_id}.npz").write_bytes(b"PK\x03\x04 not really a zip")
    build_report(tmp_path / "r", out, ReportOptions(n_resamples=200), warn=seen.append)
    assert any(f"{run_id}.npz: unreadable diagnostics file" in w for w in seen)

"""The KD report pools the seeds of one recipe: students of different seeds, each with its own
teacher of the same recipe (or sharing one teacher through teacher_seed), form one row."""

from __future__ import annotations

import json
from pathlib import Path

from sublim.analysis.kd import load_kd, summarize_kd
from sublim.analysis.plots import PlotOptions


def _experiment(root: Path, name: str, config: dict, acc: float) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config))
    status = {"status": "completed", "epoch": 3, "best_acc": acc, "last_acc": acc - 0.01}
    (folder / "status.json").write_text(json.dumps(status))


def _teacher(seed: int, epochs: int = 3) -> dict:
    return {
        "role": "teacher",
        "dataset": "mnist",
        "model": "resnet14",
        "seed": seed,
        "epochs": epochs,
        "config_hash": f"{seed}{epochs}teacher".ljust(16, "0"),
        "outdir": "runs",
    }


def _student(seed: int, teacher: dict, teacher_seed: int | None = None) -> dict:
    return {
        "role": "student",
        "dataset": "mnist",
        "model": "resnet8",
        "teacher": "resnet14",
        "method": "kd",
        "seed": seed,
        "epochs": 3,
        "teacher_hash": teacher["config_hash"],
        "teacher_seed": teacher_seed,
        "teacher_checkpoint_path": f"runs/t{teacher['seed']}/best.pt",
        "config_hash": f"{seed}{teacher['config_hash'][:4]}student".ljust(16, "0"),
        "outdir": "runs",
    }


def _kd_rows(root: Path) -> dict:
    summary = summarize_kd(load_kd(root, print), PlotOptions(n_resamples=200))
    kd = summary[(summary["method"] == "kd") & (summary["metric"] == "best_acc")]
    return kd.to_dict("records")


def test_students_with_their_own_teachers_of_one_recipe_pool(tmp_path: Path) -> None:
    for seed in (0, 1):
        teacher = _teacher(seed)
        _experiment(tmp_path, f"t{seed}", teacher, 0.95)
        _experiment(tmp_path, f"s{seed}", _student(seed, teacher), 0.80 + 0.02 * seed)
    (row,) = _kd_rows(tmp_path)
    assert row["n"] == 2 and abs(row["mean"] - 0.81) < 1e-9


def test_students_sharing_one_teacher_through_teacher_seed_pool(tmp_path: Path) -> None:
    teacher = _teacher(0)
    _experiment(tmp_path, "t0", teacher, 0.95)
    # the seed-0 student's teacher_seed is normalised away (its own seed), seed 1 keeps it
    _experiment(tmp_path, "s0", _student(0, teacher, None), 0.80)
    _experiment(tmp_path, "s1", _student(1, teacher, 0), 0.82)
    (row,) = _kd_rows(tmp_path)
    assert row["n"] == 2


def test_students_of_differently_trained_teachers_stay_apart(tmp_path: Path) -> None:
    for seed, epochs in ((0, 3), (1, 30)):
        teacher = _teacher(seed, epochs)
        _experiment(tmp_path, f"t{seed}", teacher, 0.95)
        _experiment(tmp_path, f"s{seed}", _student(seed, teacher), 0.80)
    rows = _kd_rows(tmp_path)
    assert [r["n"] for r in rows] == [1, 1]


def test_students_whose_auto_layers_differ_by_seed_pool_as_asked(tmp_path: Path) -> None:
    # "auto:q" picks the teacher's layers per seed (per teacher); the user asked for one thing
    for seed, chosen in ((0, [0, 1, 4]), (1, [0, 2, 5])):
        teacher = _teacher(seed)
        _experiment(tmp_path, f"t{seed}", teacher, 0.95)
        student = _student(seed, teacher)
        student["method_params"] = {"student_layers": [1, 2, 3], "teacher_layers": chosen}
        student["teacher_layers_requested"] = "auto:q"
        _experiment(tmp_path, f"s{seed}", student, 0.80)
    (row,) = _kd_rows(tmp_path)
    assert row["n"] == 2


def test_auto_layer_resolution_records_what_was_asked(tmp_path: Path) -> None:
    from sublim.kd.config import KDConfig

    config = KDConfig(
        role="student",
        dataset="mnist",
        model="resnet8",
        teacher="resnet14",
        method="fkd",
        method_params={"student_layers": [1], "teacher_layers": [3]},
        teacher_layers_requested="auto:q",
    )
    bare = config.replace(teacher_layers_requested=None)
    assert config.config_hash == bare.config_hash  # a note for reports, not a new experiment

"""Loading result directories: mixes of per-seed files and aggregates, damage, derived columns."""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import pytest
import synthetic_results as sr

from sublim.analysis import load, load_configs
from sublim.errors import UserError


def _warnings() -> tuple[list[str], object]:
    seen: list[str] = []
    return seen, seen.append


def test_per_seed_files_and_aggregates_give_each_run_once(tmp_path: Path) -> None:
    n = sr.fig2(tmp_path, seeds=range(3))
    seen, warn = _warnings()
    runs = load(tmp_path, warn=warn)
    assert len(runs) == n and runs["run_id"].is_unique
    assert seen == []
    # aggregates only, per-seed files only: the same runs
    only_global = tmp_path / "g"
    only_global.mkdir()
    shutil.copy(tmp_path / "runs_all_seeds.csv", only_global)
    assert set(load(only_global)["run_id"]) == set(runs["run_id"])
    (tmp_path / "runs_all_seeds.csv").unlink()
    shutil.rmtree(only_global)
    assert set(load(tmp_path)["run_id"]) == set(runs["run_id"])


def test_nested_output_directories_are_all_found(tmp_path: Path) -> None:
    a = sr.fig5(tmp_path / "a", seeds=[0])
    b = sr.fig2(tmp_path / "deeper" / "b", seeds=[0])
    runs = load(tmp_path)
    assert len(runs) == a + b
    assert set(runs["sweep_name"]) == {"fig5_perturb_heads", "fig2_init_conditions"}


def test_types_exact_seeds_and_derived_columns(tmp_path: Path) -> None:
    sr.fig5(tmp_path, seeds=[0, 1])
    runs = load(tmp_path)
    assert runs["m"].dtype == "int64"
    assert runs["student_final_acc"].dtype == "float64"
    # 64-bit seeds survive exactly (no float round trip)
    assert set(runs["teacher_model_seed"]) == {6957570443382739013, 6957570443382739014}
    assert sorted(runs["perturb_std"].unique()) == [0.0, 0.05, 0.1, 0.15, 0.2]
    assert set(runs["perturb_layers"]) == {"aux_head", "class_head"}
    assert set(runs["perturb_timing"]) == {"before_student_training"}


def test_runs_without_a_condition_column_get_an_empty_one(tmp_path: Path) -> None:
    sr.fig4(tmp_path, seeds=[0])
    path = tmp_path / "runs_all_seeds.csv"
    lines = path.read_text().splitlines()
    header = lines[0].split(",")
    i = header.index("condition")
    # an older results file: drop the column
    rows = [",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in lines]
    only = tmp_path / "old"
    only.mkdir()
    (only / "runs_all_seeds.csv").write_text("\n".join(rows) + "\n")
    runs = load(only)
    assert (runs["condition"] == "").all() and len(runs) == len(lines) - 1


def test_damaged_lines_are_reported_with_their_place_and_skipped(tmp_path: Path) -> None:
    n = sr.fig2(tmp_path, seeds=[0])
    (tmp_path / "runs_all_seeds.csv").unlink()
    path = tmp_path / "seed_000000" / "runs.csv"
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    header = rows[0]
    rows[4][header.index("student_final_acc")] = "0.9x"  # junk in a numeric column
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    lines = buffer.getvalue().splitlines(keepends=True)
    lines[3] = ",".join(lines[3].split(",")[:4]) + "\n"  # truncated: too few fields
    lines.append("\x00\x00garbage\n")
    path.write_text("".join(lines))
    seen, warn = _warnings()
    runs = load(tmp_path, warn=warn)
    assert len(runs) == n - 2
    assert any(f"runs.csv:4: expected {len(header)} fields, found 4" in w for w in seen), seen
    assert any("student_final_acc='0.9x' is not a number" in w for w in seen), seen
    assert any("garbage" in w or f"runs.csv:{len(lines)}" in w for w in seen), seen
    assert runs["student_final_acc"].dtype == "float64"


def test_missing_empty_and_unreadable_files_are_warnings(tmp_path: Path) -> None:
    sr.fig2(tmp_path, seeds=[0, 1])
    (tmp_path / "runs_all_seeds.csv").unlink()
    (tmp_path / "seed_000001" / "runs.csv").write_text("")
    (tmp_path / "seed_000002").mkdir()  # a seed directory with nothing in it
    seen, warn = _warnings()
    runs = load(tmp_path, warn=warn)
    assert set(runs["seed"]) == {0}
    assert any("seed_000001/runs.csv: empty file" in w for w in seen), seen


def test_too_many_damaged_lines_are_counted_not_listed(tmp_path: Path) -> None:
    sr.fig2(tmp_path, seeds=[0])
    (tmp_path / "runs_all_seeds.csv").unlink()
    path = tmp_path / "seed_000000" / "runs.csv"
    path.write_text(path.read_text() + "a,b\n" * 20)
    seen, warn = _warnings()
    load(tmp_path, warn=warn)
    assert len(seen) == 6 and seen[-1].endswith("15 more damaged lines skipped")


def test_child_tables_and_configs(tmp_path: Path) -> None:
    n = sr.fig2(tmp_path, seeds=[0, 1])
    lm = load(tmp_path, "layer_metrics")
    assert len(lm) == n * 2 * 4 * 2  # comparisons x layers x tensor kinds, deduplicated
    assert lm["cosine"].dtype == "float64"
    configs = load_configs(tmp_path)
    assert len(configs) == n
    assert configs[0]["effective_config"]["sweep_name"] == "fig2_init_conditions"
    with (tmp_path / "seed_000000" / "configs.jsonl").open("a") as f:
        f.write("{not json\n")
    seen, warn = _warnings()
    assert len(load_configs(tmp_path, warn=warn)) == n
    assert any("not a JSON line" in w for w in seen)


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not a directory"):
        load(tmp_path / "missing")
    with pytest.raises(UserError, match="table"):
        load(tmp_path, "bogus")
    assert load(tmp_path).empty


def test_json_cells_stay_text(tmp_path: Path) -> None:
    sr.fig2(tmp_path, seeds=[0])
    runs = load(tmp_path)
    assert json.loads(runs["student_hidden_dims"].iloc[0]) == [256, 256]
    assert runs["run_label"].map(type).eq(str).all()

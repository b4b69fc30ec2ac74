"""The output reference (`sublim.outputs`) documents every file, column and key sublim
writes: real tiny runs of `sublim run`, `sublim kd` and `sublim kd analyze` write nothing that
is not listed there with a meaning, so a new column or file cannot go undocumented."""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sublim import outputs as columns
from sublim.outputs import kd as kd_cols
from sublim.outputs import runs as run_cols

BY_NAME = {f.name: f for f in columns.OUTPUT_FILES}


def _file(suffix: str) -> columns.OutputFile:
    """The documented file whose name ends with `suffix` (exactly one)."""
    found = [f for name, f in BY_NAME.items() if name.endswith(suffix)]
    assert len(found) == 1, f"{suffix}: {[f.name for f in found]}"
    return found[0]


def _patterns(prefix: str) -> list[str]:
    """fnmatch patterns, relative to `prefix` (e.g. "<outdir>/"), of every documented file
    below it: "a/b.csv, c.csv" names two files in one folder, "<x>" is any name."""
    out = []
    for spec in columns.OUTPUT_FILES:
        folder = ""
        for part in spec.name.split(" (")[0].split(", "):
            if "/" in part:
                folder = part.rsplit("/", 1)[0] + "/"
            else:
                part = folder + part
            if part.startswith(prefix):
                out.append(re.sub(r"<[^>]+>", "*", part[len(prefix) :]))
    return out


def _undocumented(root: Path, prefix: str) -> list[str]:
    patterns = _patterns(prefix)
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return [f for f in files if not any(fnmatch.fnmatch(f, p) for p in patterns)]


def _header(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as f:
        return next(csv.reader(f))


def _in_documented_order(header: list[str], documented: tuple[str, ...] | list[str]) -> None:
    unknown = [c for c in header if c not in documented]
    assert not unknown, f"undocumented columns {unknown}"
    assert header == [c for c in documented if c in header], "columns out of documented order"


# ---------------------------------------------------------------------------------------------
# (a) the documentation itself
# ---------------------------------------------------------------------------------------------


def test_every_documented_column_has_a_meaning() -> None:
    assert len(BY_NAME) == len(columns.OUTPUT_FILES), "two files share a name"
    for spec in columns.OUTPUT_FILES:
        assert spec.what.strip(), spec.name
        assert len(set(spec.columns)) == len(spec.columns), f"{spec.name}: repeated column"
        assert set(spec.help) <= set(spec.columns), f"{spec.name}: help for absent columns"
        for col in spec.columns:
            meaning = spec.help.get(col) or columns.COLUMN_HELP.get(col, "")
            assert meaning.strip(), f"{spec.name}: {col} has no meaning"
            # Markdown would swallow <name> outside code spans as an HTML tag
            bare = re.sub(r"`[^`]*`", "", meaning + spec.what)
            assert not re.search(r"<[A-Za-z/]", bare), f"{spec.name}: {col}: put <...> in `...`"


def test_result_csvs_document_the_schema_then_the_additions() -> None:
    from sublim.store.schema import (
        COMPACT_ALIAS_COLUMNS,
        LAYER_METRICS_COLUMNS,
        PERTURBATION_COLUMNS,
        RUNS_COLUMNS,
    )

    for suffix, schema in (
        ("seed_<seed>/runs.csv", RUNS_COLUMNS),
        ("seed_<seed>/layer_metrics.csv", LAYER_METRICS_COLUMNS),
        ("seed_<seed>/perturbations.csv", PERTURBATION_COLUMNS),
    ):
        documented = list(_file(suffix).columns)
        assert documented[: len(schema)] == schema
        assert "config_hash" in documented[len(schema) :]
    every = {*RUNS_COLUMNS, *LAYER_METRICS_COLUMNS, *PERTURBATION_COLUMNS}
    assert not [c for c in every if not columns.COLUMN_HELP.get(c)]
    assert set(run_cols.ALIAS_HELP) == set(COMPACT_ALIAS_COLUMNS)


# ---------------------------------------------------------------------------------------------
# (b) sublim run
# ---------------------------------------------------------------------------------------------

RUN_ARGS = [
    "run",
    "--teacher-epochs",
    "1",
    "--student-epochs",
    "1",
    "--noise-steps",
    "2",
    "--eval-noise-batches",
    "1",
    "--eval-noise-bsize",
    "100",
    "--teacher-hidden-dims",
    "32,32",
    "--student-hidden-dims",
    "32,32",
    "--similarity-samples",
    "50",
    "--class-count",
    "2",
    "--perturb",
    "student:aux_head,std=0.1,timing=before_student_training",
    "--append-global",
    "--save-models",
    "--diagnostics",
    "--quiet",
]


@pytest.fixture(scope="module")
def run_out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sublim.cli.main import main

    out = tmp_path_factory.mktemp("docs_run")
    assert main([*RUN_ARGS, "--outdir", str(out)]) == 0
    return out


def test_run_csv_headers_are_documented(run_out: Path) -> None:
    seed_dir = run_out / "seed_000042"
    for name in ("runs.csv", "layer_metrics.csv", "perturbations.csv"):
        documented = _file(f"seed_<seed>/{name}").columns
        _in_documented_order(_header(seed_dir / name), documented)
        global_name = name.replace(".csv", "_all_seeds.csv")
        _in_documented_order(_header(run_out / global_name), documented)
    assert len((seed_dir / "perturbations.csv").read_text().splitlines()) == 2  # one row
    assert "models_dir" in _header(seed_dir / "runs.csv")


def test_run_side_files_have_the_documented_keys(run_out: Path) -> None:
    seed_dir = run_out / "seed_000042"
    line = json.loads((seed_dir / "configs.jsonl").read_text().splitlines()[0])
    assert tuple(line) == run_cols.CONFIGS_KEYS
    (npz,) = (seed_dir / "diagnostics").glob("*.npz")
    with np.load(npz, allow_pickle=False) as arrays:
        assert set(arrays.files) == set(run_cols.DIAGNOSTICS_ARRAYS)
    bundles = sorted((seed_dir / "models").glob("*/*.pt"))
    assert [p.name for p in bundles] == ["student.pt", "teacher.pt", "teacher_init.pt"]
    for path in bundles:
        keys = list(torch.load(path, weights_only=True))
        assert keys == [k for k in run_cols.MODEL_KEYS if k in keys], path.name
        assert path.name != "teacher.pt" or tuple(keys) == run_cols.MODEL_KEYS


def test_every_file_a_run_writes_is_documented(run_out: Path) -> None:
    assert not _undocumented(run_out, "<outdir>/")


# ---------------------------------------------------------------------------------------------
# (c, d) sublim kd, sublim kd analyze
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kd_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """resnet8 trained alone on the first 200 bundled MNIST images for one epoch, analysed on
    8 images per class and compared with itself on 20 images."""
    from kd_tiny import SMALL, tiny

    from sublim.kd.analyze import analyze, find_target
    from sublim.kd.cka import compare
    from sublim.kd.runner import run_experiment

    config = tiny(tmp_path_factory.mktemp("docs_kd"))
    folder = Path(run_experiment(config)["dir"])
    target = find_target(folder)
    analyze(target, SMALL, draw=False)
    compare(target, target, samples=20)
    return folder


def test_kd_experiment_files_have_the_documented_keys(kd_dir: Path) -> None:
    from sublim.kd.config import KDConfig

    status = json.loads((kd_dir / "status.json").read_text())
    assert status["status"] == "completed"
    assert set(status) == set(kd_cols.STATUS_KEYS) - {"error"}
    metrics = json.loads((kd_dir / "metrics.json").read_text())
    assert set(metrics) == set(kd_cols.METRICS_KEYS)
    assert all(len(v) == 1 for v in metrics.values())  # one epoch
    for name, keys in (("last.pt", kd_cols.LAST_KEYS), ("best.pt", kd_cols.BEST_KEYS)):
        assert tuple(torch.load(kd_dir / name, weights_only=True)) == keys, name
    config = json.loads((kd_dir / "config.json").read_text())
    assert set(config) == {"config_hash", *(f.name for f in dataclasses.fields(KDConfig))}


def test_kd_analyze_files_have_the_documented_columns(kd_dir: Path) -> None:
    header = _header(kd_dir / "layer_quality.csv")
    assert header == [c for c in kd_cols.QUALITY_COLUMNS if c != "probe_acc"]  # no --probe
    sidecar = json.loads((kd_dir / "layer_quality.json").read_text())
    assert tuple(sidecar) == kd_cols.QUALITY_KEY_KEYS
    assert tuple(_header(kd_dir / "cka_resnet8.csv")) == kd_cols.CKA_COLUMNS


def test_every_file_a_kd_experiment_writes_is_documented(kd_dir: Path) -> None:
    assert not _undocumented(kd_dir, "<experiment>/")


# ---------------------------------------------------------------------------------------------
# sublim report's tables (on small frames: the columns do not depend on the data)
# ---------------------------------------------------------------------------------------------


def test_report_tables_have_the_documented_columns() -> None:
    from sublim.analysis.kd import kd_gains, summarize_kd
    from sublim.analysis.plots import PlotOptions
    from sublim.analysis.summary import summarize

    runs = pd.DataFrame({"m": [1, 1, 2, 2], "student_final_acc": [0.1, 0.2, 0.3, 0.4]})
    table = summarize(runs, by=["m"], metrics=["student_final_acc"], n_resamples=100)
    assert list(table.columns) == ["m", *kd_cols.SUMMARY_COLUMNS[1:]]
    assert kd_cols.SUMMARY_COLUMNS[0] == kd_cols.AXES

    rows = []
    for seed in (0, 1):
        for teacher, method in (("-", "alone"), ("resnet56", "kd")):
            acc = 0.5 + 0.1 * seed + (0.05 if method == "kd" else 0.0)
            rows.append(
                dict(dataset="cifar100", teacher=teacher, student="resnet20", method=method)
                | dict(seed=seed, status="completed", epoch=1, best_acc=acc, last_acc=acc)
                | dict(recipe="r1" if seed == 0 else "r2", dir="")
            )
    frame = pd.DataFrame(rows)
    opts = PlotOptions(n_resamples=100)
    assert list(summarize_kd(frame, opts).columns) == list(kd_cols.KD_SUMMARY_COLUMNS)
    one_recipe = summarize_kd(frame.assign(recipe="r"), opts)
    assert list(one_recipe.columns) == [c for c in kd_cols.KD_SUMMARY_COLUMNS if c != "recipe"]
    assert tuple(kd_gains(frame, opts).columns) == kd_cols.KD_GAINS_COLUMNS
    from sublim.analysis.kd_table import benchmark_table

    bench = benchmark_table(summarize_kd(frame.assign(recipe="r"), opts))
    assert tuple(bench.columns) == kd_cols.KD_BENCHMARK_COLUMNS and len(bench) == 2

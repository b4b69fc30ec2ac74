"""End-to-end tests of the `sublim` command line, run as subprocesses on the bundled MNIST.

Every invocation runs in its own temporary directory. To keep the file fast, independent
invocations (the bad-input table, the setting variants) are launched together in a small
process pool by a module fixture; each parametrized test then checks its own result.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from sublim.store.schema import (
    LAYER_METRICS_COLUMNS,
    PERTURBATION_COLUMNS,
    RUNS_COLUMNS,
)

BUNDLED_MNIST = (
    Path(__file__).resolve().parents[1] / "src" / "sublim" / "data" / "bundled" / "mnist"
)
CONSOLE_SCRIPT = Path(sys.executable).parent / "sublim"
SEED_DIR = "seed_000042"  # default --seed 42
OUTPUT_FILES = ("runs.csv", "layer_metrics.csv", "perturbations.csv", "configs.jsonl")
TINY = [
    "--teacher-epochs",
    "1",
    "--student-epochs",
    "1",
    "--noise-steps",
    "3",
    "--eval-noise-batches",
    "1",
    "--eval-noise-bsize",
    "100",
    "--quiet",
]
WORKERS = max(2, min(4, os.cpu_count() or 2))
# One torch thread per process: the pool runs WORKERS processes side by side, and torch's
# default of one thread per core makes them fight for the cores (5x slower on 2 cores).
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
# Two no-op perturbations of the teacher (a --perturb-spec).
PERTURB_JSON = [
    {"target": "teacher", "layers": "fc1+fc2", "std": 0, "timing": "after_teacher_training"}
]
# Columns that legitimately differ between two runs of the same command.
VOLATILE = {"run_id", "timestamp", "runtime_seconds"}


# ---------------------------------------------------------------- helpers


def run_cli(
    args: Sequence[Any], cwd: Path, exe: Sequence[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `python -m sublim ARGS` (or another entry point) in `cwd`."""
    cmd = [*(exe or (sys.executable, "-m", "sublim")), *(str(a) for a in args)]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=300)


def run_tiny(cwd: Path, *extra: Any, outdir: str = "out") -> subprocess.CompletedProcess[str]:
    """A tiny training run into `cwd/outdir`."""
    return run_cli(["run", "--outdir", outdir, *TINY, *extra], cwd)


def run_parallel(
    jobs: Sequence[Callable[[], subprocess.CompletedProcess[str]]],
) -> list[subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        return list(pool.map(lambda job: job(), jobs))


def explain(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def assert_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, explain(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, explain(proc)


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file; every row must have exactly the header's width."""
    with open(path, newline="") as f:
        lines = list(csv.reader(f))
    header, body = lines[0], lines[1:]
    for i, line in enumerate(body):
        assert len(line) == len(header), f"{path} row {i}: {len(line)} fields for {len(header)}"
    return header, [dict(zip(header, line, strict=True)) for line in body]


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def assert_complete_lines(path: Path) -> None:
    data = path.read_bytes()
    assert data, f"{path} is empty"
    assert data.endswith(b"\n"), f"{path} ends with a partial line"


def tree(root: Path) -> set[str]:
    """Every path under root (relative), to check that a failing run wrote nothing."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def selected_params(request: pytest.FixtureRequest, test_name: str, param: str) -> list[Any]:
    """The values of `param` of the collected (selected) items of `test_name`."""
    out = []
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if getattr(item, "originalname", None) == test_name and callspec is not None:
            out.append(callspec.params[param])
    return out


# ---------------------------------------------------------------- 1. bad inputs


def corrupt_mnist(case_dir: Path) -> None:
    """A copy of the bundled MNIST whose train labels gz has one byte flipped."""
    data = case_dir / "mnist"
    data.mkdir()
    for f in BUNDLED_MNIST.iterdir():
        shutil.copy(f, data / f.name)
    target = data / "train-labels-idx1-ubyte.gz"
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))


def outdir_is_a_file(case_dir: Path) -> None:
    (case_dir / "out").write_text("not a directory\n")


def empty_dir(case_dir: Path) -> None:
    (case_dir / "empty").mkdir()


def cnn_spec(spec: Any, role: str = "student") -> list[str]:
    text = spec if isinstance(spec, str) else json.dumps(spec)
    return [f"--{role}-type", "cnn", f"--{role}-arch-spec", text]


@dataclass(frozen=True)
class Bad:
    """One invalid invocation: extra args after `run --outdir out TINY`, and the flag named."""

    id: str
    args: tuple[str, ...]
    flag: str
    also: tuple[str, ...] = ()  # further texts the error line must contain
    setup: Callable[[Path], None] | None = None
    warnings_ok: bool = False  # lines before the error line are allowed (download warnings)

    def argv(self, case_dir: Path) -> list[str]:
        return [
            "run",
            "--outdir",
            "out",
            *TINY,
            *(a.replace("{dir}", str(case_dir)) for a in self.args),
        ]


def bad(id: str, args: Sequence[str], flag: str, *also: str, **kw: Any) -> Any:
    return pytest.param(Bad(id, tuple(args), flag, tuple(also), **kw), id=id)


CONV = {"type": "conv2d", "out_channels": 4}
BAD_CASES = [
    bad("unknown-dataset", ["--dataset", "cifar"], "--dataset", "cifar"),
    bad("unknown-emnist-split", ["--dataset", "emnist", "--emnist-split", "x"], "--emnist-split"),
    bad(
        "init-unknown-layer", ["--student-init", "all:A,fc9:B"], "--student-init", "fc9", "aux_head"
    ),
    bad("init-positional-count", ["--student-init", "A,A,A"], "--student-init"),
    bad("init-mixed-forms", ["--teacher-init", "A,fc1:B,A,A"], "--teacher-init"),
    bad("trainable-bad-bool", ["--student-trainable", "all:maybe"], "--student-trainable"),
    bad("init-bad-source", ["--teacher-init", "all:C"], "--teacher-init"),
    bad("student-type", ["--student-type", "rnn"], "--student-type"),
    bad("similarity-samples", ["--similarity-samples", "2"], "--similarity-samples", "0 (off)"),
    bad("hidden-dims", ["--student-hidden-dims", "256,abc"], "--student-hidden-dims"),
    bad("arch-bad-json", cnn_spec('[{"type": "conv2d",'), "--student-arch-spec", "JSON"),
    bad("arch-unknown-key", cnn_spec([{**CONV, "colour": 1}]), "--student-arch-spec", "colour"),
    bad(
        "arch-no-out-channels",
        cnn_spec([{"type": "conv2d"}]),
        "--student-arch-spec",
        "out_channels",
    ),
    bad(
        "arch-activation",
        cnn_spec([{**CONV, "activation": "swish"}]),
        "--student-arch-spec",
        "swish",
    ),
    bad(
        "arch-pool-type",
        cnn_spec([{**CONV, "pool": {"type": "median"}}]),
        "--student-arch-spec",
        "median",
    ),
    bad("arch-empty-map", cnn_spec([{**CONV, "kernel_size": 29}]), "--student-arch-spec", "empty"),
    bad(
        "arch-missing-file",
        cnn_spec("{dir}/no_such_spec.json", role="teacher"),
        "--teacher-arch-spec",
        "no_such_spec.json",
    ),
    bad("perturb-field", ["--perturb", "student:aux_head,sdt=0.1"], "--perturb", "sdt"),
    bad("perturb-negative-std", ["--perturb", "student:aux_head,std=-0.1"], "--perturb", "std"),
    bad("perturb-timing", ["--perturb", "student:all,std=0.1,timing=lunch"], "--perturb", "lunch"),
    bad("perturb-target", ["--perturb", "pupil:aux_head,std=0.1"], "--perturb", "pupil"),
    bad("perturb-layer", ["--perturb", "student:fc7,std=0.1"], "--perturb", "fc7"),
    bad("perturb-spec-json", ["--perturb-spec", '{"target": "student",'], "--perturb-spec"),
    bad("perturb-spec-missing-file", ["--perturb-spec", "nope.json"], "--perturb-spec", "nope"),
    bad("m-zero", ["--m", "0"], "--m"),
    bad("noise-bsize-negative", ["--noise-bsize", "-5"], "--noise-bsize"),
    bad("data-bsize-zero", ["--data-bsize", "0"], "--data-bsize"),
    bad("teacher-epochs-zero", ["--teacher-epochs", "0"], "--teacher-epochs"),
    bad("m-not-integer", ["--m", "2.5"], "--m"),
    bad("lr-not-numeric", ["--teacher-lr", "fast"], "--teacher-lr"),
    bad("temperature-zero", ["--temperature", "0"], "--temperature"),
    bad("seed-negative", ["--seed", "-1"], "--seed"),
    bad("class-count-1", ["--class-count", "1"], "--class-count"),
    bad("class-count-11", ["--class-count", "11"], "--class-count"),
    bad("classes-duplicate", ["--classes", "3,3"], "--classes"),
    bad("classes-out-of-range", ["--classes", "3,10"], "--classes"),
    bad("classes-and-class-count", ["--classes", "0,1", "--class-count", "2"], "--class"),
    bad("noise-dist", ["--noise-dist", "pink"], "--noise-dist", "pink"),
    bad("distill-loss", ["--distill-loss", "huber"], "--distill-loss", "huber"),
    bad("device", ["--device", "tpu"], "--device", "tpu"),
    bad("unknown-flag", ["--frobnicate", "3"], "--frobnicate"),
    bad("outdir-is-file", [], "--outdir", setup=outdir_is_a_file),
    bad(
        "corrupt-mnist",
        ["--dataset", "mnist", "--data-dir", "{dir}/mnist"],
        "--data-dir",
        "checksum",
        "train-labels-idx1-ubyte.gz",
        setup=corrupt_mnist,
    ),
    bad(
        "missing-fashion-mnist",
        ["--dataset", "fashion-mnist", "--data-dir", "{dir}/empty"],
        "--data-dir",
        "fashion-mnist",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
        setup=empty_dir,
        warnings_ok=True,
    ),
]


@dataclass
class BadResult:
    proc: subprocess.CompletedProcess[str]
    case_dir: Path
    before: set[str]
    outdir_text: str | None  # content of a pre-existing regular file at --outdir


@pytest.fixture(scope="module")
def bad_results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, BadResult]:
    cases: list[Bad] = selected_params(request, "test_bad_invocation", "case")
    prepared = []
    for case in cases:
        case_dir = tmp_path_factory.mktemp(case.id)
        if case.setup is not None:
            case.setup(case_dir)
        out = case_dir / "out"
        prepared.append(
            (case, case_dir, tree(case_dir), out.read_text() if out.is_file() else None)
        )
    procs = run_parallel(
        [lambda c=c, d=d: run_cli(c.argv(d), d) for c, d, _, _ in prepared]  # type: ignore[misc]
    )
    return {
        c.id: BadResult(p, d, before, text)
        for (c, d, before, text), p in zip(prepared, procs, strict=True)
    }


def assert_user_error(
    proc: subprocess.CompletedProcess[str],
    flag: str,
    also: Sequence[str] = (),
    warnings_ok: bool = False,
) -> None:
    """Exit 2, one `sublim: error: ` line naming `flag` (after warnings if allowed), no traceback."""
    assert proc.returncode == 2, explain(proc)
    assert "Traceback" not in proc.stdout + proc.stderr, explain(proc)
    assert proc.stdout == "", explain(proc)
    lines = proc.stderr.splitlines()
    assert lines, explain(proc)
    if warnings_ok:
        assert all(line.startswith("sublim: warning: ") for line in lines[:-1]), explain(proc)
    else:
        assert len(lines) == 1, explain(proc)
    error = lines[-1]
    assert error.startswith("sublim: error: "), explain(proc)
    for text in (flag, *also):
        assert text in error, explain(proc)


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_invocation(case: Bad, bad_results: dict[str, BadResult]) -> None:
    res = bad_results[case.id]
    assert_user_error(res.proc, case.flag, case.also, case.warnings_ok)
    # nothing written: no output directory, no data downloaded, no stray files
    out = res.case_dir / "out"
    if res.outdir_text is None:
        assert not out.exists()
    else:
        assert out.is_file() and out.read_text() == res.outdir_text
    assert tree(res.case_dir) == res.before


def test_bad_invocation_via_console_script(tmp_path: Path) -> None:
    proc = run_cli(["run", "--outdir", "out", "--m", "0"], tmp_path, exe=[str(CONSOLE_SCRIPT)])
    assert_user_error(proc, "--m")
    assert not (tmp_path / "out").exists()


def test_unavailable_device_is_a_user_error(tmp_path: Path) -> None:
    proc = run_tiny(tmp_path, "--device", "cuda")
    if proc.returncode == 0:
        pytest.skip("CUDA is available on this machine")
    assert_user_error(proc, "--device")
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- 2. a tiny run


def run_dir(root: Path, seed_dir: str = SEED_DIR) -> Path:
    return root / "out" / seed_dir


def check_run_files(d: Path, expected_runs: int) -> dict[str, Any]:
    """Structural checks of one seed directory; returns its parsed contents."""
    for name in OUTPUT_FILES:
        assert (d / name).is_file(), f"missing {d / name}"
    for name in ("runs.csv", "layer_metrics.csv", "configs.jsonl"):
        assert_complete_lines(d / name)
    runs_header, runs = read_csv(d / "runs.csv")
    assert runs_header[: len(RUNS_COLUMNS)] == RUNS_COLUMNS
    assert "config_hash" in runs_header
    assert len(runs) == expected_runs
    lm_header, layer_metrics = read_csv(d / "layer_metrics.csv")
    assert lm_header[: len(LAYER_METRICS_COLUMNS)] == LAYER_METRICS_COLUMNS
    pert_header, perturbations = read_csv(d / "perturbations.csv")
    assert pert_header[: len(PERTURBATION_COLUMNS)] == PERTURBATION_COLUMNS
    configs = read_jsonl(d / "configs.jsonl")
    assert len(configs) == expected_runs
    return {"runs": runs, "layer_metrics": layer_metrics, "perturbations": perturbations,
            "configs": configs}  # fmt: skip


def test_tiny_run_outputs_and_deterministic_rerun(tmp_path: Path) -> None:
    proc = run_tiny(tmp_path)
    assert_ok(proc)
    d = run_dir(tmp_path)
    got = check_run_files(d, expected_runs=1)
    run = got["runs"][0]

    # one summary line with both accuracies and the output directory
    lines = proc.stdout.splitlines()
    assert len(lines) == 1, explain(proc)
    summary = lines[0]
    assert "teacher acc" in summary and "student acc" in summary
    assert f"{float(run['teacher_final_acc']):.4f}" in summary
    assert f"{float(run['student_final_acc']):.4f}" in summary
    assert str(Path("out") / SEED_DIR) in summary

    # runs.csv reflects the command line
    assert run["seed"] == "42" and run["dataset"] == "mnist" and run["num_classes"] == "10"
    assert (run["teacher_epochs"], run["student_epochs"], run["noise_steps"]) == ("1", "1", "3")
    assert (run["eval_noise_batches"], run["eval_noise_bsize"]) == ("1", "100")
    assert json.loads(run["student_layer_names"]) == ["fc1", "fc2", "class_head", "aux_head"]
    assert json.loads(run["perturb_specs"]) == []
    assert len(run["config_hash"]) == 16
    teacher_acc = float(run["teacher_final_acc"])
    assert 0.5 < teacher_acc <= 1.0  # one epoch on MNIST is far above chance
    assert 0.0 <= float(run["student_final_acc"]) <= 1.0

    # layer_metrics: 4 comparisons x 4 layers x 2 tensors, all comparable
    lm = got["layer_metrics"]
    assert len(lm) == 32
    assert {r["status"] for r in lm} == {"comparable"}
    assert {r["run_id"] for r in lm} == {run["run_id"]}
    assert {r["comparison"] for r in lm} == {
        "teacher_student_init",
        "teacher_student_final",
        "teacher_init_final",
        "student_init_final",
    }
    assert {(r["layer_name"], r["tensor_kind"]) for r in lm} == {
        (layer, kind)
        for layer in ("fc1", "fc2", "class_head", "aux_head")
        for kind in ("weight", "bias")
    }
    shapes = {(r["layer_name"], r["tensor_kind"]): r["reference_shape"] for r in lm}
    assert shapes[("fc1", "weight")] == "256x784" and shapes[("aux_head", "bias")] == "10"
    assert got["perturbations"] == []

    # configs.jsonl: one line with the effective and resolved configs and the seeds
    (cfg,) = got["configs"]
    assert cfg["run_id"] == run["run_id"]
    assert cfg["effective_config"]["noise_steps"] == 3
    assert cfg["effective_config"]["seed"] == 42
    all_a = {"fc1": "A", "fc2": "A", "class_head": "A", "aux_head": "A"}
    for role in ("teacher", "student"):
        assert cfg[f"resolved_{role}_init"] == all_a
        assert cfg[f"resolved_{role}_trainable"] == dict.fromkeys(all_a, True)
        assert cfg[f"{role}_arch_description"] == run[f"{role}_arch_description"]
    assert isinstance(cfg["seed_info"], dict) and cfg["seed_info"]

    # the same command again appends a second, identical run
    proc2 = run_tiny(tmp_path)
    assert_ok(proc2)
    got2 = check_run_files(d, expected_runs=2)
    first, second = got2["runs"]
    assert first == run
    assert first["run_id"] != second["run_id"]
    assert first["config_hash"] == second["config_hash"]
    for key, value in first.items():
        if key not in VOLATILE:
            assert second[key] == value, key
    lm1 = [r for r in got2["layer_metrics"] if r["run_id"] == first["run_id"]]
    lm2 = [r for r in got2["layer_metrics"] if r["run_id"] == second["run_id"]]
    assert len(lm1) == len(lm2) == 32
    for a, b in zip(lm1, lm2, strict=True):
        assert {k: v for k, v in a.items() if k != "run_id"} == {
            k: v for k, v in b.items() if k != "run_id"
        }
    assert [c["run_id"] for c in got2["configs"]] == [first["run_id"], second["run_id"]]
    assert not (tmp_path / "out" / "runs_all_seeds.csv").exists()


@pytest.mark.slow  # several CLI runs (~15 s); make test-slow
def test_append_global_and_two_seeds(tmp_path: Path) -> None:
    # the second run takes its perturbations from a JSON file
    (tmp_path / "perturb.json").write_text(json.dumps(PERTURB_JSON))
    assert_ok(run_tiny(tmp_path, "--seed", "1", "--append-global", "--perturb", "student:fc1"))
    assert_ok(
        run_tiny(tmp_path, "--seed", "2", "--append-global", "--perturb-spec", "perturb.json")
    )
    out = tmp_path / "out"
    per_seed = {}
    for seed_dir in ("seed_000001", "seed_000002"):
        got = check_run_files(out / seed_dir, expected_runs=1)
        per_seed[seed_dir] = got
        assert got["runs"][0]["seed"] == seed_dir[-1]
    rows = per_seed["seed_000001"]["perturbations"]
    assert [(r["target"], r["layer_name"], r["timing"], r["std"]) for r in rows] == [
        ("student", "fc1", "before_student_training", "0")
    ]
    rows = per_seed["seed_000002"]["perturbations"]
    assert [(r["target"], r["layer_name"], r["timing"]) for r in rows] == [
        ("teacher", "fc1", "after_teacher_training"),
        ("teacher", "fc2", "after_teacher_training"),
    ]
    assert sorted(p.name for p in out.glob("seed_*")) == ["seed_000001", "seed_000002"]

    header, runs = read_csv(out / "runs_all_seeds.csv")
    assert header[: len(RUNS_COLUMNS)] == RUNS_COLUMNS
    assert [r["seed"] for r in runs] == ["1", "2"]
    assert [r["run_id"] for r in runs] == [
        per_seed[s]["runs"][0]["run_id"] for s in ("seed_000001", "seed_000002")
    ]
    _, lm = read_csv(out / "layer_metrics_all_seeds.csv")
    assert len(lm) == 64 and {r["seed"] for r in lm} == {"1", "2"}
    _, pert = read_csv(out / "perturbations_all_seeds.csv")
    assert [r["seed"] for r in pert] == ["1", "2", "2"]
    for name in (
        "runs_all_seeds.csv",
        "layer_metrics_all_seeds.csv",
        "perturbations_all_seeds.csv",
    ):
        assert_complete_lines(out / name)
    # different seeds give different models
    a, b = (per_seed[s]["runs"][0] for s in ("seed_000001", "seed_000002"))
    assert a["teacher_model_seed"] != b["teacher_model_seed"]
    assert a["config_hash"] != b["config_hash"]


# ---------------------------------------------------------------- 3-5. runs with settings

AUX_NUMEL = 10 * 256
CUSTOM_CNN = [
    {"name": "c1", "type": "conv", "out_channels": 4, "padding": 1, "pool": {"type": "max"}},
    {"name": "c2", "type": "conv2d", "out_channels": 8, "pool": {"type": "adaptive_avg", "output_size": 3}},
    {"name": "feat", "type": "linear", "out_features": 16},
]  # fmt: skip
LONG_SPEC = json.dumps(
    [
        {
            "name": "conv_first",
            "type": "conv2d",
            "out_channels": 4,
            "kernel_size": 3,
            "stride": 1,
            "padding": 1,
            "dilation": 1,
            "bias": True,
            "activation": "relu",
            "pool": {"type": "max", "kernel_size": 2, "stride": 2, "padding": 0},
        },
        {
            "name": "conv_second",
            "type": "conv2d",
            "out_channels": 4,
            "kernel_size": 3,
            "padding": 1,
            "activation": "relu",
            "pool": {"type": "avg", "kernel_size": 2},
        },
        {"name": "dense_features", "type": "linear", "out_features": 16, "activation": "relu"},
    ],
    indent=4,
)
assert len(LONG_SPEC) > 300  # longer than any file name: must not be tried as a path first


def check_perturbations(got: dict[str, Any]) -> None:
    rows = {(r["target"], r["layer_name"]): r for r in got["perturbations"]}
    assert len(got["perturbations"]) == 3 and set(rows) == {
        ("student", "aux_head"),
        ("teacher", "fc1"),
        ("teacher", "fc2"),
    }
    aux = rows[("student", "aux_head")]
    assert aux["timing"] == "before_student_training"
    assert float(aux["std"]) == pytest.approx(0.1)
    assert float(aux["weight_delta_norm"]) == pytest.approx(0.1 * math.sqrt(AUX_NUMEL), rel=0.1)
    assert float(aux["bias_delta_norm"]) > 0
    for layer in ("fc1", "fc2"):
        row = rows[("teacher", layer)]
        assert row["timing"] == "after_teacher_training"
        assert float(row["std"]) == 0
        assert float(row["weight_delta_norm"]) == 0 and float(row["bias_delta_norm"]) == 0
    assert len({r["perturb_seed"] for r in got["perturbations"]}) == 3
    specs = json.loads(got["runs"][0]["perturb_specs"])
    assert [(s["target"], s["timing"]) for s in specs] == [
        ("student", "before_student_training"),
        ("teacher", "after_teacher_training"),
    ]


def check_cnn(got: dict[str, Any]) -> None:
    run = got["runs"][0]
    names = ["c1", "c2", "feat", "class_head", "aux_head"]
    assert run["student_type"] == "cnn" and run["teacher_type"] == "mlp"
    assert json.loads(run["student_layer_names"]) == names
    assert "adaptive_avg" in run["student_arch_description"]
    status = {
        (r["comparison"], r["layer_name"], r["tensor_kind"]): r["status"]
        for r in got["layer_metrics"]
    }
    assert status[("teacher_student_init", "c1", "weight")] == "missing_in_teacher"
    assert status[("teacher_student_init", "fc1", "weight")] == "missing_in_student"
    assert status[("student_init_final", "c2", "weight")] == "comparable"
    # heads read 16 features in the student, 256 in the teacher
    assert status[("teacher_student_init", "aux_head", "weight")] == "shape_mismatch"
    assert status[("teacher_student_init", "aux_head", "bias")] == "comparable"


def check_long_spec(got: dict[str, Any]) -> None:
    run = got["runs"][0]
    assert json.loads(run["student_layer_names"])[:3] == [
        "conv_first",
        "conv_second",
        "dense_features",
    ]


def column(**expected: str) -> Callable[[dict[str, Any]], None]:
    def check(got: dict[str, Any]) -> None:
        run = got["runs"][0]
        for key, value in expected.items():
            assert run[key] == value, (key, run[key])

    return check


def check_classes(got: dict[str, Any]) -> None:
    run = got["runs"][0]
    assert run["num_classes"] == "2" and run["base_num_classes"] == "10"
    assert json.loads(run["classes"]) == [3, 8]
    assert run["train_size"] and int(run["train_size"]) < 15000  # 3s and 8s only
    assert float(run["teacher_final_acc"]) > 0.6  # binary task, one epoch
    shapes = {
        (r["layer_name"], r["tensor_kind"]): r["reference_shape"] for r in got["layer_metrics"]
    }
    assert shapes[("class_head", "weight")] == "2x256"


def check_console(got: dict[str, Any]) -> None:
    assert got["runs"][0]["m"] == "5"


@dataclass(frozen=True)
class Variant:
    id: str
    args: tuple[str, ...]
    check: Callable[[dict[str, Any]], None]
    console_script: bool = False
    files: tuple[tuple[str, str], ...] = ()  # (name, text) written to the case dir first


def variant(id: str, args: Sequence[str], check: Any, marks: Any = (), **kw: Any) -> Any:
    return pytest.param(Variant(id, tuple(args), check, **kw), id=id, marks=marks)


VARIANTS = [
    variant(
        "perturbations",
        [
            "--perturb",
            "student:aux_head,std=0.1",
            "--perturb-spec",
            json.dumps(PERTURB_JSON),
        ],
        check_perturbations,
    ),
    variant(  # the spec comes from a file here, inline in long-inline-spec
        "cnn-adaptive-avg",
        cnn_spec("cnn.json"),
        check_cnn,
        files=(("cnn.json", json.dumps(CUSTOM_CNN)),),
    ),
    variant("long-inline-spec", cnn_spec(LONG_SPEC), check_long_spec),
    variant(
        "perlin",
        ["--noise-dist", "perlin", "--perlin-res", "7"],
        column(noise_dist="perlin", perlin_res="7"),
    ),
    variant(
        "kl",
        ["--distill-loss", "kl", "--temperature", "2"],
        column(distill_loss="kl", temperature="2"),
    ),
    variant(
        "standardized-mse",
        ["--distill-loss", "standardized-mse"],
        column(distill_loss="standardized-mse"),
    ),
    variant("normalize-noise", ["--normalize-noise"], column(normalize_noise="1")),
    variant("classes", ["--classes", "3,8"], check_classes),
    variant("console-script", ["--m", "5"], check_console, console_script=True),
    variant(
        "label-with-carriage-return",
        ["--run-label", "label\r", "--sweep-name", 'a,b\n"c"'],
        column(run_label="label\r", sweep_name='a,b\n"c"'),
    ),
]


@pytest.fixture(scope="module")
def variant_results(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess[str], Path]]:
    cases: list[Variant] = selected_params(request, "test_setting_variant", "case")
    dirs = []
    for case in cases:
        dirs.append(tmp_path_factory.mktemp(case.id))
        for name, text in case.files:
            (dirs[-1] / name).write_text(text)

    def job(case: Variant, case_dir: Path) -> Callable[[], subprocess.CompletedProcess[str]]:
        exe = [str(CONSOLE_SCRIPT)] if case.console_script else None
        return lambda: run_cli(["run", "--outdir", "out", *TINY, *case.args], case_dir, exe=exe)

    procs = run_parallel([job(c, d) for c, d in zip(cases, dirs, strict=True)])
    return {c.id: (p, d) for c, d, p in zip(cases, dirs, procs, strict=True)}


@pytest.mark.parametrize("case", VARIANTS)
def test_setting_variant(
    case: Variant, variant_results: dict[str, tuple[subprocess.CompletedProcess[str], Path]]
) -> None:
    proc, case_dir = variant_results[case.id]
    assert_ok(proc)
    assert len(proc.stdout.splitlines()) == 1, explain(proc)
    got = check_run_files(run_dir(case_dir), expected_runs=1)
    assert len(got["layer_metrics"]) >= 32
    case.check(got)


# ---------------------------------------------------------------- 4. help

HELP_GROUPS = (
    "run and output",
    "data",
    "models",
    "layer initialisation and trainability",
    "training",
    "noise",
    "perturbations",
)
REFERENCE_FLAGS = """
--outdir --data-dir --seed --num-workers --device --sweep-name --run-label --append-global
--dataset --emnist-split --class-count --class-selection --teacher-type --student-type
--teacher-hidden-dims --student-hidden-dims --teacher-arch-spec --student-arch-spec --m
--teacher-init --student-init --teacher-trainable --student-trainable --teacher-epochs
--student-epochs --data-bsize --noise-bsize --noise-steps --teacher-lr --student-lr
--noise-dist --perlin-res --normalize-noise --eval-noise-batches --eval-noise-bsize
--perturb --perturb-spec --classes --distill-loss --temperature --quiet
""".split()


def test_run_help_lists_groups_and_flags(tmp_path: Path) -> None:
    procs = run_parallel(
        [
            lambda: run_cli(["run", "--help"], tmp_path),
            lambda: run_cli(["run", "--help"], tmp_path, exe=[str(CONSOLE_SCRIPT)]),
            lambda: run_cli(["--help"], tmp_path),
        ]
    )
    module_help, script_help, top_help = procs
    for proc in procs:
        assert_ok(proc)
        assert proc.stderr == ""
    text = module_help.stdout
    assert text.startswith("usage: sublim run")
    for group in HELP_GROUPS:
        assert f"\n{group}:" in text, group
    options = {word.rstrip(",") for word in text.split() if word.startswith("--")}
    for flag in REFERENCE_FLAGS:
        assert flag in options, flag
    assert script_help.stdout == text
    assert "run" in top_help.stdout and "data" in top_help.stdout
    assert not any(tmp_path.iterdir())

"""`sublim sweep` end to end: resume, teacher reuse, kill -9, the lock, and every executor."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sublim import ExperimentConfig, run
from sublim.store import RunStore
from sublim.sweep.spec import load_spec

TINY_SPEC = """
name = "tiny"
seeds = "0..1"
label = "{condition}_m{m}"

[base]
classes = [0, 1]
teacher_epochs = 1
student_epochs = 1
noise_steps = 2
noise_bsize = 200
eval_noise_batches = 1
eval_noise_bsize = 200
teacher_hidden_dims = [32, 32]
student_hidden_dims = [32, 32]

[grid]
m = [2, 3]

[conditions.same]
student_init = "all:A"

[conditions.rand]
student_init = "all:A,fc1:random"
"""
METRICS = ("teacher_final_acc", "student_init_acc", "student_final_acc", "student_final_aux_loss")


@pytest.fixture()
def spec(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(TINY_SPEC)
    return path


def sweep(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "sublim", "sweep", *args, "--quiet"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_dry_run_counts_and_writes_nothing(spec: Path, tmp_path: Path) -> None:
    out = sweep(str(spec), "--outdir", "o", "--dry-run", cwd=tmp_path).stdout
    assert "runs: 8 in the spec, 0 already finished, 8 to run" in out
    assert "teachers: 2 distinct" in out and "saves 6 of 8" in out
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # several sweeps (~16 s); make test-slow
def test_sweep_resumes_and_matches_single_runs(spec: Path, tmp_path: Path) -> None:
    first = sweep(str(spec), "--outdir", "o", "--max-runs", "3", cwd=tmp_path)
    assert "3 runs written" in first.stdout
    sweep(str(spec), "--outdir", "o", cwd=tmp_path)
    again = sweep(str(spec), "--outdir", "o", cwd=tmp_path)
    assert "all 8 runs already finished" in again.stdout
    runs = rows(tmp_path / "o" / "runs_all_seeds.csv")
    assert len(runs) == 8 and len({r["config_hash"] for r in runs}) == 8
    assert len(list((tmp_path / "o" / "teachers").glob("*.pt"))) == 2  # one teacher per seed
    per_seed = rows(tmp_path / "o" / "seed_000000" / "runs.csv") + rows(
        tmp_path / "o" / "seed_000001" / "runs.csv"
    )
    assert sorted(r["run_id"] for r in per_seed) == sorted(r["run_id"] for r in runs)
    # a sweep's row equals what `sublim run` gives for the same config (stacked training:
    # within the documented tolerance, see tests/test_batch.py)
    config = next(p.config for p in load_spec(spec).points() if p.config.run_label == "rand_m3")
    single = run(config.replace(outdir="o")).run
    row = next(r for r in runs if r["config_hash"] == config.config_hash)
    for key in METRICS:
        tol = {"abs": 2e-3} if key.endswith("_acc") else {"rel": 1e-3, "abs": 1e-7}
        assert float(row[key]) == pytest.approx(single[key], **tol)


# five student widths: five stacks, written one after another
SEVERAL_STACKS = TINY_SPEC.replace(
    "[grid]\n", "[grid]\nstudent_hidden_dims = [[32, 32], [16, 16], [8, 8], [24, 24], [12, 12]]\n"
).replace("student_hidden_dims = [32, 32]\n\n[grid]", "[grid]")


@pytest.mark.slow  # kill -9 mid-sweep (~15 s); make test-slow
def test_kill_9_then_rerun_loses_nothing_and_duplicates_nothing(spec: Path, tmp_path: Path) -> None:
    spec.write_text(SEVERAL_STACKS)
    cmd = [sys.executable, "-m", "sublim", "sweep", str(spec), "--outdir", "o", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    runs_file = tmp_path / "o" / "runs_all_seeds.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if runs_file.exists() and len(runs_file.read_bytes().splitlines()) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "sweep finished before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = len(rows(runs_file))
    assert 0 < killed_at < 40
    sweep(str(spec), "--outdir", "o", cwd=tmp_path)
    runs = rows(runs_file)
    assert len(runs) == 40 and len({r["config_hash"] for r in runs}) == 40
    for path in (tmp_path / "o").rglob("*.csv"):
        data = path.read_bytes()
        assert data.endswith(b"\n"), path
        header, *body = list(csv.reader(data.decode().splitlines()))
        assert all(len(r) == len(header) for r in body), path
    metrics = rows(tmp_path / "o" / "layer_metrics_all_seeds.csv")
    assert len(metrics) == 40 * 32


def test_a_second_writer_is_refused(spec: Path, tmp_path: Path) -> None:
    with RunStore(tmp_path / "o").open():
        proc = sweep(str(spec), "--outdir", "o", cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert proc.stderr.startswith("sublim: error: output directory o is in use")
    assert "Traceback" not in proc.stderr
    sweep(str(spec), "--outdir", "o", "--max-runs", "1", cwd=tmp_path)  # free again


@pytest.mark.slow  # real worker processes and a Dask cluster (~40 s); make test-slow and CI
@pytest.mark.parametrize("executor", ["processes:2", "dask-local:2"])
def test_executors_give_the_inline_rows(spec: Path, tmp_path: Path, executor: str) -> None:
    sweep(str(spec), "--outdir", "inline", "--seeds", "0", cwd=tmp_path)
    sweep(str(spec), "--outdir", "other", "--seeds", "0", "--executor", executor, cwd=tmp_path)
    a = {r["config_hash"]: r for r in rows(tmp_path / "inline" / "runs_all_seeds.csv")}
    b = {r["config_hash"]: r for r in rows(tmp_path / "other" / "runs_all_seeds.csv")}
    assert a.keys() == b.keys() and len(a) == 4
    for h in a:
        for key in METRICS:
            assert float(a[h][key]) == pytest.approx(float(b[h][key]), rel=1e-6, abs=1e-9)


@pytest.mark.slow  # a real Dask scheduler (~15 s); make test-slow
def test_dask_scheduler_address(spec: Path, tmp_path: Path) -> None:
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=1, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
    ) as cluster:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        proc = sweep(
            str(spec),
            "--outdir",
            "o",
            "--seeds",
            "1",
            "--executor",
            f"dask:{address}",
            cwd=tmp_path,
        )
    assert "4 runs written" in proc.stdout


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["--executor", "threads:2"], "--executor"),
        (["--executor", "processes:0"], "--executor"),
        (["--seeds", "x"], "--seeds"),
        (["--set", "m=0"], "--m"),
        (["--set", "seed=1"], "--set"),
        (["--set", "nosuch=1"], "--set: invalid value 'nosuch'; unknown config field"),
        (["--max-runs", "0"], "--max-runs"),
    ],
)
def test_bad_sweep_arguments(spec: Path, tmp_path: Path, args: list[str], match: str) -> None:
    proc = sweep(str(spec), "--outdir", "o", *args, cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sublim: error: ") and match in lines[0]
    assert not (tmp_path / "o").exists()


def test_bad_spec_file_names_file_and_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid]\nm = [3, -1]\n")
    proc = sweep(str(bad), cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "bad.toml: --m (at m=-1): invalid value -1" in proc.stderr
    assert ExperimentConfig  # the API stays importable from the package root


@pytest.mark.slow  # SIGINT to a sweep (~35 s); make test-slow
def test_ctrl_c_writes_what_finished_and_exits_130(spec: Path, tmp_path: Path) -> None:
    spec.write_text(SEVERAL_STACKS)
    cmd = [sys.executable, "-m", "sublim", "sweep", str(spec), "--outdir", "o", "--quiet"]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    runs_file = tmp_path / "o" / "runs_all_seeds.csv"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not runs_file.exists():
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip("the sweep finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    before = rows(runs_file)
    sweep(str(spec), "--outdir", "o", cwd=tmp_path)
    after = rows(runs_file)
    assert len(after) == 40 and len({r["config_hash"] for r in after}) == 40
    assert [r["run_id"] for r in after[: len(before)]] == [r["run_id"] for r in before]

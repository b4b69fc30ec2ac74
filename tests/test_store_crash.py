"""Real processes: SIGKILL at any instant loses no run partially; two writers are refused."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest

from sublim.errors import StoreError
from sublim.store import RunStore

SRC = str(Path(__file__).resolve().parents[1] / "src")

# Writes runs forever; run i has 200 + 150*(i%5) layer rows, i%3 perturbation rows, seed i%3,
# and every 4th run adds a new column (header widening). With STALL_AFTER=n the n-th file
# change of the first run after "ready" is applied, then it prints "mid" and stalls.
WRITER = textwrap.dedent(
    """
    import os, sys, time
    from sublim.records import RunRecord
    from sublim.store import RunStore, journal

    outdir, start = sys.argv[1], int(sys.argv[2])
    stall_after = int(os.environ.get("STALL_AFTER", "0"))
    if stall_after:
        real_append = journal.append_at
        calls = [0]
        def slow_append(*args):
            real_append(*args)
            calls[0] += 1
            if calls[0] == stall_after:
                print("mid", flush=True)
                time.sleep(600)
        journal.append_at = slow_append
    store = RunStore(outdir, append_global=True).open(wait=30)
    print("ready", flush=True)
    i = start
    while True:
        run = {"run_id": f"r{i:06d}", "sweep_name": "kill", "run_label": "x" * 40,
               "student_final_acc": i / 7, "teacher_hidden_dims": [256, 256]}
        if i % 4 == 3:
            run[f"extra_{i}"] = i
        metrics = [{"comparison": "teacher_student_final", "layer_name": f"fc{j}",
                    "tensor_kind": "bias" if j % 2 else "weight", "status": "comparable",
                    "reference_shape": "256x784", "cosine": j / 3, "diff_norm": j * 1.5,
                    "reference_norm": 1e-3 * j, "relative_diff_symmetric": float("nan")}
                   for j in range(200 + 150 * (i % 5))]
        perturbations = [{"timing": "before_student_training", "layer_name": f"fc{j}",
                          "std": 0.01, "weight_delta_norm": j / 9} for j in range(i % 3)]
        store.write(RunRecord(i % 3, run, metrics, perturbations, {"i": i, "x": "y" * 500}))
        i += 1
    """
)


def start_writer(outdir: Path, start: int, stall_after: int = 0) -> subprocess.Popen:
    """Launch the writer process and wait until it holds the store."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    if stall_after:
        env["STALL_AFTER"] = str(stall_after)
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(outdir), str(start)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL a child we started and reap it."""
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL


def expected_counts(run_id: str) -> tuple[int, int]:
    """Layer-metric and perturbation rows the writer produces for a run."""
    i = int(run_id[1:])
    return 200 + 150 * (i % 5), i % 3


def check_csv(path: Path) -> Counter:
    """Whole lines, right widths; returns rows per run_id."""
    raw = path.read_bytes()
    assert raw.endswith(b"\n"), path
    lines = list(csv.reader(raw.decode().splitlines()))
    header, rows = lines[0], lines[1:]
    assert all(len(row) == len(header) for row in rows), path
    col = header.index("run_id")
    return Counter(row[col] for row in rows)


def check_consistent(out: Path) -> set[str]:
    """Every run is complete in every file it belongs to, exactly once; returns all run ids."""
    global_runs = check_csv(out / "runs_all_seeds.csv")
    global_metrics = check_csv(out / "layer_metrics_all_seeds.csv")
    global_perts = check_csv(out / "perturbations_all_seeds.csv")
    seen: set[str] = set()
    for seed_dir in sorted(out.glob("seed_*")):
        runs = check_csv(seed_dir / "runs.csv")
        metrics = check_csv(seed_dir / "layer_metrics.csv")
        perts = check_csv(seed_dir / "perturbations.csv")
        raw = (seed_dir / "configs.jsonl").read_bytes()
        assert raw.endswith(b"\n")
        configs = Counter(json.loads(x)["run_id"] for x in raw.decode().splitlines())
        assert set(metrics) <= set(runs) and set(perts) <= set(runs)
        assert set(configs) == set(runs)
        for run_id, n in runs.items():
            n_metrics, n_perts = expected_counts(run_id)
            assert n == 1 and configs[run_id] == 1, run_id
            assert metrics[run_id] == n_metrics and perts[run_id] == n_perts, run_id
            assert seed_dir.name == f"seed_{int(run_id[1:]) % 3:06d}"
        seen |= set(runs)
    assert set(global_runs) == seen and all(n == 1 for n in global_runs.values())
    assert set(global_metrics) == seen
    for run_id in seen:
        n_metrics, n_perts = expected_counts(run_id)
        assert global_metrics[run_id] == n_metrics and global_perts[run_id] == n_perts
    return seen


def reopen(out: Path) -> bool:
    """A fresh store opens (replaying any journal); True when it had to recover."""
    store = RunStore(out, append_global=True).open()
    store.close()
    return store.recovered


def test_sigkill_at_any_moment_keeps_runs_whole(tmp_path) -> None:
    out = tmp_path / "out"
    rng = random.Random(1234)
    # First a kill guaranteed mid-transaction: after the 4th of 7 file changes of a run.
    proc = start_writer(out, start=0, stall_after=4)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "mid"
    kill(proc)
    assert (out / ".sublim.journal").exists()
    assert reopen(out)
    assert check_consistent(out) == {"r000000"}
    total = 1
    # Then kills at random instants; each new writer continues the same directory.
    for round_ in range(1, 5):
        proc = start_writer(out, start=round_ * 100_000)
        time.sleep(rng.uniform(0.05, 0.35))
        kill(proc)
        reopen(out)
        seen = check_consistent(out)
        assert len(seen) >= total
        total = len(seen)
    assert total > 5  # the random rounds did write runs
    assert not (out / ".sublim.journal").exists()


LOCKER = "import sys,time; from sublim.store import RunStore; " + (
    "s = RunStore(sys.argv[1]).open(); print('locked', flush=True); time.sleep(600)"
)


def test_second_writer_refused_until_holder_dies(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError) as err:
            RunStore(tmp_path).open()
        message = str(err.value)
        assert "in use by another sublim writer" in message and f"pid {proc.pid}" in message
        assert "--outdir" in message and str(tmp_path) in message and "\n" not in message
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="after waiting 0.5s"):
            RunStore(tmp_path).open(wait=0.5)
        assert 0.45 <= time.monotonic() - t0 < 3
    finally:
        kill(proc)
    with RunStore(tmp_path).open(wait=None) as store:
        assert store.is_open
    assert not store.is_open


def test_waiting_writer_gets_the_lock_when_holder_exits(tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": SRC}
    proc = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
    t0 = time.monotonic()
    killer = subprocess.Popen(["sh", "-c", f"sleep 0.3; kill -9 {proc.pid}"])
    with RunStore(tmp_path).open(wait=10) as store:
        assert store.is_open
        assert proc.wait(timeout=10) == -signal.SIGKILL
    assert 0.25 <= time.monotonic() - t0 < 5
    killer.wait(timeout=5)


def test_same_process_second_store_is_refused(tmp_path) -> None:
    with RunStore(tmp_path).open():
        with pytest.raises(StoreError, match=f"pid {os.getpid()}"):
            RunStore(tmp_path).open()

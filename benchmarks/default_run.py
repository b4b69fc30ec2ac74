"""Benchmark: the default experiment (MLP 256,256, m = 10, 5 + 5 epochs, 60 noise steps).

Prints, in one process:
  - matmul throughput of this machine (FLOP/s of square and layer-shaped fp32 matmuls),
  - the default run's engine time, its floating-point operations (counted by
    torch.utils.flop_counter on a separate pass) and achieved FLOP/s as a fraction of matmul,
  - the start-up of a fresh process on its own: interpreter, the imports `sublim run` makes and
    the bundled MNIST read (everything before the engine starts; the interpreter's exit, which
    comes after the run, is printed apart),
  - the cost of the teacher-student CKA/RSA columns: the time of the stages they touch (the
    evaluations before and after student training) with `similarity_samples` at its default
    against 0 (off), alternated, best of 5 each, as a share of the engine time (whole runs
    differ by more than that from one to the next on a shared machine),
  - the wall time and peak RSS of the full CLI (`sublim run --quiet`) in a fresh process.

Targets on the 2-core reference CPU: start-up <= 1.5 s, CLI wall <= 8 s, >= 60 % of matmul
FLOP/s, RSS <= 600 MB, CKA/RSA columns <= 5 % of the engine time.
Usage: python benchmarks/default_run.py [--repeats N] [--skip-cli]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from sublim import ExperimentConfig
from sublim.engine import load_data, run
from sublim.engine.run import finish, prepare
from sublim.engine.teacher import train_teacher_stage


def matmul_flops(seconds: float = 1.0) -> float:
    """Best fp32 matmul FLOP/s over square 2048 and the default run's layer shapes."""
    best = 0.0
    for m, k, n in ((2048, 2048, 2048), (1024, 784, 256), (1000, 256, 784), (784, 1024, 256)):
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 4:
            a @ b
            reps += 1
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - start))
    return best


def count_flops(config: ExperimentConfig) -> int:
    """Floating-point operations of one run, as executed (forward and backward matmuls)."""
    counter = FlopCounterMode(display=False)
    with counter:
        run(config)
    return counter.get_total_flops()


def cli_wall() -> tuple[float, float]:
    """Wall seconds and peak RSS (MB) of `sublim run --quiet` in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "sublim", "run", "--quiet", "--device", "cpu", "--outdir", out],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return wall, rss


def similarity_cost(config: ExperimentConfig, repeats: int = 5) -> tuple[float, float]:
    """Best seconds of the student stage's evaluations (`prepare` + `finish`, which take the
    CKA/RSA summaries) with the config's `similarity_samples` and with 0."""
    data, device = load_data(config), torch.device("cpu")
    teacher = train_teacher_stage(config, data, device)
    best = {config.similarity_samples: float("inf"), 0: float("inf")}
    for _ in range(repeats):
        for samples in best:
            c = config.replace(similarity_samples=samples)
            start = time.perf_counter()
            p = prepare(c, data, device, teacher)
            finish(p, c, p.student, p.teacher, 0.0, start)
            best[samples] = min(best[samples], time.perf_counter() - start)
    return best[config.similarity_samples], best[0]


STARTUP = """
import sys
from sublim.cli.main import build_parser
from sublim.cli.run import config_from_args
ns = build_parser().parse_args(["run", "--device", "cpu", "--quiet"])
config = config_from_args(ns)
from sublim.engine import load_data, resolve_device, run  # what cmd_run imports
resolve_device(config.device)
load_data(config)
import time
print(time.time())
"""


def startup_wall(repeats: int = 3) -> tuple[float, float]:
    """Best wall time of a fresh interpreter doing everything `sublim run` does before the
    engine starts (imports, flag parsing, device check and the data read), from the spawn to
    the data in memory; and the best wall time of the whole process, whose exit (the
    interpreter's teardown of torch's modules, ~0.4 s here) comes after any run."""
    best, whole = float("inf"), float("inf")
    for _ in range(repeats):
        start, clock = time.time(), time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-c", STARTUP], check=True, capture_output=True, text=True
        )
        whole = min(whole, time.perf_counter() - clock)
        best = min(best, float(out.stdout.split()[-1]) - start)
    return best, whole


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2, help="timed engine runs (best kept)")
    parser.add_argument("--skip-cli", action="store_true", help="skip the fresh-process CLI run")
    args = parser.parse_args()
    config = ExperimentConfig(device="cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus")
    load_data(config)
    peak = matmul_flops()
    print(f"matmul throughput: {peak / 1e9:.1f} GFLOP/s")
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        record = run(config)
        times.append(time.perf_counter() - start)
    engine = min(times)
    flops = count_flops(config)
    achieved = flops / engine
    r = record.run
    print(
        f"default run: engine {engine:.2f} s (runs: {', '.join(f'{t:.2f}' for t in times)}), "
        f"teacher acc {r['teacher_final_acc']:.4f}, student acc {r['student_final_acc']:.4f}"
    )
    with_, without = similarity_cost(config)
    print(
        f"CKA/RSA columns ({config.similarity_samples} test images): evaluations "
        f"{with_:.3f} s with, {without:.3f} s without: +{with_ - without:.3f} s = "
        f"{100 * (with_ - without) / engine:.1f} % of the engine time"
    )
    print(f"flops: {flops / 1e12:.3f} TFLOP counted")
    print(f"achieved: {achieved / 1e9:.1f} GFLOP/s = {100 * achieved / peak:.0f} % of matmul")
    if not args.skip_cli:
        start, whole = startup_wall()
        print(f"start-up (fresh interpreter, imports, flags, data read): {start:.2f} s")
        print(f"  the same process with its exit (interpreter teardown): {whole:.2f} s")
        print(f"in-process time of the run (engine): {engine:.2f} s")
        wall, rss = cli_wall()
        print(f"cli wall (fresh process, incl. imports and data load): {wall:.2f} s")
        print(f"cli peak RSS: {rss:.0f} MB")


if __name__ == "__main__":
    main()

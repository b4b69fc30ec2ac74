"""Benchmark: what `--track` adds to each run of a sweep, per backend.

One real run record (a tiny run on the bundled MNIST) is copied N times with fresh run ids and
handed to `RunsTracker` as `execute_sweep` does (a task's records at a time, buffered flushes,
close at the end), so the time is the driver's whole tracking cost: building parameters and
metrics, and writing them (TensorBoard: one event file per run with HParams; MLflow: a child run
per record under the sweep's parent, in its default SQLite store). Printed: ms per run and the
share of a run's time in the paper's 16,260-run sweep (21.5 h projected on the 2-core reference
CPU, docs/explanation/performance.md; target: at most 5 %) and in figure 2 (96 s per 36 runs).
Usage: python benchmarks/tracking_overhead.py [--runs 500] [--stack 36]
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
import uuid
from pathlib import Path

from sublim import ExperimentConfig
from sublim.engine import run
from sublim.tracking import RunsTracker, TrackSpec, parse_targets

PAPER_SECONDS_PER_RUN = 21.5 * 3600 / 16_260
FIG2_SECONDS_PER_RUN = 96 / 36


def records(n: int) -> list:
    """n copies of one real record, each with its own run id and config hash."""
    config = ExperimentConfig(
        classes=(0, 1), teacher_epochs=1, student_epochs=1, noise_steps=2, device="cpu"
    )
    base = run(config)
    out = []
    for i in range(n):
        r = copy.deepcopy(base)
        r.run["run_id"] = f"bench-{uuid.uuid4().hex[:10]}"
        r.config["config_hash"] = f"{i:016x}"
        r.run["student_final_acc"] = 0.5 + i / (2 * n)
        out.append(r)
    return out


def measure(target: str, recs: list, stack: int, warm_store: bool) -> float:
    """Seconds per run of tracking `recs` to `target`, fed `stack` records at a time."""
    with tempfile.TemporaryDirectory() as out:
        targets = parse_targets([target.replace("{out}", out)])
        spec = TrackSpec.make(targets, out, "bench")
        assert spec is not None
        if warm_store:  # MLflow creates its SQLite schema once per store (~7 s): not per run
            RunsTracker(spec, out, parent=False).close()
        start = time.perf_counter()
        tracker = RunsTracker(spec, out)
        for i in range(0, len(recs), stack):
            tracker.log(recs[i : i + stack])
        tracker.close()
        elapsed = time.perf_counter() - start
        assert Path(out).exists()
    return elapsed / len(recs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=500)
    parser.add_argument("--stack", type=int, default=36, help="records per finished task")
    args = parser.parse_args()
    recs = records(args.runs)
    print(f"{args.runs} runs, {len(recs[0].config['effective_config'])} parameters each")
    for name, target in (("tensorboard", "tensorboard:{out}/tb"), ("mlflow (sqlite)", "mlflow")):
        per_run = measure(target, recs, args.stack, warm_store=name.startswith("mlflow"))
        print(
            f"{name:16s} {1000 * per_run:7.2f} ms/run | paper sweep "
            f"{100 * per_run / PAPER_SECONDS_PER_RUN:.2f} % of {PAPER_SECONDS_PER_RUN:.2f} s/run, "
            f"+{per_run * 16_260 / 60:.1f} min over 16,260 runs | figure 2 "
            f"{100 * per_run / FIG2_SECONDS_PER_RUN:.2f} % of {FIG2_SECONDS_PER_RUN:.2f} s/run"
        )


if __name__ == "__main__":
    main()

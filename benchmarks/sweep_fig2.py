"""Benchmark: the figure-2 sweep for one seed (36 runs: 6 m x 6 init conditions).

Prints wall time, runs per minute, peak RSS and the projected time of the full 720-run figure
(20 seeds; each seed's runs share one teacher, so a seed is the unit of work).
Target on the 2-core reference CPU: full figure 2 projected at most 40 minutes (the reference
runner: about 6.5 hours). Usage: python benchmarks/sweep_fig2.py [--seed 0] [--executor inline]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

from sublim.store import RunStore
from sublim.sweep.executors import make_executor
from sublim.sweep.runner import execute_sweep, plan_sweep
from sublim.sweep.spec import load_spec

SPEC = Path(__file__).resolve().parents[1] / "figures" / "fig2_init_conditions.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--executor", default="inline")
    args = parser.parse_args()
    spec = load_spec(SPEC)
    with tempfile.TemporaryDirectory() as out:
        store = RunStore(out, append_global=True)
        plan = plan_sweep(spec, out, store, seeds=(args.seed,))
        executor = make_executor(args.executor)
        start = time.perf_counter()
        with store.open():
            written = execute_sweep(plan, store, executor, progress=False)
        wall = time.perf_counter() - start
        executor.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    full = wall * len(spec.seeds)
    print(
        f"figure 2, seed {args.seed}: {written} runs in {wall:.1f} s ({60 * written / wall:.1f} runs/min)"
    )
    print(f"peak RSS: {rss:.0f} MB")
    print(
        f"projected full figure 2 ({spec.count()} runs, {len(spec.seeds)} seeds): {full / 60:.1f} min"
    )
    print(
        f"reference runner (27 s + 10 ms x 300 noise steps per run): {spec.count() * 30 / 3600:.1f} h"
    )


if __name__ == "__main__":
    main()

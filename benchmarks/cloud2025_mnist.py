"""The cloud2025-mnist preset over 10 seeds: does sublim reproduce the published numbers?

Published (Cloud et al., 2025, MNIST; reruns of the ghost-logit notebook): teacher about 94 %,
student sharing the teacher's init above 50 % (reruns about 54 %), cross-model control (student
from another init) near chance (about 12 %). Prints mean [95 % bootstrap CI] per condition.

    .venv/bin/python benchmarks/cloud2025_mnist.py [--seeds 10] [--outdir DIR]
"""

from __future__ import annotations

import argparse
import time

import pandas as pd

from sublim import ExperimentConfig, run
from sublim.analysis import summarize
from sublim.config.presets import PRESETS
from sublim.store import RunStore

CONDITIONS = {"shared_init": "all:A", "cross_model": "all:B"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--outdir", default=None, help="also write the runs here")
    args = parser.parse_args()
    base = ExperimentConfig.from_dict(dict(PRESETS["cloud2025-mnist"]))
    rows = []
    started = time.perf_counter()
    for seed in range(args.seeds):
        for condition, init in CONDITIONS.items():
            config = base.replace(
                seed=seed, student_init=init, condition=condition, sweep_name="cloud2025_mnist"
            )
            record = run(config)
            if args.outdir:
                with RunStore(args.outdir).open(wait=60) as store:
                    store.write(record)
            rows.append({"condition": condition, **record.run})
            r = record.run
            print(
                f"seed {seed} {condition:11s} teacher {r['teacher_final_acc']:.4f} "
                f"student {r['student_final_acc']:.4f} ({r['runtime_seconds']:.1f} s)",
                flush=True,
            )
    table = summarize(
        pd.DataFrame(rows),
        by=["condition"],
        metrics=["teacher_final_acc", "student_final_acc"],
    )
    print(f"\n{len(rows)} runs in {time.perf_counter() - started:.0f} s")
    for row in table.itertuples():
        print(
            f"{row.condition:11s} {row.metric:17s} mean {row.mean:.4f} "
            f"[{row.ci_low:.4f}, {row.ci_high:.4f}] std {row.std:.4f} n {row.n}"
        )


if __name__ == "__main__":
    main()

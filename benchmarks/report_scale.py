"""How long `sublim report` takes on a paper-sized sweep: the figure-4 grid, 20 x 20 x 20 seeds.

Writes a synthetic 8,000-run result directory with the real RunStore (accuracies follow a known
surface plus noise; 32 layer-metric rows per run), then times loading, summarising with 10,000
bootstrap resamples per group, and drawing every figure plus the HTML report.

    .venv/bin/python benchmarks/report_scale.py [--seeds 20] [--keep DIR]
"""

from __future__ import annotations

import argparse
import math
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import synthetic_results as sr  # noqa: E402

from sublim.analysis import load, summarize  # noqa: E402
from sublim.analysis.report import ReportOptions, build_report  # noqa: E402

VALUES = (1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512, 724, 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--keep", default=None, help="write the synthetic results here")
    args = parser.parse_args()
    root = Path(args.keep or tempfile.mkdtemp(prefix="sublim-report-bench-"))

    def acc(row: dict, rng: object) -> float:
        return min(0.96, 0.1 + 0.04 * math.log2(row["m"] * row["noise_steps"])) + rng.gauss(0, 0.02)

    t = time.perf_counter()
    points = [{"m": m, "noise_steps": n} for m in VALUES for n in VALUES]
    n = sr.write_sweep(root, "fig4_m_by_noise_steps", points, range(args.seeds), acc)
    print(f"wrote {n} synthetic runs in {time.perf_counter() - t:.1f} s -> {root}")

    t = time.perf_counter()
    runs = load(root)
    layer = load(root, "layer_metrics")
    print(f"load: {len(runs)} runs + {len(layer)} layer rows in {time.perf_counter() - t:.2f} s")

    t = time.perf_counter()
    table = summarize(runs)
    print(
        f"summarize: {len(table)} group x metric rows (10,000 resamples each) in "
        f"{time.perf_counter() - t:.2f} s"
    )

    t = time.perf_counter()
    result = build_report(root, root / "report", ReportOptions(html=True))
    figures = sum(p.suffix == ".png" for p in result.files)
    print(
        f"full report (tables, {figures} figures, HTML): {time.perf_counter() - t:.2f} s; "
        f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
    )


if __name__ == "__main__":
    main()

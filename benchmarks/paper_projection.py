"""Benchmark: projected time of the whole paper (all figure specs) from a sample of their work.

For each spec in figures/, all runs are planned exactly as `sublim sweep` plans them (distinct
teachers, stacks across seeds, shared trajectories). A sample of the teachers is trained in
full; a sample of the stacks (always the costliest) is run twice with shortened trajectories
(on untrained stand-in teachers: the student stage costs the same) to fit time = fixed + per
step, extrapolated to the full step count. All other teachers and stacks are projected from the
sample through cost proxies (teacher: epochs x samples x parameters; stack: steps x stacked
parameters, plus a per-run cost). Target on the 2-core reference CPU: the whole paper (16,260 runs) in at most 24 hours
(the reference runner: about 7 days).
Usage: python benchmarks/paper_projection.py [--specs fig2,fig5] [--sample 2] [--steps 30,90]
"""

from __future__ import annotations

import argparse
import random
import resource
import tempfile
import time
from pathlib import Path

import torch

from sublim.config import ExperimentConfig
from sublim.data.idx import write_idx
from sublim.engine import load_data
from sublim.engine.batch import plan_stacks, run_group
from sublim.engine.metrics import snapshot
from sublim.engine.teacher import TeacherState, teacher_key, train_teacher_stage
from sublim.errors import DataError
from sublim.models import build_model
from sublim.sweep.spec import load_spec

FIGURES = Path(__file__).resolve().parents[1] / "figures"
EMNIST_BALANCED = (112_800, 18_800, 47)  # train, test, classes


def emnist_stand_in(root: Path) -> Path:
    """Random uint8 files shaped like EMNIST balanced, for timing where the data is missing."""
    g = torch.Generator().manual_seed(0)
    n_train, n_test, k = EMNIST_BALANCED
    for part, n in (("train", n_train), ("test", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), dtype=torch.uint8, generator=g)
        labels = torch.randint(0, k, (n,), dtype=torch.uint8, generator=g)
        write_idx(root / f"emnist-balanced-{part}-images-idx3-ubyte.gz", images, compress=True)
        write_idx(root / f"emnist-balanced-{part}-labels-idx1-ubyte.gz", labels, compress=True)
    return root


def _params(dims: list[int]) -> int:
    return sum(a * b + b for a, b in zip(dims[:-1], dims[1:], strict=True))


def teacher_proxy(c: ExperimentConfig, train_size: int) -> float:
    width = [*c.teacher_hidden_dims] if c.teacher_type == "mlp" else [4096, 256]
    return c.teacher_epochs * train_size * _params([784, *width, c.num_classes])


def stack_proxy(stack: list[ExperimentConfig]) -> tuple[float, int, int]:
    """(steps x stacked parameters, runs, steps) of one stack."""
    slots: dict[str, ExperimentConfig] = {}
    for c in stack:
        slots.setdefault(str(c.m) + c.student_init + str(c.perturb), c)
    steps = max(c.noise_steps * c.student_epochs for c in stack)
    width = [*stack[0].student_hidden_dims] if stack[0].student_type == "mlp" else [4096, 256]
    size = sum(_params([784, *width, c.m]) for c in slots.values())
    return float(steps * size * stack[0].noise_bsize), len(stack), steps


def shortened(stack: list[ExperimentConfig], steps: int) -> list[ExperimentConfig]:
    """The stack with every run's trajectory scaled so that the longest has `steps` steps."""
    total = max(c.noise_steps * c.student_epochs for c in stack)
    f = min(1.0, steps / total)
    return [
        c.replace(noise_steps=max(1, round(c.noise_steps * c.student_epochs * f)), student_epochs=1)
        for c in stack
    ]


def stand_in_teacher(c: ExperimentConfig) -> TeacherState:
    """An untrained teacher under the right key: the student stage costs the same with it."""
    net = build_model(c, "teacher")
    state = {k: v for k, v in net.state_dict().items() if ".aux_head." not in k}
    snap = {k: v for k, v in snapshot(net).items() if k != "aux_head"}
    metrics = dict.fromkeys(
        ("teacher_init_acc", "teacher_init_class_loss", "teacher_train_loss_last"), 0.0
    )
    return TeacherState(teacher_key(c), state, snap, metrics, [], False)


def project_spec(
    path: Path, sample: int, steps: tuple[int, int], rng: random.Random, emnist_dir: Path | None
) -> dict:
    """Projected hours of one spec, planned as `sublim sweep` would plan it."""
    spec = load_spec(path)
    configs = [p.config for p in spec.points()]
    if emnist_dir is not None:
        configs = [
            c.replace(data_dir=str(emnist_dir)) if c.dataset == "emnist" else c for c in configs
        ]
    first_of: dict[str, ExperimentConfig] = {}
    for c in configs:
        first_of.setdefault(teacher_key(c), c)
    device = torch.device("cpu")
    # teachers: full training of a sample, projected to all through the proxy
    keys = list(first_of)
    t_time = t_proxy = 0.0
    for key in rng.sample(keys, min(sample, len(keys))):
        c = first_of[key]
        data = load_data(c)
        start = time.perf_counter()
        train_teacher_stage(c, data, device)
        t_time += time.perf_counter() - start
        t_proxy += teacher_proxy(c, data.train_x.shape[0])
    all_teachers = sum(teacher_proxy(c, load_data(c).train_x.shape[0]) for c in first_of.values())
    teachers_s = t_time / t_proxy * all_teachers
    # stacks: a sample (always with the costliest) timed at two shortened lengths
    stacks = plan_stacks(configs)
    costs = [stack_proxy(s) for s in stacks]
    biggest = max(range(len(stacks)), key=lambda i: costs[i][0])
    others = [i for i in range(len(stacks)) if i != biggest]
    chosen = [biggest, *rng.sample(others, min(sample, len(stacks)) - 1)]
    unit_s = run_s = 0.0
    for i in chosen:
        stack = stacks[i]
        teachers = {teacher_key(c): stand_in_teacher(c) for c in stack}
        times = []
        for n in steps:
            short = shortened(stack, n)
            start = time.perf_counter()
            run_group(short, teachers)
            times.append(time.perf_counter() - start)
        n1, n2 = (min(n, costs[i][2]) for n in steps)
        per_step = max(0.0, (times[1] - times[0]) / (n2 - n1)) if n2 > n1 else 0.0
        fixed = max(0.0, times[0] - per_step * n1)
        unit_s += per_step * costs[i][2] / costs[i][0] / len(chosen)
        run_s += fixed / costs[i][1] / len(chosen)
    students_s = sum(unit_s * p + run_s * n for p, n, _ in costs)
    return {
        "spec": spec.name,
        "runs": spec.count(),
        "teachers": len(first_of),
        "stacks": len(stacks),
        "teacher_hours": teachers_s / 3600,
        "hours": (teachers_s + students_s) / 3600,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--specs", default="", help="comma-separated name prefixes (default: all)")
    parser.add_argument("--sample", type=int, default=2, help="teachers and stacks timed per spec")
    parser.add_argument("--steps", default="30,90", help="two shortened trajectory lengths")
    args = parser.parse_args()
    steps = tuple(int(s) for s in args.steps.split(","))
    rng = random.Random(0)
    paths = sorted(FIGURES.glob("*.toml"))
    if args.specs:
        paths = [p for p in paths if any(p.stem.startswith(s) for s in args.specs.split(","))]
    total_h, total_runs = 0.0, 0
    start = time.perf_counter()
    emnist_dir = None
    try:
        load_data(ExperimentConfig(dataset="emnist"))
    except DataError:
        emnist_dir = emnist_stand_in(Path(tempfile.mkdtemp(prefix="sublim-emnist-")))
        print(f"EMNIST not found: timing EMNIST runs on random stand-in files ({emnist_dir})")
    for path in paths:
        r = project_spec(path, args.sample, steps, rng, emnist_dir)
        total_h += r["hours"]
        total_runs += r["runs"]
        print(
            f"{r['spec']:30s} {r['runs']:5d} runs {r['teachers']:5d} teachers "
            f"{r['stacks']:4d} stacks -> {r['hours']:6.2f} h "
            f"(teachers {r['teacher_hours']:.2f} h)",
            flush=True,
        )
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"whole paper: {total_runs} runs projected at {total_h:.1f} h on this machine")
    print(f"(benchmark wall {time.perf_counter() - start:.0f} s, peak RSS {rss:.0f} MB)")


if __name__ == "__main__":
    main()

"""Benchmark: convolutional training on the CPU, with and without the allocator tuning.

For the figure-3 CNN student (MLP 3x256 teacher -> CNN student of
figures/fig3_mlp_teacher_cnn_student.toml, m = 10, Perlin noise, batch 1000) and for a resnet20
KD step (resnet110 teacher, logit KD, batch 128, SGD), each in a fresh process with glibc's
default thresholds ("before", `engine.alloc.disable_tuning`; the KD step in NCHW) and with
`engine.alloc.tune_allocator` ("after"; the KD step channels-last as `sublim kd` runs on the CPU,
and in NCHW to show the allocator's share alone), prints: ms per step (best of the repeats, and
their range), GFLOP/s (FLOPs counted by torch.utils.flop_counter, forward and backward as
executed), minor page faults per step
(getrusage ru_minflt) and the time of one full test-set evaluation. Then, with the tuning: the
whole figure-3 run (`engine.run`, 5 x 60 steps) in a fresh process with its peak RSS, and the
projected hours of the whole figure-3 MLP -> CNN spec (benchmarks/paper_projection.py's method:
one teacher trained, one stack timed at two shortened lengths, extrapolated to all).

Targets on the 2-core reference CPU: CNN step >= 90 GFLOP/s, <= 1,000 faults per step after
warm-up, the whole run >= 3x faster than the reference runner (382 s), peak RSS <= 925 MB.

    .venv/bin/python benchmarks/cnn_student.py [--steps 8] [--repeats 3] [--skip-run] [--runs 1]
        [--skip-projection] [--skip-before] [--stack]

CPU time per step is printed beside the wall time: on a shared machine it varies less.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sublim.config import ExperimentConfig
from sublim.engine import alloc, load_data, run
from sublim.engine.train import Normalizer, evaluate, norm_constants, train_student
from sublim.models import build_model
from sublim.sweep.spec import load_spec

FIGURES = Path(__file__).resolve().parents[1] / "figures"
SPEC = FIGURES / "fig3_mlp_teacher_cnn_student.toml"
REFERENCE_S = 382.0  # the reference runner's wall time for this run, measured side by side


def fig3_config(m: int = 10, seed: int = 0) -> ExperimentConfig:
    """The figure-3 MLP -> CNN run of one m and seed, on the CPU."""
    points = load_spec(SPEC).points()
    return next(p.config for p in points if p.config.m == m and p.config.seed == seed).replace(
        device="cpu"
    )


def _faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _now() -> tuple[float, int, float]:
    return time.perf_counter(), _faults(), time.process_time()


def _timed(fn, steps: int, repeats: int) -> tuple[list[float], list[float], float]:
    """Wall and CPU seconds per step of `fn(steps)` per repeat, and minor faults per step."""
    times, cpu, f0 = [], [], _faults()
    for _ in range(repeats):
        start, c0 = time.perf_counter(), time.process_time()
        fn(steps)
        times.append((time.perf_counter() - start) / steps)
        cpu.append((time.process_time() - c0) / steps)
    return times, cpu, (_faults() - f0) / (steps * repeats)


def cnn_student(steps: int, repeats: int) -> dict[str, float]:
    """Step time, FLOPs and faults of the engine's student loop on the figure-3 CNN student."""
    config = fig3_config()
    device = torch.device("cpu")
    data = load_data(config)
    norm = Normalizer(*norm_constants(config, data), device)
    noise_norm = norm_constants(config, data) if config.normalize_noise else None
    teacher = build_model(config, "teacher", device)  # untrained: the step costs the same
    student = build_model(config, "student", device)

    counter = FlopCounterMode(display=False)
    with counter:
        train_student(config.replace(noise_steps=1, student_epochs=1), student, teacher, device)
    # one training of 1 + repeats epochs: the first is warm-up, each other one is a repeat
    marks: list[tuple[float, int]] = []
    c = config.replace(noise_steps=steps, student_epochs=repeats + 1)
    train_student(c, student, teacher, device, noise_norm, on_epoch=lambda *_: marks.append(_now()))
    times = [(b[0] - a[0]) / steps for a, b in zip(marks, marks[1:], strict=False)]
    cpu = [(b[2] - a[2]) / steps for a, b in zip(marks, marks[1:], strict=False)]
    faults = (marks[-1][1] - marks[0][1]) / (steps * repeats)
    evaluate(student, data.test_x, data.test_y, norm)
    f0, start = _faults(), time.perf_counter()
    evaluate(student, data.test_x, data.test_y, norm)
    eval_s, eval_faults = time.perf_counter() - start, _faults() - f0
    return {
        "ms": 1e3 * min(times),
        "ms_max": 1e3 * max(times),
        "cpu_ms": 1e3 * min(cpu),
        "gflop": counter.get_total_flops() / 1e9,
        "faults": faults,
        "eval_ms": 1e3 * eval_s,
        "eval_faults": eval_faults,
    }


def kd_step(steps: int, repeats: int, batch: int = 128, last: bool = True) -> dict[str, float]:
    """A resnet110 -> resnet20 logit-KD training step (SGD) on CIFAR-shaped batches; `last`:
    models and batch channels-last, as `sublim kd` runs them on the CPU."""
    from sublim.kd.models import create_model

    gen = torch.Generator().manual_seed(0)
    student = create_model("resnet20", 100, generator=gen)
    teacher = create_model("resnet110", 100, generator=gen).eval().requires_grad_(False)
    x = torch.randn(batch, 3, 32, 32, generator=gen)
    if last:
        student, teacher = (m.to(memory_format=torch.channels_last) for m in (student, teacher))
        x = x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    y = torch.randint(0, 100, (batch,), generator=gen)

    def train(n: int) -> None:
        student.train()
        for _ in range(n):
            s = student(x, ("logits",))["logits"]
            with torch.no_grad():
                t = teacher(x, ("logits",))["logits"]
            kl = F.kl_div(F.log_softmax(s / 4, 1), F.log_softmax(t / 4, 1), log_target=True)
            loss = F.cross_entropy(s, y) + 16 * kl
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    train(3)
    counter = FlopCounterMode(display=False)
    with counter:
        train(1)
    times, cpu, faults = _timed(train, steps, repeats)
    return {
        "ms": 1e3 * min(times),
        "ms_max": 1e3 * max(times),
        "cpu_ms": 1e3 * min(cpu),
        "gflop": counter.get_total_flops() / 1e9,
        "faults": faults,
    }


def stacking(steps: tuple[int, int] = (2, 10)) -> dict[str, float]:
    """ms per model-step of a seed's two figure-3 CNN students (m = 10, 50): stacked with
    grouped convolutions, stacked one model after the other, and as separate runs (wall and
    CPU time, from two trajectory lengths so that the evaluations cancel). On one thread: its
    CPU time is the work done, whatever else the machine runs."""
    torch.set_num_threads(1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paper_projection import stand_in_teacher

    from sublim.engine.batch import run_group
    from sublim.engine.teacher import teacher_key

    configs = [fig3_config(m=10), fig3_config(m=50)]
    load_data(configs[0])
    teachers = {teacher_key(c): stand_in_teacher(c) for c in configs}
    modes = {
        "grouped": lambda cs: run_group(cs, teachers, grouped=True),
        "looped": lambda cs: run_group(cs, teachers, grouped=False),
        "separate": lambda cs: [run(c, teacher_state=teachers[teacher_key(c)]) for c in cs],
    }
    best: dict[tuple[str, str, int], float] = {}
    for _ in range(2):
        for n in steps:
            short = [c.replace(noise_steps=n, student_epochs=1) for c in configs]
            for name, fn in modes.items():
                w0, c0 = time.perf_counter(), time.process_time()
                fn(short)
                for clock, t in (
                    ("ms", time.perf_counter() - w0),
                    ("cpu_ms", time.process_time() - c0),
                ):
                    key = (name, clock, n)
                    best[key] = min(best.get(key, t), t)
    per = 1e3 / ((steps[1] - steps[0]) * len(configs))
    return {
        f"{name}_{clock}": per * (best[(name, clock, steps[1])] - best[(name, clock, steps[0])])
        for name in modes
        for clock in ("ms", "cpu_ms")
    }


def whole_run() -> dict[str, float]:
    """The full figure-3 run (m = 10, seed 0) as `sublim run` would do it, in this process."""
    config = fig3_config()
    start = time.perf_counter()
    record = run(config)
    wall = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"s": wall, "rss_mb": rss, "student_acc": record.run["student_final_acc"]}


def projection() -> dict[str, float]:
    """Projected hours of the whole figure-3 MLP -> CNN spec (paper_projection's method)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from paper_projection import project_spec

    r = project_spec(SPEC, 1, (20, 60), random.Random(0), None)
    return {"hours": r["hours"], "runs": r["runs"], "stacks": r["stacks"]}


def child(what: str, tuned: bool, steps: int, repeats: int) -> dict:
    """One measurement in this (fresh) process."""
    if tuned:
        alloc.tune_allocator()
    else:
        alloc.disable_tuning()
    out: dict = {"tuned": alloc.tuning_applied()}
    if what == "steps":
        out["cnn"] = cnn_student(steps, repeats)
        out["kd"] = kd_step(steps, repeats, last=tuned)  # before: NCHW, as sublim kd ran
        if tuned:
            out["kd_nchw"] = kd_step(steps, repeats, last=False)  # the allocator's share alone
    elif what == "run":
        out["run"] = whole_run()
    elif what == "stack":
        out["stack"] = stacking()
    else:
        out["projection"] = projection()
    return out


def spawn(what: str, tuned: bool, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", what, "--steps", str(args.steps)]
    cmd += ["--repeats", str(args.repeats), "--tuned" if tuned else "--untuned"]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6, help="timed steps per repeat")
    parser.add_argument("--repeats", type=int, default=3, help="repeats (best and worst shown)")
    parser.add_argument("--skip-before", action="store_true", help="only the tuned allocator")
    parser.add_argument("--skip-run", action="store_true", help="skip the whole figure-3 run")
    parser.add_argument(
        "--runs", type=int, default=1, help="whole figure-3 runs, each in a fresh process"
    )
    parser.add_argument("--skip-projection", action="store_true", help="skip the projection")
    parser.add_argument("--stack", action="store_true", help="also time stacked CNN students")
    parser.add_argument(
        "--child", choices=("steps", "run", "stack", "projection"), help=argparse.SUPPRESS
    )
    parser.add_argument("--tuned", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--untuned", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.tuned, args.steps, args.repeats)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for tuned in (False, True) if not args.skip_before else (True,):
        r = spawn("steps", tuned, args)
        label = "after (allocator tuned)" if r["tuned"] else "before (glibc defaults)"
        for name, title in (
            ("cnn", "fig-3 CNN student step, batch 1000"),
            ("kd", "resnet20 KD step, batch 128" + (", channels-last" if r["tuned"] else "")),
            ("kd_nchw", "resnet20 KD step, batch 128, NCHW"),
        ):
            if name not in r:
                continue
            m = r[name]
            line = (
                f"{label:24s} {title}: {m['ms']:.0f} ms/step (range {m['ms']:.0f}-{m['ms_max']:.0f}"
                f", CPU {m['cpu_ms']:.0f} ms), "
                f"{m['gflop'] / m['ms'] * 1e3:.1f} GFLOP/s ({m['gflop']:.1f} GFLOP/step), "
                f"{m['faults']:.0f} minor faults/step"
            )
            if "eval_ms" in m:
                line += f"; test-set evaluation {m['eval_ms']:.0f} ms, {m['eval_faults']} faults"
            print(line, flush=True)
    if args.stack:
        r = spawn("stack", True, args)["stack"]
        print(
            "a seed's two CNN students, per model-step (1 thread): "
            + ", ".join(
                f"{n} {r[n + '_ms']:.0f} ms (CPU {r[n + '_cpu_ms']:.0f} ms)"
                for n in ("grouped", "looped", "separate")
            ),
            flush=True,
        )
    if not args.skip_run:
        runs = []
        for _ in range(args.runs):
            r = spawn("run", True, args)["run"]
            runs.append(r)
            print(
                f"whole fig-3 run (m = 10, seed 0, fresh process): {r['s']:.1f} s, peak RSS "
                f"{r['rss_mb']:.0f} MB, student acc {r['student_acc']:.4f}; reference runner "
                f"{REFERENCE_S:.0f} s -> {REFERENCE_S / r['s']:.2f}x",
                flush=True,
            )
        if len(runs) > 1:
            rss = sorted(r["rss_mb"] for r in runs)
            wall = sorted(r["s"] for r in runs)
            print(
                f"{len(runs)} runs: {wall[0]:.1f}-{wall[-1]:.1f} s, peak RSS "
                f"{rss[0]:.0f}-{rss[-1]:.0f} MB (median {rss[len(rss) // 2]:.0f})"
            )
    if not args.skip_projection:
        r = spawn("projection", True, args)["projection"]
        print(
            f"figures/{SPEC.name}: {r['runs']} runs in {r['stacks']} stacks, projected "
            f"{r['hours']:.2f} h on this machine"
        )


if __name__ == "__main__":
    main()

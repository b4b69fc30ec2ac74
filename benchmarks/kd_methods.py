"""Training throughput of every registered distillation method on the CPU, and its overhead
over plain KD (issue 20, section 4): resnet32x4 -> resnet8x4 and resnet32x4 -> shufflev2 at
batch 64 on 32x32 CIFAR-100-shaped data, plus "none" (the student's CE training alone) as the
floor. Target: every method's step within 1.5x of KD's unless its extra FLOPs say otherwise.

What is timed is sublim's own training step: the configuration is a `KDConfig`, the models and
distiller come from `kd.train.build_models` (teacher randomly initialised: same cost), the
optimizer and learning rate from train.py's helpers, and the steps are `kd.train._epoch` itself
run on random uint8 images held in memory: normalisation, crop + flip augmentation, the teacher
forward, the student forward, the distiller, the backward pass(es) and the optimizer step,
exactly as `sublim kd` trains. `_epoch`'s progress bar is replaced by a clock that stamps each
finished step; after a warm-up epoch, a row's "step ms" is its fastest timed step (the least
disturbed by other jobs on a shared machine) and "cpu ms" its median process CPU time, and KD
is measured again after each pair's rows ("again") to show the machine's drift. On a shared
machine use --threads 1: with two threads on two cores another job's load made steps 2-10x
slower, while one thread's CPU time is nearly immune to it (the verdict then reads "cpu x KD",
else the wall-time "x KD").

CRD and CRD+KD are bound to 50,000 labels (CIFAR-100's training set, 500 per class) so their
memory banks and sampler have their real size, while `_epoch` iterates only over the first
few batches' positions. Methods with an init stage (FT, AB, FSP) get one row per stage (AB's
and FSP's main stage is plain CE). fkd distils the last layer of each stage one-to-one (these
models have no standard layer list). A method that refuses a pair with its defaults (kdsvd's
RepDistiller matrix needs equal channels) gets an "n/a" line with its one-line reason.

FLOPs are counted with torch.utils.flop_counter.FlopCounterMode (matmuls and convolutions):
"GFLOP" over a one-batch `_epoch` (the whole step), "FLOP x KD" its ratio to KD's step, and
"distiller GFLOP" the distiller's own forward + backward on one batch's taps, counted alone
(called as `_epoch` calls it). Verdict for a step over 1.5x KD's: "FLOP-justified" when it is
within 1.5x of what its FLOP ratio predicts (time ratio <= 1.5 x FLOP ratio), else "NOT
FLOP-justified".

    .venv/bin/python benchmarks/kd_methods.py [--threads N] [--steps 6] [--warmup 2]
        [--batch 64] [--pairs resnet8x4,shufflev2] [--methods kd,crd,...] [--quick]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from sublim import seeds
from sublim.data.cifar100 import CIFAR100_MEAN, CIFAR100_STD
from sublim.engine.augment import Augmenter
from sublim.engine.train import Normalizer
from sublim.kd import train
from sublim.kd.config import KDConfig
from sublim.kd.losses import METHODS
from sublim.kd.losses.base import DistillerConfigError
from sublim.kd.models import create_model

TEACHER = "resnet32x4"
STUDENTS = ("resnet8x4", "shufflev2")
TRAIN_SIZE = 50_000  # CIFAR-100's training set: CRD's memory bank rows
MAIN_EPOCH = 30  # a mid-training epoch (DKD's and ReviewKD's warm-ups are over)


@dataclass
class Row:
    """One measured configuration: a method's stage on one teacher -> student pair."""

    method: str
    student: str
    stage: str
    step_s: float  # the fastest timed step (wall): the least disturbed by other jobs
    cpu_s: float  # the median CPU time of a step: with one thread, free of other jobs' load
    gflop: float
    distiller_gflop: float
    batch: int


class StepClock:
    """Stands in for `_epoch`'s tqdm bar: stamps the wall and process CPU time at which each
    step finishes."""

    def __init__(self) -> None:
        self.stamps = [(time.perf_counter(), time.process_time())]

    def update(self, n: int = 1) -> None:
        self.stamps.append((time.perf_counter(), time.process_time()))

    def durations(self, kind: int) -> list[float]:
        """Per step: wall (kind 0) or CPU (kind 1) seconds."""
        return [b[kind] - a[kind] for a, b in zip(self.stamps, self.stamps[1:], strict=False)]


def stage_ends(model: str) -> list[int]:
    """Generalized-layer indices of the last block of each stage ("layerK.i"): fkd's layers."""
    last: dict[str, int] = {}
    for g in create_model(model, 100).layer_table():
        if g.name.startswith("layer"):
            last[g.name.split(".")[0]] = g.index
    return list(last.values())


def make_config(method: str, student: str, batch: int) -> KDConfig:
    """The student run as `sublim kd` would configure it (CIFAR-100, SGD, the method's defaults)."""
    params = {}
    if method == "fkd":
        params = {"student_layers": stage_ends(student), "teacher_layers": stage_ends(TEACHER)}
    return KDConfig(
        role="student",
        dataset="cifar100",
        model=student,
        teacher=TEACHER,
        method=method,
        method_params=params,
        batch_size=batch,
        epochs=240,
    )


def stage_optimizer(config: KDConfig, models: train.Models, stage: str) -> torch.optim.Optimizer:
    """train()'s optimizer for the stage (DOT for kd_dot)."""
    return train._stage_optimizer(config, models, stage)


def measure(method: str, student: str, stage: str, args: argparse.Namespace) -> Row:
    """Step times (fastest, median) and FLOPs of `method`'s `stage`, through `kd.train._epoch`."""
    config = make_config(method, student, args.batch)
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    teacher_weights = create_model(TEACHER, 100, generator=gen).state_dict()
    models = train.build_models(config, cpu, teacher_weights)
    labels = (torch.arange(TRAIN_SIZE) % 100)[torch.randperm(TRAIN_SIZE, generator=gen)]
    if models.distiller is not None:
        models.distiller.bind_data(labels, config.seed)  # CRD: the full-size memory bank
    for m in (models.student, models.teacher, models.distiller):
        if m is not None:  # train() runs channels-last on the CPU
            m.to(memory_format=torch.channels_last)
    norm = Normalizer(CIFAR100_MEAN, CIFAR100_STD, cpu)
    augment = Augmenter(
        config.augmentation, seeds.derive(config.seed, "kd", "augment"), norm.mean, norm.std
    )
    opt = stage_optimizer(config, models, stage)
    lr = train._init_lr(config, models) if stage == "init" else config.lr_at(MAIN_EPOCH)
    train.set_lr(opt, lr)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    epoch = 0 if stage == "init" else config.init_stage + MAIN_EPOCH
    bs = args.batch
    x = torch.randint(0, 256, (args.steps * bs, 3, 32, 32), dtype=torch.uint8, generator=gen)
    y = labels[: x.shape[0]]

    def run(n_steps: int, clock: StepClock) -> None:
        n = n_steps * bs  # positions 0..n-1 of the 50,000 (CRD indexes its bank with them)
        train._epoch(config, models, opt, scaler, norm, augment, x[:n], y[:n], epoch, stage,
                     False, clock)  # fmt: skip

    run(args.warmup, StepClock())
    clock = StepClock()
    run(args.steps, clock)
    with FlopCounterMode(display=False) as counter:
        run(1, StepClock())
    own = distiller_flops(models, stage, norm(x[:bs]), y[:bs], epoch - config.init_stage)
    return Row(
        method,
        student,
        stage,
        min(clock.durations(0)),
        statistics.median(clock.durations(1)),
        counter.get_total_flops() / 1e9,
        own / 1e9,
        bs,
    )


def distiller_flops(
    models: train.Models, stage: str, x: torch.Tensor, y: torch.Tensor, epoch: int
) -> int:
    """The distiller's own forward + backward (to its parameters and the student's taps) on one
    batch's taps, as `_epoch` calls it; the models' passes are not counted."""
    d = models.distiller
    if d is None or (stage == "main" and d.ce_only_main):
        return 0
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        s = train.run_taps(models.student, x, models.student_taps)
        t = train.run_taps(models.teacher, x, models.teacher_taps)  # type: ignore[arg-type]
    s = {k: v.detach().requires_grad_() for k, v in s.items()}
    with FlopCounterMode(display=False) as counter:
        if stage == "init":
            loss = d.init_loss(s, t)
        else:
            where = {"index": torch.arange(len(y)), "step": 0} if d.needs_index else {}
            loss = sum(d(s, t, y, epoch, **where).values())
        loss.backward()  # type: ignore[union-attr]
    return counter.get_total_flops()


def verdict(ratio: float, flop_ratio: float) -> str:
    if ratio <= 1.5:
        return "ok"
    if ratio <= 1.5 * flop_ratio:
        return f"over: FLOP-justified ({flop_ratio:.2f}x KD's FLOPs)"
    return "over: NOT FLOP-justified"


def machine() -> str:
    """CPU model, cores, torch threads and load: the conditions of the figures."""
    model = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    return (
        f"{model}; {os.cpu_count()} cores; torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads; load average {load}"
    )


HEAD = (
    f"{'method':10s} {'pair':24s} {'stage':5s} {'img/s':>6s} {'step ms':>7s} {'cpu ms':>7s} "
    f"{'x KD':>5s} {'cpu x KD':>8s} {'GFLOP':>6s} {'FLOP x KD':>9s} {'distiller GFLOP':>15s}"
    "  verdict"
)


def line(r: Row, kd: Row) -> str:
    """One table row, with its ratios to the pair's KD row; the verdict reads the CPU-time ratio
    with one thread (immune to other jobs), else the wall-time one."""
    ratio, cpu_ratio, flop_ratio = r.step_s / kd.step_s, r.cpu_s / kd.cpu_s, r.gflop / kd.gflop
    judged = cpu_ratio if torch.get_num_threads() == 1 else ratio
    pair = f"{TEACHER} -> {r.student}" if r.method != "none" else f"{r.student} alone (CE)"
    return (
        f"{r.method:10s} {pair:24s} {r.stage:5s} {r.batch / r.step_s:6.1f} "
        f"{1000 * r.step_s:7.0f} {1000 * r.cpu_s:7.0f} {ratio:5.2f} {cpu_ratio:8.2f} "
        f"{r.gflop:6.1f} {flop_ratio:9.2f} {r.distiller_gflop:15.3f}  "
        f"{verdict(judged, flop_ratio)}"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="default: torch's")
    parser.add_argument("--steps", type=int, default=6, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before them")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--pairs", default=",".join(STUDENTS), help="students of resnet32x4")
    parser.add_argument("--methods", default=None, help="default: none + every registered one")
    parser.add_argument("--quick", action="store_true", help="batch 8, 2 steps (tests)")
    args = parser.parse_args(argv)
    if args.quick:
        args.batch, args.steps, args.warmup = 8, 2, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = args.methods.split(",") if args.methods else ["none", *METHODS]
    unknown = sorted(set(methods) - {"none", *METHODS})
    if unknown:
        parser.error(f"unknown methods {unknown}; registered: {', '.join(METHODS)}")
    print(machine())
    print(
        f"batch {args.batch}, {args.steps} timed steps after {args.warmup} warm-up "
        "(fastest wall time, median CPU time)"
    )
    print(HEAD + "\n" + "-" * len(HEAD), flush=True)
    for student in args.pairs.split(","):
        kd = measure("kd", student, "main", args)  # the baseline, measured first
        print(line(kd, kd), flush=True)
        for method in dict.fromkeys(m for m in methods if m != "kd"):
            try:
                init = make_config(method, student, args.batch).init_stage
                for stage in ("init", "main") if init else ("main",):
                    print(line(measure(method, student, stage, args), kd), flush=True)
            except DistillerConfigError as e:  # the method refuses this pair with its defaults
                print(f"{method:10s} {TEACHER + ' -> ' + student:24s} n/a: {e}", flush=True)
        again = measure("kd", student, "main", args)  # drift of the machine over the pair's rows
        again.stage = "again"
        print(line(again, kd), flush=True)


if __name__ == "__main__":
    main()

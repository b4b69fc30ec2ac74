"""KD_wo_CE throughput on this machine, with the paper's recipe (AdamW, batch 128, no
augmentation): resnet9 alone, resnet34 -> resnet9 with the paper's method (fkd, separated head,
1x1 projectors on teacher layers 12-15) and with SemCKD (attention, three-layer projectors, +KD).

Each configuration runs warm-up steps, then timed steps of the real training step (normalise,
teacher forward in eval mode under no_grad up to its deepest distilled layer, student forward and
backward, AdamW). Prints images/s, achieved GFLOP/s (FLOPs counted by torch.utils.flop_counter
as executed), and the cost of each distillation over the teacher's forward plus the student's own
step (the target for the 1x1-projector method is at most 1.3x).

    .venv/bin/python benchmarks/kd_wo_ce.py [--batch 128] [--steps 4] [--device cpu]
        [--layout channels-last|nchw]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from sublim.engine.train import Normalizer
from sublim.kd.losses import combine, create_distiller
from sublim.kd.models import create_model
from sublim.kd.train import model_shapes, run_taps
from sublim.models.net import channels_last

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
SHAPE = (3, 32, 32)
METHODS: dict[str, dict[str, object]] = {
    "ours": {
        "separate_head": True,
        "teacher_layers": [12, 13, 14, 15],
        "student_layers": [1, 2, 3, 4],
    },
    "semckd": {
        "mapping": "attention",
        "projector": "embed",
        "logit_loss": "kd",
        "teacher_layers": [3, 7, 13, 16],
        "student_layers": [1, 2, 3, 4],
    },
}


def _timed(step: Callable[[int], None], args: argparse.Namespace, device: torch.device) -> float:
    """Seconds per step after warm-up (median of the timed steps)."""
    times = []
    for i in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        step(i)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def _flops(step: Callable[[int], None]) -> float:
    with FlopCounterMode(display=False) as counter:
        step(0)
    return float(counter.get_total_flops())


def bench(method: str | None, args: argparse.Namespace, teacher_only: bool = False) -> dict:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    student = create_model("resnet9", 10, generator=gen).to(device)
    teacher = create_model("resnet34", 10, generator=gen).to(device).eval().requires_grad_(False)
    data = torch.randint(0, 256, (args.batch * 4, *SHAPE), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 10, (args.batch * 4,), device=device)
    norm = Normalizer(MEAN, STD, device)
    distiller = None
    if method is not None:
        distiller = create_distiller(
            "fkd",
            model_shapes(student, SHAPE),
            model_shapes(teacher, SHAPE),
            batch_size=args.batch,
            **METHODS[method],
        ).to(device)
    params = list(student.parameters()) + (
        [] if distiller is None else list(distiller.parameters())
    )
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.01)
    last = args.layout == "channels-last"  # as `sublim kd` runs on the CPU
    if last:
        for m in (student, teacher, distiller):
            if m is not None:
                m.to(memory_format=torch.channels_last)
    s_taps = ("logits",) if distiller is None else ("logits", *distiller.student_taps)
    detach = None if distiller is None else distiller.detach_after

    def batch(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randperm(data.shape[0], generator=torch.Generator().manual_seed(i))
        idx = idx[: args.batch].to(device)
        x = norm.take(data, idx)
        return (channels_last(x) if last else x), labels[idx]

    def teacher_step(i: int) -> None:
        x, _ = batch(i)
        with torch.no_grad():
            teacher(x, ("logits",))

    def step(i: int) -> None:
        x, y = batch(i)
        s = run_taps(student, x, s_taps, detach_after=detach)
        losses = {}
        if distiller is not None:
            with torch.no_grad():
                t = run_taps(teacher, x, distiller.teacher_taps)
            losses = distiller(s, t, y)
        loss = combine(F.cross_entropy(s["logits"], y), losses, None)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fn = teacher_step if teacher_only else step
    seconds = _timed(fn, args, device)
    flops = _flops(fn)
    return {
        "seconds": seconds,
        "images_per_s": args.batch / seconds,
        "gflops": flops / seconds / 1e9,
        "flops_per_image": flops / args.batch,
        "extra_parameters": 0 if distiller is None else distiller.extra_parameters(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--layout",
        choices=("channels-last", "nchw"),
        help="memory layout (default: channels-last on the CPU, as `sublim kd` runs, else NCHW)",
    )
    args = parser.parse_args()
    if args.layout is None:
        args.layout = "channels-last" if args.device == "cpu" else "nchw"
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}, "
        f"{args.layout}"
    )
    alone = bench(None, args)
    teacher = bench(None, args, teacher_only=True)
    rows = {
        "resnet9 alone (CE)": alone,
        "resnet34 forward (eval)": teacher,
        "34 -> 9, ours (fkd, 1x1)": bench("ours", args),
        "34 -> 9, SemCKD": bench("semckd", args),
    }
    floor = alone["seconds"] + teacher["seconds"]
    print(
        f"{'configuration':28s} {'img/s':>8s} {'GFLOP/s':>8s} {'GFLOP/img':>10s} "
        f"{'vs teacher fwd + student step':>30s} {'extra params':>13s}"
    )
    for name, r in rows.items():
        ratio = f"{r['seconds'] / floor:.2f}x" if "->" in name else ""
        print(
            f"{name:28s} {r['images_per_s']:8.1f} {r['gflops']:8.1f} "
            f"{r['flops_per_image'] / 1e9:10.3f} {ratio:>30s} {r['extra_parameters']:13,d}"
        )


if __name__ == "__main__":
    main()

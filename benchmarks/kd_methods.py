"""KD throughput on this machine: resnet20 alone, and resnet110 -> resnet20 with every method.

Random CIFAR-shaped uint8 data held in memory; each configuration runs warm-up steps, then
timed steps of the real training step (normalise + crop/flip augmentation, teacher forward,
student forward/backward, SGD). Prints images/s, the overhead of each method relative to plain
KD, the extra parameters each method trains, and the share of time spent outside the models
(data preparation and augmentation).

    .venv/bin/python benchmarks/kd_methods.py [--batch 64] [--steps 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from sublim.engine.augment import Augmenter
from sublim.engine.train import Normalizer
from sublim.kd.losses import METHODS, combine, create_distiller
from sublim.kd.models import create_model
from sublim.kd.train import model_shapes

MEAN, STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


def bench(method: str | None, args: argparse.Namespace) -> dict[str, float]:
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    student = create_model("resnet20", 100, generator=gen).to(device)
    teacher = None if method is None else create_model("resnet110", 100, generator=gen).to(device)
    distiller = None
    s_taps, t_taps = ("logits",), ("logits",)
    if method is not None:
        teacher.eval().requires_grad_(False)
        if method != "none":
            shapes = model_shapes(student, (3, 32, 32)), model_shapes(teacher, (3, 32, 32))
            distiller = create_distiller(method, *shapes).to(device)
            s_taps = tuple(dict.fromkeys(("logits", *distiller.student_taps)))
            t_taps = tuple(dict.fromkeys(("logits", *distiller.teacher_taps)))
    params = list(student.parameters()) + (
        [] if distiller is None else list(distiller.parameters())
    )
    opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=5e-4)
    data = torch.randint(0, 256, (args.batch * 4, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 100, (args.batch * 4,), device=device)
    norm = Normalizer(MEAN, STD, device)
    augment = Augmenter("crop=4,hflip=0.5", 0, MEAN, STD)
    prep = model = 0.0
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        idx = torch.randperm(data.shape[0], device=device)[: args.batch]
        x = augment(norm.take(data, idx), 0, step)
        y = labels[idx]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        s = student(x, s_taps)
        t = None
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x, t_taps)
        ce = F.cross_entropy(s["logits"], y)
        losses = {} if distiller is None else distiller(s, t, y, 30)
        loss = combine(ce, losses, None)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if step >= args.warmup:
            prep += t1 - t0
            model += t2 - t1
    total = prep + model
    return {
        "images_per_s": args.batch * args.steps / total,
        "outside_models": prep / total,
        "extra_parameters": 0 if distiller is None else distiller.extra_parameters(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    rows = {"resnet20 alone": bench(None, args), "110 -> 20, no distill loss": bench("none", args)}
    for method in sorted(set(METHODS) - {"fkd"}):  # fkd: benchmarks/kd_wo_ce.py
        rows[f"110 -> 20, {method}"] = bench(method, args)
    kd = rows["110 -> 20, kd"]["images_per_s"]
    print(
        f"{'configuration':28s} {'img/s':>8s} {'time vs kd':>10s} {'extra params':>13s} "
        f"{'outside models':>15s}"
    )
    for name, r in rows.items():
        print(
            f"{name:28s} {r['images_per_s']:8.1f} {kd / r['images_per_s']:10.2f} "
            f"{r['extra_parameters']:13,d} {100 * r['outside_models']:14.1f}%"
        )


if __name__ == "__main__":
    main()

"""Layer knowledge quality of every generalized layer of resnet34 at 32x32 on 5,000 images.

Random-init resnet34 (10 classes) and synthetic CIFAR-shaped uint8 images (a smooth per-class
pattern plus noise), so it runs anywhere. A = B = 500 per class; K uses N_train = 50,000 as on
CIFAR. Prints seconds per phase (model forward, folding features into Gram matrices, per-layer
statistics), the pass plan, every layer's row and the peak resident memory of the process.

    .venv/bin/python benchmarks/layer_quality.py [--images 5000] [--budget-gb 2.5] [--probe]
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
import torch.nn.functional as F

from sublim.geometry import layer_quality, plan_passes, select_layers
from sublim.kd.models import create_model

MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
COLUMNS = (
    "s",
    "i",
    "e",
    "q",
    "s_corrected",
    "i_corrected",
    "q_corrected",
    "ed",
    "pca90",
    "pca95",
    "twonn",
    "cos_intra",
    "cos_inter",
)


def synthetic_images(n: int, classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 [n, 3, 32, 32]: an upsampled 4x4 colour pattern per class plus pixel noise."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(classes).repeat_interleave(n // classes)
    patterns = F.interpolate(torch.rand(classes, 3, 4, 4, generator=g), size=32, mode="bilinear")
    x = 0.6 * patterns[labels] + 0.4 * torch.rand(len(labels), 3, 32, 32, generator=g)
    return (x * 255).round().to(torch.uint8), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--budget-gb", type=float, default=2.5, help="GiB of features per pass")
    parser.add_argument("--chunk", type=int, default=256)
    parser.add_argument("--probe", action="store_true", help="also the linear-probe accuracy")
    args = parser.parse_args()

    model = create_model("resnet34", 10, generator=torch.Generator().manual_seed(0)).eval()
    for m in model.modules():  # undo the zero-init of residual branches: distinct layers at init
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.ones_(m.weight)
    model = model.to(memory_format=torch.channels_last)
    table = model.layer_table((3, 32, 32))
    layers = [g.index for g in table]
    images, labels = synthetic_images(args.images, 10)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    forward_s = [0.0]
    last: list[list[int]] = [[]]

    def features(x: torch.Tensor, wanted: list[int]) -> dict[int, torch.Tensor]:
        t = time.perf_counter()
        if wanted != last[0]:
            print(f"  {t - start:7.1f} s: pass over layers {wanted}", flush=True)
            last[0] = wanted
        x = ((x.float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
        out = model.forward_layers(x, wanted, stop_after=max(wanted))[0]
        forward_s[0] += time.perf_counter() - t
        return out

    budget = int(args.budget_gb * 2**30)
    start = time.perf_counter()
    dims = {g.index: int(torch.tensor(g.shape).prod()) for g in table}
    n_a = min(args.images, 5000)
    plan = plan_passes(dims, n_a, budget)
    print(
        f"resnet34, {args.images} images, {len(layers)} layers, budget {args.budget_gb} GiB, "
        f"{torch.get_num_threads()} threads"
    )
    print("passes:", [[s.layer for s in p] for p in plan])
    timings: dict[str, float] = {}
    rows = layer_quality(
        features,
        images,
        labels,
        10,
        layers,
        seed=0,
        n_train=50_000,
        budget_bytes=budget,
        chunk=args.chunk,
        linear_probe=args.probe,
        timings=timings,
    )
    total = time.perf_counter() - start
    print(
        "layer  dim    " + " ".join(f"{c:>11}" for c in COLUMNS) + ("  probe" if args.probe else "")
    )
    for r in rows:
        extra = f"  {r['probe_acc']:.3f}" if args.probe else ""
        print(
            f"{r['layer']:>5} {r['dim']:>6} " + " ".join(f"{r[c]:>11.4g}" for c in COLUMNS) + extra
        )
    print("auto:q k=4 ->", select_layers(rows, "q", 4))
    print("auto:q_corrected k=4 ->", select_layers(rows, "q_corrected", 4))
    fold = timings.get("forward_gram", 0.0) - forward_s[0]
    print(
        f"time: total {total:.1f} s = setup {timings.get('setup', 0):.1f} + model forward "
        f"{forward_s[0]:.1f} + Gram folding {fold:.1f} + statistics {timings.get('stats', 0):.1f}"
    )
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(
        f"process CPU time {usage.ru_utime + usage.ru_stime:.1f} s (wall x threads on an idle machine)"
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(f"peak RSS {peak:.2f} GiB")


if __name__ == "__main__":
    main()

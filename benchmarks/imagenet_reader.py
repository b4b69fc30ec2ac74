"""Benchmark: how fast `sublim.data.imagenet` decodes and augments ImageNet JPEGs per CPU worker,
and how many workers one H100 training ResNet18 would need.

Images: a generated folder of JPEGs like ImageNet's typical file (500 x 375 px, quality 90, smooth
colour fields plus grain, about 100 KB like ImageNet's mean file; the mean size is printed), or an existing ImageNet
folder (--root, its train/ split). Printed:

1. per-image cost in this process: open + decode to RGB, the train transform (RandomResizedCrop
   224 + flip), the eval transform (resize 256, centre crop 224), to a uint8 tensor;
2. images per second through `imagenet_loader` (train transform, batch 32, persistent workers)
   with 1 and 2 worker processes (--workers), after a warm-up pass, beside a control: how many
   cores' worth of pure-Python work that many processes get done at once on this machine now
   (on a shared machine the k-worker rate is bounded by it, not by the reader);
3. the demand of one ResNet18 training step at batch 256 on an H100 by FLOP count and the
   workers needed to meet it. ResNet18's forward is 1.82 G multiply-accumulates at 224 px (the
   "1.82 GFLOPs" usually quoted); a training step is ~3 forwards; the GPU's rate counts 2 FLOP
   per multiply-accumulate, so one image costs 3 x 2 x 1.82 = 10.9 GFLOP. The achieved rate is
   an assumption, printed: H100 SXM dense BF16 peak 989 TFLOP/s x 40 % utilisation (--peak,
   --utilisation), ~400 TFLOP/s. With --measure-gpu on a CUDA machine the step is also timed
   (bf16 autocast, channels_last) and the workers needed for the measured rate printed.

Usage: python benchmarks/imagenet_reader.py [--images 512] [--workers 1 2] [--root DIR]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sublim.data.imagenet import ImageNetFolder, eval_image, train_image
from sublim.data.imagenet_loader import imagenet_loader

R18_MACS = 1.82e9  # per 224 px forward
STEP_BATCH = 256


def generate(root: Path, n: int, size: tuple[int, int], quality: int, classes: int = 4) -> None:
    """n JPEGs in root/train/<wnid>/: bicubic-upsampled random colour grids plus grain."""
    rng = np.random.default_rng(0)
    w, h = size
    for i in range(n):
        folder = root / "train" / f"n{i % classes:08d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        field = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
        grain = rng.normal(0, 20, (h, w, 3))
        pixels = np.clip(field + grain, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i:06d}.JPEG", "JPEG", quality=quality)


def per_image_costs(ds: ImageNetFolder, n: int) -> dict[str, float]:
    """Milliseconds per image of each stage, in this process."""
    paths = [ds.path(i) for i in range(min(n, len(ds)))]
    t0 = time.perf_counter()
    images = []
    for p in paths:
        with Image.open(p) as raw:
            images.append(raw.convert("RGB"))
    t1 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    crops = [train_image(im, 224, g) for im in images]
    t2 = time.perf_counter()
    for im in images:
        eval_image(im, 256, 224)
    t3 = time.perf_counter()
    for im in crops:
        torch.from_numpy(np.array(im, dtype=np.uint8)).permute(2, 0, 1)
    t4 = time.perf_counter()
    k = 1000 / len(paths)
    return {
        "open + decode": (t1 - t0) * k,
        "train transform": (t2 - t1) * k,
        "eval transform": (t3 - t2) * k,
        "to tensor": (t4 - t3) * k,
    }


def loader_rate(ds: ImageNetFolder, workers: int, batch: int, passes: int) -> float:
    """Images per second through the loader (train transform) after one warm-up pass."""
    loader = imagenet_loader(ds, batch, seed=0, workers=workers, drop_last=False)
    loader.set_epoch(0)
    for _ in loader:  # warm-up: workers started, files in the page cache
        pass
    count, start = 0, time.perf_counter()
    for epoch in range(1, passes + 1):
        loader.set_epoch(epoch)
        for images, _, _ in loader:
            count += len(images)
    return count / (time.perf_counter() - start)


def gpu_step_rate(batch: int, steps: int = 20) -> float:
    """Measured images/s of resnet18_imagenet training steps (bf16 autocast, channels_last)."""
    from sublim.kd.models import create_model

    model = create_model("resnet18_imagenet", 1000).cuda().to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, 224, 224, device="cuda").to(memory_format=torch.channels_last)
    y = torch.randint(0, 1000, (batch,), device="cuda")
    for i in range(steps + 5):
        if i == 5:
            torch.cuda.synchronize()
            start = time.perf_counter()
        with torch.autocast("cuda", torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x)["logits"], y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def _burn(n: int) -> float:
    start, total = time.perf_counter(), 0
    for i in range(n):
        total += i * i
    return time.perf_counter() - start


def cpu_parallelism(k: int, n: int = 3_000_000) -> float:
    """How many cores' worth of work k processes get done at once here right now (k on an
    idle machine with k free cores): a control for the k-worker loader rate."""
    one = _burn(n)
    with multiprocessing.get_context("fork").Pool(k) as pool:
        start = time.perf_counter()
        pool.map(_burn, [n] * k)
        return k * one / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, help="an ImageNet folder (else JPEGs are generated)")
    ap.add_argument("--images", type=int, default=512, help="generated images (default 512)")
    ap.add_argument("--size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    ap.add_argument("--quality", type=int, default=90)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--passes", type=int, default=2, help="timed passes per worker count")
    ap.add_argument("--peak", type=float, default=989.0, help="GPU dense BF16 TFLOP/s")
    ap.add_argument("--utilisation", type=float, default=0.4, help="assumed share of --peak")
    ap.add_argument("--measure-gpu", action="store_true", help="also time the step on CUDA")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "imagenet"
            generate(root, args.images, tuple(args.size), args.quality)
        ds = ImageNetFolder(root, "train")
        sizes = [ds.path(i).stat().st_size for i in range(min(len(ds), 1000))]
        print(
            f"images: {len(ds)} under {root}/train, mean file {np.mean(sizes) / 1e3:.0f} KB; "
            f"CPU: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
        )
        costs = per_image_costs(ds, 128)
        print("per image, one process: " + ", ".join(f"{k} {v:.2f} ms" for k, v in costs.items()))
        rates = {w: loader_rate(ds, w, args.batch, args.passes) for w in args.workers}
        for w, r in rates.items():
            print(
                f"loader, {w} worker(s): {r:.0f} images/s ({r / w:.0f} per worker); "
                f"control: {w} processes get {cpu_parallelism(w):.2f} cores' work done here now"
            )

    flop_per_image = 3 * 2 * R18_MACS
    achieved = args.peak * args.utilisation * 1e12
    demand = achieved / flop_per_image
    step_ms = STEP_BATCH / demand * 1e3
    print(
        f"ResNet18 training: 3 x 2 x {R18_MACS / 1e9:.2f} G MAC = {flop_per_image / 1e9:.1f} "
        f"GFLOP per image; assumed H100 rate {args.peak:.0f} TFLOP/s dense BF16 peak x "
        f"{args.utilisation:.0%} utilisation = {achieved / 1e12:.0f} TFLOP/s -> batch "
        f"{STEP_BATCH} step {step_ms:.1f} ms, {demand:,.0f} images/s"
    )
    for w, r in rates.items():
        print(
            f"workers needed at the {w}-worker rate, {r / w:.0f} images/s per worker: "
            f"{demand / (r / w):,.0f}"
        )
    per_worker = rates[min(rates)] / min(rates)
    if args.measure_gpu and torch.cuda.is_available():
        measured = gpu_step_rate(STEP_BATCH)
        print(
            f"measured on {torch.cuda.get_device_name()}: {measured:,.0f} images/s "
            f"({measured * flop_per_image / 1e12:.0f} TFLOP/s achieved) -> "
            f"{measured / per_worker:,.0f} workers at the {min(rates)}-worker rate"
        )


if __name__ == "__main__":
    main()

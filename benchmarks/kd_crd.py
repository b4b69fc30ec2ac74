"""CRD's overhead per training step, isolated: one CRD loss + backward + memory update at the
CIFAR-100 scale (N = 50,000 bank rows, K = 16,384 negatives, batch 64, 128-d embeddings,
pooled features 256/256 as resnet32x4 -> resnet8x4) against one plain KD loss step, with the
parts: drawing the negatives (both samplers), scoring + NCE + backward, the momentum update,
and for context a resnet8x4 student's forward + backward at that batch.
`--rd` also times RepDistiller's way of scoring (gathering the B x (K+1) x 128 bank rows).

    .venv/bin/python benchmarks/kd_crd.py [--device cpu] [--repeats 5] [--rd]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from sublim.kd.losses import CRD, KD
from sublim.kd.losses.contrast import nce_loss
from sublim.kd.models import create_model

N, K, B, FEAT, DIM, CLASSES = 50_000, 16_384, 64, 128, 256, 100


def timed(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    """Fastest of `repeats` runs of `fn` after one warm-up run, in seconds (the least disturbed
    by other processes on a shared machine)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rd", action="store_true", help="also time RepDistiller's gather")
    args = parser.parse_args()
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(N) % CLASSES
    labels = labels[torch.randperm(N, generator=gen)]
    f_s = torch.randn(B, DIM, generator=gen).to(device).requires_grad_()
    f_t = torch.randn(B, DIM, generator=gen).to(device)
    logits_s = torch.randn(B, CLASSES, generator=gen).to(device).requires_grad_()
    logits_t = torch.randn(B, CLASSES, generator=gen).to(device)
    index = torch.randperm(N, generator=gen)[:B].to(device)
    shapes = {"pool": (DIM,), "logits": (CLASSES,)}
    crd = {
        neg: CRD(shapes, shapes, negatives=neg).to(device)
        for neg in ("without_replacement", "with_replacement")
    }
    for d in crd.values():
        d.bind_data(labels, seed=0)
    kd = KD(shapes, shapes).to(device)
    step = iter(range(10**9))

    def kd_step() -> None:
        kd({"logits": logits_s}, {"logits": logits_t}, labels[:B])["kd"].backward()

    def crd_step(neg: str) -> Callable[[], None]:
        def run() -> None:
            out = crd[neg](
                {"pool": f_s}, {"pool": f_t}, labels[:B], 0, index=index, step=next(step)
            )
            out["crd"].backward()

        return run

    def sample(neg: str) -> Callable[[], object]:
        return lambda: crd[neg].contrast_indices(index, 0, next(step))

    d = crd["without_replacement"]
    idx = d.contrast_indices(index, 0, 0)
    mem = d.memory

    def score_nce_backward() -> None:
        v_s, v_t = d.embed_s(f_s), d.embed_t(f_t)
        s_s, s_t = mem.scores(v_s, v_t, idx, d.nce_t)
        log_z = mem.z.log()
        (nce_loss(s_s, log_z[0], N) + nce_loss(s_t, log_z[1], N)).backward()

    with torch.no_grad():
        v_s, v_t = d.embed_s(f_s), d.embed_t(f_t)

    rows: list[tuple[str, float]] = [
        ("KD loss + backward (B x 100 logits)", timed(kd_step, args.repeats, device)),
        (
            "CRD step, negatives without replacement",
            timed(crd_step("without_replacement"), args.repeats, device),
        ),
        (
            "CRD step, negatives with replacement",
            timed(crd_step("with_replacement"), args.repeats, device),
        ),
        (
            "  draw B x (K+1), without replacement",
            timed(sample("without_replacement"), args.repeats, device),
        ),
        (
            "  draw B x (K+1), with replacement",
            timed(sample("with_replacement"), args.repeats, device),
        ),
        (
            "  embed + score whole bank + NCE + backward",
            timed(score_nce_backward, args.repeats, device),
        ),
        (
            "  momentum update of the batch's rows",
            timed(lambda: mem.update(index, v_s, v_t, 0.5), args.repeats, device),
        ),
    ]
    student = create_model("resnet8x4", CLASSES).to(device)
    images = torch.randn(B, 3, 32, 32, generator=gen).to(device)

    def student_step() -> None:  # context: what a CRD step is added to
        student(images, ("pool",))["logits"].sum().backward()

    rows.append(
        ("resnet8x4 forward + backward (context)", timed(student_step, args.repeats, device))
    )
    if args.rd:

        def rd_scores() -> None:  # RepDistiller: gather the rows, then a batched matmul
            for bank, v in ((mem.memory_t, v_s), (mem.memory_s, v_t)):
                w = bank.index_select(0, idx.flatten()).view(B, K + 1, FEAT)
                torch.exp(torch.bmm(w, v.view(B, FEAT, 1)) / d.nce_t)

        rows.append(("  RepDistiller's gather + bmm (both sides)", timed(rd_scores, 2, device)))
    print(
        f"CRD at N={N}, K={K}, B={B}, feat {FEAT}, pooled {DIM}/{DIM}, {device}, "
        f"{torch.get_num_threads()} threads (best of {args.repeats})"
    )
    for name, seconds in rows:
        print(f"{name:46s} {seconds * 1e3:9.2f} ms")


if __name__ == "__main__":
    main()

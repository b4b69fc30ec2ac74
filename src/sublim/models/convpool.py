"""A conv layer and its max pool, trained on the CPU a chunk of rows at a time.

For a conv followed by a non-overlapping max pool, the largest buffers of a CNN training step
are the conv's output before the pool and, in the backward, the gradient scattered back to
it: 110 MB each for the figure-3 student's first conv at batch 1000. Both are transient, and
on the CPU they fragment the heap that the allocator tuning (engine.alloc) keeps: a figure-3
run peaked at 825-1,050 MB RSS with whole-batch convs. `conv_max_pool` runs the conv, the pool
and their backward a chunk of rows at a time, so these buffers are one chunk's size
(<= TRAIN_CHUNK_BYTES, or MIN_CHUNK_ROWS rows where one row is larger than a 32nd of that),
and keeps what a whole-batch pass keeps: the input, the pool's indices and its output.

The forward (values and pool indices) and the input gradient are the whole batch's: every
sample is computed as before (bit for bit in the tests and on figure 3's CNN; see
MIN_CHUNK_ROWS). The weight and bias gradients are sums over the batch, here the chunks'
partial sums added in order: equal to the whole batch's up to float rounding (relative ~1e-5),
and deterministic. Per step it costs no time on the reference CPU (figure 3's CNN: conv1
forward 21 ms chunked against 25 ms whole, backward 37 against 36 ms).
"""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

TRAIN_CHUNK_BYTES = 32 << 20  # the largest conv output of one chunk (before the pool)
# oneDNN picks its kernels by batch size and rounds a sample differently in batches of under
# 8 rows (measured): chunks are never cut that small (a chunk holds >= MIN_CHUNK_ROWS / 2).
MIN_CHUNK_ROWS = 32


def _pair(v: Any) -> list[int]:
    return [v, v] if isinstance(v, int) else [int(v[0]), int(v[1])]


def chunk_bounds(
    n: int, row_bytes: int, budget: int | None = None, min_rows: int = MIN_CHUNK_ROWS
) -> list[int] | None:
    """Chunk boundaries [0, ..., n] of a batch of `n` rows of `row_bytes` each; None for one.

    As few chunks as hold at most `budget` bytes (default TRAIN_CHUNK_BYTES) or `min_rows`
    rows, whichever is more, each; their sizes differ by at most one row, so each holds at least
    half that cap. The larger ones come first: a later chunk's buffers then fit in the heap
    space an earlier one freed (figure-3 runs, conv2 in 333 + 333 + 334 rows: peak RSS 731-843
    MB; in 334 + 333 + 333: 674-749 MB)."""
    budget = TRAIN_CHUNK_BYTES if budget is None else budget
    cap = max(min_rows, budget // row_bytes)
    if n <= cap:
        return None
    chunks = -(-n // cap)
    q, r = divmod(n, chunks)
    bounds = [0]
    for j in range(chunks):
        bounds.append(bounds[-1] + q + (j < r))
    return bounds


class _ConvMaxPool(torch.autograd.Function):
    """max_pool2d(conv2d(x)) over row chunks; backward per chunk (see the module docstring)."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        conv: tuple[list[int], list[int], list[int]],
        pool: tuple[Any, Any, Any],
        bounds: list[int],
    ) -> torch.Tensor:
        out = idx = None
        for a, b in pairwise(bounds):
            y = F.conv2d(x[a:b], weight, bias, *conv)
            p, ix = F.max_pool2d(y, *pool, return_indices=True)
            if out is None:
                fmt = (
                    torch.channels_last
                    if not p.is_contiguous() and p.is_contiguous(memory_format=torch.channels_last)
                    else torch.contiguous_format
                )
                size = (x.shape[0], *p.shape[1:])
                out = torch.empty(size, dtype=p.dtype, device=p.device, memory_format=fmt)
                idx = torch.empty(size, dtype=ix.dtype, device=ix.device, memory_format=fmt)
                ctx.conv_size, ctx.fmt = tuple(y.shape[-2:]), fmt
            del y
            out[a:b].copy_(p)
            idx[a:b].copy_(ix)
        ctx.save_for_backward(x, weight, idx)
        ctx.conv, ctx.pool, ctx.bounds, ctx.has_bias = conv, pool, bounds, bias is not None
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        x, weight, idx = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        stride, padding, dilation = ctx.conv
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        mask = [need_x, need_w, need_b and ctx.has_bias]
        dx = torch.empty_like(x) if need_x else None
        dw = db = None
        grad = grad.contiguous(memory_format=ctx.fmt)
        for a, b in pairwise(ctx.bounds):
            gy = F.max_unpool2d(grad[a:b], idx[a:b], *ctx.pool, ctx.conv_size)
            dxi, dwi, dbi = torch.ops.aten.convolution_backward(
                gy, x[a:b], weight, bias_sizes, stride, padding, dilation, False, [0, 0], 1, mask
            )
            del gy
            if dx is not None:
                dx[a:b].copy_(dxi)
            if mask[1]:
                dw = dwi if dw is None else dw.add_(dwi)
            if mask[2]:
                db = dbi if db is None else db.add_(dbi)
        return dx, dw, db, None, None, None


def conv_max_pool(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, entry: dict[str, Any]
) -> torch.Tensor | None:
    """Conv `entry` then its max pool on `x`, chunked (module docstring); None where not used.

    Used on the CPU, in training (autograd on), for a conv with a non-overlapping max pool and
    a ReLU or no activation (the caller applies the ReLU after the pool: they commute), when the
    batch has more rows than one chunk holds (`chunk_bounds`). Elsewhere the whole-batch path
    is as good.
    """
    pool = entry.get("pool")
    if (
        x.device.type != "cpu"
        or pool is None
        or pool["type"] != "max"
        or entry["activation"] not in ("relu", "none")
        or not torch.is_grad_enabled()
        or not (
            x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
        )
    ):
        return None
    kernel, stride = _pair(pool["kernel_size"]), _pair(pool["stride"])
    if stride[0] < kernel[0] or stride[1] < kernel[1]:
        return None  # overlapping windows: their gradients add up, max_unpool2d would not
    conv = (_pair(entry["stride"]), _pair(entry["padding"]), _pair(entry["dilation"]))
    size = []
    for d, n in enumerate(x.shape[-2:]):
        k = (weight.shape[2 + d] - 1) * conv[2][d] + 1
        size.append((n + 2 * conv[1][d] - k) // conv[0][d] + 1)
    bounds = chunk_bounds(x.shape[0], weight.shape[0] * size[0] * size[1] * x.element_size())
    if bounds is None:
        return None
    pool_args = (kernel, stride, _pair(pool["padding"]))
    return _ConvMaxPool.apply(x, weight, bias, conv, pool_args, bounds)

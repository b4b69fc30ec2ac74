"""Chunked conv + max pool for CPU training (models.convpool): the whole batch's forward and
input gradient exactly, its weight gradients to rounding, and no conv buffer over a chunk."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from sublim.config import ExperimentConfig
from sublim.models import build_model, convpool
from sublim.models.net import channels_last, conv_layer

BUDGET = 1024  # bytes: splits the test batches at convpool's floor (37 rows: 19 + 18)


def _entry(pool: dict | None = None, activation: str = "relu", **conv) -> dict:
    entry = {"activation": activation, "stride": 1, "padding": 0, "dilation": 1}
    entry.update(conv)
    if pool is not None:
        entry["pool"] = {"type": "max", "stride": pool["kernel_size"], "padding": 0, **pool}
    return entry


def _close(got: torch.Tensor, want: torch.Tensor) -> None:
    """Equal to float rounding of a sum over the batch: relative to the tensor's scale."""
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def _run(entry, x, w, b, budget, monkeypatch):
    """conv_layer's output and the gradients of a fixed loss, with `budget` bytes per chunk."""
    monkeypatch.setattr(convpool, "TRAIN_CHUNK_BYTES", budget)
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    out = conv_layer(entry, x, w, b)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    (out * g).sum().backward()
    grads = [None if t is None or t.grad is None else t.grad.clone() for t in (x, w, b)]
    return out.detach(), grads


CASES = [  # (conv options, pool, input channels, input size, layout)
    ({"padding": 2}, {"kernel_size": 2}, 1, 28, "cl"),  # figure 3's conv1
    ({}, {"kernel_size": 4}, 3, 15, "cl"),  # 13 -> 3: the last row and column are in no window
    ({"stride": 2, "dilation": 2, "padding": 1}, {"kernel_size": 2, "padding": 1}, 2, 17, "cl"),
    ({"padding": 1}, {"kernel_size": (2, 3), "stride": (2, 3)}, 3, 12, "nchw"),
]


@pytest.mark.parametrize("conv, pool, cin, size, layout", CASES)
@pytest.mark.parametrize("frozen", ["none", "weight", "input"])
def test_chunked_equals_whole_batch(conv, pool, cin, size, layout, frozen, monkeypatch) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(37, cin, size, size, generator=gen)
    x = (channels_last(x) if layout == "cl" else x).requires_grad_(frozen != "input")
    w = (torch.randn(6, cin, 3, 3, generator=gen) * 0.3).requires_grad_(frozen != "weight")
    b = (torch.randn(6, generator=gen) * 0.1).requires_grad_(True)
    entry = _entry(pool, **conv)
    whole, g_whole = _run(entry, x, w, b, 1 << 40, monkeypatch)
    got, g_got = _run(entry, x, w, b, BUDGET, monkeypatch)
    want = F.max_pool2d(
        F.relu(
            F.conv2d(
                x, w, b, conv.get("stride", 1), conv.get("padding", 0), conv.get("dilation", 1)
            )
        ),
        pool["kernel_size"],
        pool.get("stride", pool["kernel_size"]),
        pool.get("padding", 0),
    )
    assert torch.equal(whole, want) and torch.equal(got, want)
    assert got.is_contiguous(memory_format=torch.channels_last) == (layout == "cl")
    gx, gw, gb = g_got
    wx, ww, wb = g_whole
    assert (gx is None) == (frozen == "input") and (gw is None) == (frozen == "weight")
    if gx is not None:
        assert torch.equal(gx, wx)  # per sample: the same computation
    if gw is not None:
        _close(gw, ww)  # the chunks' sums round apart
    _close(gb, wb)


def test_no_bias(monkeypatch) -> None:
    x = channels_last(torch.randn(70, 1, 12, 12, generator=torch.Generator().manual_seed(1)))
    w = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2)).requires_grad_()
    entry = _entry({"kernel_size": 2}, activation="none", padding=1)
    whole, (_, ww, _) = _run(entry, x, w, None, 1 << 40, monkeypatch)
    got, (_, gw, gb) = _run(entry, x, w, None, 4096, monkeypatch)  # chunks of 24, 23 and 23 rows
    assert torch.equal(got, whole) and gb is None
    _close(gw, ww)


class _Largest(TorchDispatchMode):
    """The most elements of any conv output or unpooled gradient made under this mode."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.convolution.default, torch.ops.aten.max_unpool2d.default):
            self.largest = max(self.largest, out.numel())
        return out


def test_no_conv_buffer_is_larger_than_a_chunk(monkeypatch) -> None:
    x = channels_last(torch.randn(100, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    w = (torch.randn(8, 1, 3, 3) * 0.3).requires_grad_()
    entry = _entry({"kernel_size": 2}, padding=2)
    row = 8 * 30 * 30
    monkeypatch.setattr(convpool, "TRAIN_CHUNK_BYTES", 25 * row * 4)
    with _Largest() as mode:
        conv_layer(entry, x, w, None).sum().backward()
    assert mode.largest == 25 * row  # four chunks of 25 rows, forward and backward
    monkeypatch.setattr(convpool, "TRAIN_CHUNK_BYTES", 1 << 40)
    with _Largest() as mode:
        conv_layer(entry, x, w, None).sum().backward()
    assert mode.largest == 100 * row


@pytest.mark.parametrize(
    "entry, grad",
    [
        (_entry({"kernel_size": 2}), False),  # evaluation: no autograd
        (_entry({"kernel_size": 3, "stride": 2}), True),  # overlapping windows
        (_entry({"kernel_size": 2}, activation="tanh"), True),  # not commuting with the pool
        (_entry(None), True),  # no pool
        ({**_entry(None), "pool": {"type": "avg", "kernel_size": 2, "stride": 2}}, True),
    ],
)
def test_whole_batch_where_chunks_do_not_apply(entry, grad, monkeypatch) -> None:
    monkeypatch.setattr(convpool, "TRAIN_CHUNK_BYTES", 1024)
    x = torch.randn(50, 1, 10, 10)
    w = torch.randn(4, 1, 3, 3).requires_grad_()
    with torch.set_grad_enabled(grad):
        assert convpool.conv_max_pool(x, w, None, entry) is None


def test_chunks_are_balanced_within_the_budget() -> None:
    row = 32 * 30 * 30 * 4  # figure 3's conv1 output per sample
    assert convpool.chunk_bounds(1000, row, 32 << 20) == [0, 250, 500, 750, 1000]
    assert convpool.chunk_bounds(291, row, 32 << 20) is None  # 291 rows fit in 32 MiB
    assert convpool.chunk_bounds(100, row, 1) == [0, 25, 50, 75, 100]  # the 32-row floor
    assert convpool.chunk_bounds(5, 10, 25, min_rows=1) == [0, 2, 4, 5]  # <= 2 rows of 10 bytes
    assert convpool.chunk_bounds(1000, 128 * 13 * 13 * 4, 32 << 20) == [0, 334, 667, 1000]  # conv2
    for min_rows, budget in ((1, 64), (32, 1), (32, 2000)):
        for n in range(1, 1100):
            bounds = convpool.chunk_bounds(n, 10, budget, min_rows)
            cap = max(min_rows, budget // 10)
            if n <= cap:
                assert bounds is None
                continue
            sizes = [b - a for a, b in zip(bounds, bounds[1:], strict=False)]
            assert bounds[0] == 0 and bounds[-1] == n and sum(sizes) == n
            assert len(sizes) == -(-n // cap) and max(sizes) <= cap  # as few as the cap allows
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= cap / 2  # never a sliver
            assert sizes == sorted(sizes, reverse=True)  # later chunks fit where earlier ones were


def test_a_cnn_student_trains_chunked_like_whole(monkeypatch) -> None:
    """The whole network: features and aux logits equal, every gradient to rounding."""
    spec = [
        {"name": "conv1", "type": "conv2d", "out_channels": 8, "padding": 2, "pool": "max"},
        {"name": "conv2", "type": "conv2d", "out_channels": 16, "pool": {"kernel_size": 4}},
        {"name": "fc1", "type": "linear", "out_features": 32},
    ]
    cfg = ExperimentConfig(student_type="cnn", student_arch_spec=json.dumps(spec), m=5)
    net = build_model(cfg, "student")
    x = torch.rand(120, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    runs = []
    for budget in (1 << 40, 8 * 30 * 30 * 4 * 31):  # conv1 in 4 chunks, conv2 in 2
        monkeypatch.setattr(convpool, "TRAIN_CHUNK_BYTES", budget)
        net.zero_grad()
        out = net.aux_logits(x)
        out.square().sum().backward()
        runs.append(
            (out.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None])
        )
    (want, want_g), (got, got_g) = runs
    assert torch.equal(got, want)
    for a, b in zip(got_g, want_g, strict=True):
        _close(a, b)

"""Convolutional training on the CPU: allocator tuning, the CNN forward's fast paths, chunked
evaluations (equal to the unchunked computation) on the bundled MNIST."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from sublim.config import ExperimentConfig
from sublim.data.noise import noise_batch
from sublim.engine import alloc, load_data
from sublim.engine.train import Normalizer, aux_mse, eval_chunk, evaluate, norm_constants
from sublim.models import build_model
from sublim.models.net import apply_layer

FIG3_SPEC = [
    {"name": "conv1", "type": "conv2d", "out_channels": 8, "padding": 2, "pool": "max"},
    {"name": "conv2", "type": "conv2d", "out_channels": 16, "pool": {"kernel_size": 4}},
    {"name": "fc1", "type": "linear", "out_features": 32},
]
CNN = ExperimentConfig(
    teacher_hidden_dims=(64, 64),
    student_type="cnn",
    student_arch_spec=json.dumps(FIG3_SPEC),
    m=5,
    eval_noise_batches=2,
    eval_noise_bsize=300,
    noise_dist="perlin",
)


def test_allocator_tuning_is_applied_once_and_reported() -> None:
    first = alloc.tune_allocator()
    assert alloc.tune_allocator() == first == alloc.tuning_applied()
    alloc.disable_tuning()  # too late to change anything in this process: a no-op
    assert alloc.tuning_applied() == first


def _reference_features(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The plain forward: NCHW, activation before pool, nothing in place."""
    flat = False
    for entry, layer in net._steps:
        if entry["type"] == "linear" and not flat:
            x, flat = x.flatten(1), True
        x = F.relu(layer(x))
        pool = entry.get("pool")
        if pool is not None:
            x = F.max_pool2d(x, pool["kernel_size"], pool["stride"], pool["padding"])
    return x if flat else x.flatten(1)


def test_cnn_fast_forward_equals_the_plain_one_with_gradients() -> None:
    net = build_model(CNN, "student")
    x = torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    grads = []
    for fn in (_reference_features, lambda n, xb: n.features(xb)):
        net.zero_grad()
        h = fn(net, x)
        h.square().sum().backward()
        grads.append((h.detach(), [p.grad.clone() for p in net.parameters() if p.grad is not None]))
    (want, want_g), (got, got_g) = grads
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)  # oneDNN's layouts round apart
    for a, b in zip(got_g, want_g, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "kernel, stride, padding, layout",
    [
        (2, 2, 1, "nchw"),
        (2, 2, 0, "cl"),
        (3, 3, 1, "cl"),
        (3, 2, 1, "cl"),
        ((2, 3), (2, 3), 0, "cl"),
    ],
)
def test_relu_after_a_lean_max_pool_is_exact(kernel, stride, padding, layout) -> None:
    """ReLU after the pool, and the pool that keeps only its indices (non-overlapping windows;
    overlapping ones use PyTorch's): values and gradients equal to pool(ReLU(x))."""
    x = torch.randn(8, 4, 9, 10, generator=torch.Generator().manual_seed(1))
    x = x.contiguous(memory_format=torch.channels_last) if layout == "cl" else x
    x.requires_grad_(True)
    pool = {"type": "max", "kernel_size": kernel, "stride": stride, "padding": padding}
    got = apply_layer({"activation": "relu", "pool": pool}, x * 1.0)
    want = F.max_pool2d(F.relu(x), kernel, stride, padding)
    assert torch.equal(got, want)
    g = torch.randn(want.shape, generator=torch.Generator().manual_seed(2))
    g_got = torch.autograd.grad(got, x, g)[0]
    g_want = torch.autograd.grad(want, x, g)[0]
    assert torch.equal(g_got, g_want)
    assert g_got.is_contiguous(memory_format=torch.channels_last) == (layout == "cl")


def test_chunked_evaluation_equals_unchunked() -> None:
    data = load_data(CNN)
    norm = Normalizer(*norm_constants(CNN, data), torch.device("cpu"))
    x, y = data.test_x, data.test_y
    student, teacher = build_model(CNN, "student"), build_model(CNN, "teacher")
    assert 64 <= eval_chunk(student) < x.shape[0]  # the CNN is evaluated in several chunks
    for net in (student, teacher):
        whole = evaluate(net, x, y, norm, chunk=x.shape[0])
        with torch.no_grad():
            logits = net.class_logits(norm(x))  # the unchunked computation, written out
        acc = (logits.argmax(1) == y).sum().item() / x.shape[0]
        loss = F.cross_entropy(logits, y, reduction="sum").double().item() / x.shape[0]
        assert whole == pytest.approx((acc, loss), rel=0, abs=1e-12)
        for chunk in (None, 64, 97, 1000):
            got = evaluate(net, x, y, norm, chunk=chunk)
            # equal here; the tolerance is for BLAS kernels that round rows by batch size
            assert got[0] == whole[0] and got[1] == pytest.approx(whole[1], rel=1e-6)
    dev = torch.device("cpu")
    whole = aux_mse(CNN, student, teacher, dev, "final", chunk=CNN.eval_noise_bsize)
    with torch.no_grad():
        want = 0.0
        for b in range(CNN.eval_noise_batches):
            z = noise_batch(
                CNN.seed, ("eval_noise", "final"), b, "perlin", 300, (1, 28, 28), CNN.perlin_res
            )
            want += F.mse_loss(student.aux_logits(z), teacher.aux_logits(z)).item()
    assert whole == pytest.approx(want / CNN.eval_noise_batches, rel=1e-12)
    for chunk in (None, 64, 128):
        got = aux_mse(CNN, student, teacher, dev, "final", chunk=chunk)
        assert got == pytest.approx(whole, rel=1e-6)

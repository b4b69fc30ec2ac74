"""Init sources, trainability and shapes of the split-head models."""

from __future__ import annotations

import json

import pytest
import torch

from sublim.config import ExperimentConfig
from sublim.engine.train import Normalizer, train_student, train_teacher
from sublim.models import build_model, parameter_counts


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))


def test_source_a_is_shared_by_teacher_and_student() -> None:
    c = ExperimentConfig()
    t, s = build_model(c, "teacher"), build_model(c, "student")
    for name in ("fc1", "fc2", "class_head", "aux_head"):
        assert _same(t.layers[name], s.layers[name])


def test_sources_a_b_random_differ_and_are_seeded() -> None:
    c = ExperimentConfig(student_init="A,B,random,random", teacher_init="A,A,random,A")
    t, s = build_model(c, "teacher"), build_model(c, "student")
    assert _same(t.layers["fc1"], s.layers["fc1"])
    assert not _same(t.layers["fc2"], s.layers["fc2"])  # A vs B
    assert not _same(t.layers["class_head"], s.layers["class_head"])  # random per model
    # same seed -> same weights; other seed -> other weights
    assert _same(s, build_model(c, "student"))
    assert not _same(s, build_model(c.replace(seed=43), "student"))
    # B in the student equals B in a teacher of another config with the same seed
    tb = build_model(ExperimentConfig(teacher_init="all:B"), "teacher")
    assert _same(tb.layers["fc2"], s.layers["fc2"])


def test_a_layer_depends_only_on_name_and_shape() -> None:
    # A student with a different first layer still shares fc2/heads with the teacher.
    c = ExperimentConfig(student_hidden_dims=(64, 256))
    t, s = build_model(c, "teacher"), build_model(c, "student")
    assert t.layers["fc1"].weight.shape != s.layers["fc1"].weight.shape
    assert not _same(t.layers["fc2"], s.layers["fc2"])  # shape differs: 256x256 vs 256x64
    assert _same(t.layers["aux_head"], s.layers["aux_head"])


def test_default_init_statistics_match_pytorch() -> None:
    net = build_model(ExperimentConfig(), "teacher")
    w = net.layers["fc1"].weight
    bound = 1 / 784**0.5  # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= bound
    assert abs(w.std().item() - bound / 3**0.5) < 0.02 * bound


def test_global_rng_is_not_used() -> None:
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    build_model(ExperimentConfig(student_init="all:random"), "student")
    assert torch.equal(before, torch.random.get_rng_state())


def test_parameter_counts_and_trainability() -> None:
    c = ExperimentConfig(student_trainable="fc1:false,class_head:0")
    s = build_model(c, "student")
    total, trainable = parameter_counts(s)
    assert total == 784 * 256 + 256 + 256 * 256 + 256 + 2 * (256 * 10 + 10)
    assert trainable == total - (784 * 256 + 256) - (256 * 10 + 10)


@pytest.fixture(scope="module")
def tiny_data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (512, 1, 28, 28), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (512,), generator=g)
    return x, y


def test_frozen_layers_and_unreached_heads_never_change(tiny_data) -> None:
    c = ExperimentConfig(
        teacher_trainable="fc2:false",
        student_trainable="fc1:false",
        teacher_epochs=1,
        student_epochs=1,
        noise_steps=3,
        noise_bsize=64,
        data_bsize=128,
    )
    t, s = build_model(c, "teacher"), build_model(c, "student")
    t0 = {k: v.clone() for k, v in t.state_dict().items()}
    s0 = {k: v.clone() for k, v in s.state_dict().items()}
    norm = Normalizer((0.1307,), (0.3081,), torch.device("cpu"))
    train_teacher(c, t, *tiny_data, norm)
    train_student(c, s, t, torch.device("cpu"))
    unchanged = lambda a, b, layer: all(  # noqa: E731
        torch.equal(a[f"layers.{layer}.{k}"], b[f"layers.{layer}.{k}"]) for k in ("weight", "bias")
    )
    ts, ss = t.state_dict(), s.state_dict()
    assert unchanged(t0, ts, "fc2") and unchanged(t0, ts, "aux_head")  # frozen; no gradient
    assert not unchanged(t0, ts, "fc1") and not unchanged(t0, ts, "class_head")
    assert unchanged(s0, ss, "fc1") and unchanged(s0, ss, "class_head")  # frozen; no gradient
    assert not unchanged(s0, ss, "fc2") and not unchanged(s0, ss, "aux_head")


@pytest.mark.parametrize("act", ["relu", "gelu", "tanh", "sigmoid", "none"])
def test_cnn_forward_shapes(act: str) -> None:
    spec = [
        {
            "type": "conv",
            "out_channels": 4,
            "kernel_size": 5,
            "stride": 2,
            "activation": act,
            "pool": {"type": "avg", "kernel_size": 3, "stride": 1},
        },
        {
            "type": "conv",
            "out_channels": 6,
            "dilation": 2,
            "padding": 2,
            "pool": {"type": "adaptive_avg", "output_size": [2, 3]},
        },
        {"type": "linear", "out_features": 7, "activation": act},
    ]
    c = ExperimentConfig(student_type="cnn", student_arch_spec=json.dumps(spec), m=5)
    net = build_model(c, "student")
    class_logits, aux = net(torch.randn(3, 1, 28, 28))
    assert class_logits.shape == (3, 10) and aux.shape == (3, 5)
    assert net.layers["fc3"].in_features == 6 * 2 * 3


def test_cnn_without_linear_layers_flattens_for_heads() -> None:
    spec = [{"type": "conv", "out_channels": 3, "pool": {"type": "max", "kernel_size": 4}}]
    c = ExperimentConfig(teacher_type="cnn", teacher_arch_spec=json.dumps(spec))
    net = build_model(c, "teacher")
    assert net.feature_dim == 3 * 6 * 6
    assert net.class_logits(torch.randn(2, 1, 28, 28)).shape == (2, 10)

"""RepDistiller's ShuffleNet V1/V2 and CIFAR ResNet50 (fact sheet 4.1): parameter counts, tap
shapes, features and pre-activation features equal to RepDistiller's forward(is_feat=True,
preact=...) on identical weights, state-dict keys, initialisation, generalized layers, OFD BNs.

The reference numbers below were produced by running RepDistiller's models/ShuffleNetv1.py,
ShuffleNetv2.py and resnetv2.py (b84f547c5db6) in float64 on CPU, with the weights `_filled` sets
on our model copied in by state-dict key (`classifier.` -> `linear.`); in that run every tap agreed
with ours to 3e-15 (train mode) and the key lists (in order) and shapes were identical.
"""

from __future__ import annotations

import hashlib
from functools import cache

import pytest
import torch
from torch import nn

from sublim.cli.main import main
from sublim.kd.models import MODELS, TapNet, create_model, parameter_count

NAMES = ("shufflev1", "shufflev2", "resnet50")


@cache
def _model(name: str) -> TapNet:
    """One default-initialised 100-class model per name in eval mode, shared read-only."""
    torch.manual_seed(0)
    return create_model(name).eval()


def _batch(n: int = 2, size: int = 32, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(5), dtype=dtype)


@torch.no_grad()
def _filled(name: str, seed: int = 1) -> TapNet:
    """A float64 100-class model whose every parameter is drawn from `seed`, in state-dict order:
    He-scaled conv / Linear weights, BN weight 1 + 0.2 z, BN bias and Linear bias 0.2 / 0.1 z."""
    with torch.device("meta"):
        model = MODELS[name](100)
    model.to_empty(device="cpu").double()
    g = torch.Generator().manual_seed(seed)
    for key, p in model.named_parameters():
        z = torch.randn(p.shape, generator=g, dtype=p.dtype)
        if key.endswith("weight") and p.dim() > 1:
            p.copy_(z * (2 / p[0].numel()) ** 0.5)
        elif key.startswith("classifier"):
            p.copy_(0.1 * z)
        else:
            p.copy_(1 + 0.2 * z if key.endswith("weight") else 0.2 * z)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
    return model


def _summary(t: torch.Tensor) -> tuple[float, float, float]:
    """Sum, position-weighted sum (sees permutations, e.g. a channel shuffle) and absolute sum."""
    flat = t.flatten()
    w = torch.arange(flat.numel(), dtype=flat.dtype) / flat.numel()
    return flat.sum().item(), (flat * w).sum().item(), flat.abs().sum().item()


# ------------------------------------------------------------------------------------------------
# Sizes
# ------------------------------------------------------------------------------------------------

COUNTS = {  # RepDistiller's models instantiated: (100 classes, 10 classes)
    "shufflev1": (949_258, 862_768),
    "shufflev2": (1_355_528, 1_263_278),
    "resnet50": (23_705_252, 23_520_842),
}


@pytest.mark.parametrize("name", NAMES)
def test_parameter_counts_equal_repdistillers(name: str) -> None:
    for classes, count in zip((100, 10), COUNTS[name], strict=True):
        with torch.device("meta"):
            assert parameter_count(MODELS[name](classes)) == count


def test_shufflev1_parameters_per_part() -> None:
    model = _model("shufflev1")
    parts = ("layer1", "layer2", "layer3", "classifier")
    counts = [parameter_count(getattr(model, p)) for p in parts]
    assert counts == [38_898, 297_300, 516_840, 96_100]


SHAPES = {  # fact sheet 4.1: RepDistiller's f0, f1.., pooled at 32x32
    "shufflev1": [(24, 32, 32), (240, 16, 16), (480, 8, 8), (960, 4, 4), (960,)],
    "shufflev2": [(24, 32, 32), (116, 16, 16), (232, 8, 8), (464, 4, 4), (1024,)],
    "resnet50": [
        (64, 32, 32),
        (256, 32, 32),
        (512, 16, 16),
        (1024, 8, 8),
        (2048, 4, 4),
        (2048,),
    ],
}


@pytest.mark.parametrize("name", NAMES)
def test_tap_shapes_at_32_and_64_px(name: str) -> None:
    model = _model(name)
    shapes = model.tap_shapes()
    taps = ["stem", *model.feature_taps, "pool"]
    assert [shapes[t] for t in taps] == SHAPES[name]
    assert [shapes[t] for t in model.preact_taps] == SHAPES[name][1:-1]
    big = model.tap_shapes((3, 64, 64))  # global average pool: any size works
    assert [big[t] for t in taps] == [
        s if len(s) == 1 else (s[0], 2 * s[1], 2 * s[2]) for s in SHAPES[name]
    ]


def test_tap_names_and_benchmark_taps() -> None:
    three = tuple(f"stage{k}" for k in (1, 2, 3))
    for name in ("shufflev1", "shufflev2"):
        model = _model(name)
        assert model.tap_names == (
            "stem",
            *(f"{s}{p}" for s in three for p in ("_pre", "")),
            "pool",
        )
        assert model.feature_taps == three
        assert model.preact_taps == tuple(f"{s}_pre" for s in three)
    r50 = _model("resnet50")
    assert r50.feature_taps == (*three, "stage4")
    assert r50.preact_taps == tuple(f"stage{k}_pre" for k in (1, 2, 3, 4))


# ------------------------------------------------------------------------------------------------
# Against RepDistiller: features, pre-activation features, keys, init
# ------------------------------------------------------------------------------------------------

# RepDistiller's outputs on `_filled(name)` in train mode for `_batch(2, 32, float64)` (16 px for
# ResNet50, for speed; RepDistiller's ShuffleNets need 32 px):
# _summary of [f0, f1..fn (preact=False), f1..fn (preact=True), pooled, logits]
REFERENCE: dict[str, list[tuple[float, float, float]]] = {
    "shufflev1": [
        (20493.3740715, 10120.1563871, 20493.3740715),
        (139289.52749, 69634.1620479, 139289.52749),
        (116487.89065, 59521.1011051, 116487.89065),
        (46382.1468039, 24783.0636897, 46382.1468039),
        (114664.518217, 57094.8113318, 163914.536762),
        (107889.575202, 55261.899977, 125086.206098),
        (41362.5479523, 22357.5278896, 51401.7456555),
        (2898.88417524, 1548.20362905, 2898.88417524),
        (-53.2300463179, -32.1728074434, 316.592262897),
    ],
    "shufflev2": [
        (20493.3740715, 10120.1563871, 20493.3740715),
        (24431.5199706, 12270.3908642, 24431.5199706),
        (12002.5901134, 6029.14331198, 12002.5901134),
        (6083.28080823, 3030.91446375, 6083.28080823),
        (13092.6757028, 5266.17743332, 35770.3642383),
        (6002.95754976, 2326.30302935, 18002.2226771),
        (3109.17609964, 1180.62898903, 9057.38551682),
        (830.732537476, 416.300608861, 830.732537476),
        (26.0927378933, 14.6360363162, 89.0846592915),
    ],
    "resnet50": [
        (13177.3728644, 6503.95310597, 13177.3728644),
        (137801.981962, 68644.1421458, 137801.981962),
        (82550.6756648, 41196.905552, 82550.6756648),
        (52216.8658272, 26230.557271, 52216.8658272),
        (17889.7118071, 8969.49890211, 17889.7118071),
        (109978.829966, 54598.3200764, 165625.133958),
        (70226.7436448, 34944.1679499, 94874.6076849),
        (46906.5768287, 23524.7198022, 57527.1548257),
        (14243.2841182, 7101.74452744, 21536.1394959),
        (4472.42795176, 2241.95254373, 4472.42795176),
        (8.59960289449, 6.61405503454, 273.897810929),
    ],
}


@pytest.mark.parametrize("name", NAMES)
def test_features_and_preacts_equal_repdistillers(name: str) -> None:
    model = _filled(name).train()
    with torch.no_grad():
        out = model(_batch(2, 16 if name == "resnet50" else 32, torch.float64))
    taps = ["stem", *model.feature_taps, *model.preact_taps, "pool", "logits"]
    assert len(taps) == len(REFERENCE[name])
    for tap, (total, weighted, absolute) in zip(taps, REFERENCE[name], strict=True):
        got = _summary(out[tap])
        tol = 1e-10 * absolute
        assert abs(got[0] - total) <= tol and abs(got[1] - weighted) <= tol, (tap, got)
        assert got[2] == pytest.approx(absolute, rel=1e-10), tap


# sha256 (first 16 hex digits) of RepDistiller's sorted "key shape" lines, `linear.` renamed
# `classifier.`, and the number of keys
KEYS = {
    "shufflev1": ("9b912ba087573385", 296),
    "shufflev2": ("d3b3d778c340e7f0", 338),
    "resnet50": ("5d92289557f84502", 320),
}


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_are_repdistillers(name: str) -> None:
    with torch.device("meta"):
        state = MODELS[name](100).state_dict()
    lines = "".join(f"{k} {tuple(v.shape)}\n" for k, v in sorted(state.items()))
    assert (hashlib.sha256(lines.encode()).hexdigest()[:16], len(state)) == KEYS[name]
    named = {
        "shufflev1": ["layer1.0.conv1.weight", "layer3.3.bn3.running_var"],
        "shufflev2": ["layer2.0.conv5.weight", "layer3.3.bn3.bias", "conv2.weight", "bn2.bias"],
        "resnet50": ["layer1.0.shortcut.0.weight", "layer4.2.bn3.weight"],
    }[name]
    assert {*named, "classifier.weight", "classifier.bias"} <= set(state)


# RepDistiller's ShuffleNets keep PyTorch's default init; after torch.manual_seed(7) they hold:
# conv1.weight[:3, :, 0, 0].flatten()[:4], layer3[-1].conv3.weight.sum(), linear.bias[:2]
INIT: dict[str, tuple[list[float], float, list[float]]] = {
    "shufflev1": (
        [0.04032507538795471, -0.3477921187877655, 0.18384182453155518, 0.1811612844467163],
        -0.3893470764160156,
        [-0.019201641902327538, 0.004428638145327568],
    ),
    "shufflev2": (
        [0.04032507538795471, -0.3477921187877655, 0.18384182453155518, 0.1811612844467163],
        14.884807586669922,
        [0.0007341504096984863, -0.010667234659194946],
    ),
}


@pytest.mark.parametrize("name", ["shufflev1", "shufflev2"])
def test_shufflenet_init_draws_repdistillers_weights(name: str) -> None:
    state = torch.random.get_rng_state()
    seeded = create_model(name, generator=torch.Generator().manual_seed(7))
    assert torch.equal(state, torch.random.get_rng_state())
    torch.manual_seed(7)
    plain = create_model(name)  # the global RNG, as RepDistiller's constructor
    stem, conv3, bias = INIT[name]
    for model in (seeded, plain):
        torch.testing.assert_close(model.conv1.weight[:3, :, 0, 0].flatten()[:4].tolist(), stem)
        torch.testing.assert_close(model.layer3[-1].conv3.weight.sum().item(), conv3)
        torch.testing.assert_close(model.classifier.bias[:2].tolist(), bias)
    for m in seeded.modules():
        if isinstance(m, nn.Conv2d):  # kaiming-uniform(a = sqrt 5): bound 1 / sqrt(fan_in)
            assert m.weight.abs().max() <= m.weight[0].numel() ** -0.5
        elif isinstance(m, nn.BatchNorm2d):
            assert bool((m.weight == 1).all() and (m.bias == 0).all())


def test_resnet50_init_is_he_fan_out_and_bn_one_zero() -> None:
    model = create_model("resnet50", generator=torch.Generator().manual_seed(3))
    conv = model.layer3[0].conv2  # 3x3, 256 out: std sqrt(2 / (9 * 256))
    assert abs(conv.weight.std().item() - (2 / (9 * 256)) ** 0.5) < 0.002
    assert bool((model.layer4[-1].bn3.weight == 1).all())  # no zero-init of the last BN
    bound = 2048**-0.5  # PyTorch's default Linear
    assert model.classifier.bias.abs().max() <= bound and model.classifier.bias.abs().max() > 0


# ------------------------------------------------------------------------------------------------
# Generalized layers, OFD BNs, gradients, CLI
# ------------------------------------------------------------------------------------------------


def test_layer_tables() -> None:
    v1 = _model("shufflev1").layer_table()
    blocks_v1 = [f"layer{k}.{i}" for k, n in ((1, 4), (2, 8), (3, 4)) for i in range(n)]
    assert [g.name for g in v1] == ["relu", *blocks_v1, "flatten"]
    v2 = _model("shufflev2").layer_table()
    assert [g.name for g in v2] == ["relu", *blocks_v1, "relu2", "flatten"]
    assert v2[-2].shape == (1024, 4, 4)
    r50 = _model("resnet50").layer_table()
    blocks = [f"layer{k}.{i}" for k, n in ((1, 3), (2, 4), (3, 6), (4, 3)) for i in range(n)]
    assert [g.name for g in r50] == ["relu", *blocks, "flatten"]
    assert [g.index for g in r50] == list(range(18))


@pytest.mark.parametrize("name", NAMES)
def test_walked_blocks_are_the_stage_taps(name: str) -> None:
    model = _model(name)
    table = model.layer_table()
    last = {int(g.name[5]): g.index for g in table if g.name.startswith("layer")}
    x = _batch(1, 16)  # small and fast: any size works
    with torch.no_grad():
        out = model(x)
        feats, logits = model.forward_layers(x, [0, *last.values(), -1])
    assert torch.equal(feats[0], out["stem"]) and torch.equal(feats[-1], out["pool"])
    for k, i in last.items():
        assert torch.equal(feats[i], out[f"stage{k}"])
    assert logits is not None and torch.equal(logits, out["logits"])


def test_shufflev2_preact_is_before_the_shuffle() -> None:
    model = _model("shufflev2")
    with torch.no_grad():
        out = model(_batch(1, 16))
    pre, post = out["stage2_pre"], out["stage2"]
    unshuffled = post.unflatten(1, (116, 2)).transpose(1, 2).flatten(1, 2)
    assert torch.equal(unshuffled, torch.relu(pre))
    assert not torch.equal(post, torch.relu(pre))


@pytest.mark.parametrize("name", ["shufflev1", "resnet50"])
def test_preact_bns_give_the_bn_under_each_preact_tap(name: str) -> None:
    """tap == BN output + the last block's input (both end in an identity-add block)."""
    model = _model(name)
    bns = model.preact_bns()
    assert list(bns) == list(model.preact_taps)
    seen: dict[str, torch.Tensor] = {}
    hooks = [
        bn.register_forward_hook(lambda m, i, o, tap=tap: seen.__setitem__(tap, o))
        for tap, bn in bns.items()
    ]
    table = model.layer_table()
    before_last = {}  # stage -> index of the layer feeding its last block
    for g in table:
        if g.name.startswith("layer"):
            before_last[int(g.name[5])] = g.index - 1
    x = _batch(1, 16)
    try:
        with torch.no_grad():
            out = model(x)
            inputs, _ = model.forward_layers(x, list(before_last.values()))
    finally:
        for h in hooks:
            h.remove()
    for k, i in before_last.items():
        tap = f"stage{k}_pre"
        assert bns[tap] is getattr(model, f"layer{k}")[-1].bn3
        torch.testing.assert_close(out[tap], seen[tap] + inputs[i], rtol=0, atol=0)


def test_shufflev2_has_no_preact_bns() -> None:
    with pytest.raises(NotImplementedError, match="x1"):
        _model("shufflev2").preact_bns()


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_on_a_batch_of_two(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, 10)  # train mode: BN on batch statistics
    out = model(_batch())
    loss = torch.nn.functional.cross_entropy(out["logits"], torch.tensor([1, 7]))
    loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.conv1.weight.grad.abs().sum() > 0


def test_cli_lists_shufflev2_layers(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kd", "layers", "shufflev2", "--dataset", "cifar100"]) == 0
    text = capsys.readouterr().out
    assert "19 generalized layers" in text and "relu2" in text and "1024x4x4" in text

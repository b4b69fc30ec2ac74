"""CIFAR KD benchmark models: taps, shapes, RepDistiller parameter counts, gradients, seeding."""

from __future__ import annotations

from functools import cache

import pytest
import torch
import torch.nn.functional as F

from sublim.kd.models import MODELS, TapNet, create_model, parameter_count


@cache
def _model(name: str) -> TapNet:
    """One default-initialised 100-class model per name, shared by the tests (read-only use)."""
    torch.manual_seed(0)
    return create_model(name)


def _batch(n: int = 2, size: int = 32) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------
# Forward, taps and shapes
# ------------------------------------------------------------------------------------------------


# resnet112 is 110's alias; the big KD_wo_CE teachers are checked on the meta device
# (test_kd_models_paper.py), so their weights are not kept alive by the cache above
BIG = ("resnet112", "resnet34", "vgg19_bn", "vit_b")


@pytest.mark.parametrize("name", [n for n in MODELS if n not in BIG])
def test_forward_returns_logits_and_every_tap_with_reported_shapes(name: str) -> None:
    model = _model(name)
    shapes = model.tap_shapes()
    with torch.no_grad():
        out = model(_batch())
    assert list(out) == [*model.tap_names, "logits"]
    assert out["logits"].shape == (2, 100)
    assert set(shapes) == set(out)
    for tap, t in out.items():
        assert tuple(t.shape) == (2, *shapes[tap]), tap
    head = model.classifier  # a Linear, or the VGG-BN family's MLP
    assert shapes["pool"] == ((head if isinstance(head, torch.nn.Linear) else head[0]).in_features,)


def test_named_taps_return_only_logits_and_those_taps() -> None:
    model = _model("resnet8")
    with torch.no_grad():
        out = model(_batch(), taps=["stage2"])
        assert set(out) == {"logits", "stage2"}
        assert set(model(_batch(), taps=[])) == {"logits"}
    with pytest.raises(ValueError, match="stage4"):
        model(_batch(), taps=["stage4"])  # a CIFAR ResNet has three stages


def test_tap_names_follow_the_convention_per_family() -> None:
    three = ("stem", "stage1_pre", "stage1", "stage2_pre", "stage2", "stage3_pre", "stage3")
    assert _model("resnet20").tap_names == (*three, "pool")
    wrn = [(f"stage{k}_pre", f"stage{k}_bn", f"stage{k}") for k in (1, 2, 3)]
    assert _model("wrn_16_2").tap_names == ("stem", *sum(wrn, ()), "pool")  # _bn: preact=True
    assert _model("vgg8").tap_names == (*three, "stage4_pre", "stage4", "pool")
    mobilenet = ("stem", "stage1", "stage2", "stage3", "stage4", "pool")
    assert _model("mobilenetv2").tap_names == mobilenet


EXPECTED_SHAPES = {
    "resnet56": {"stem": (16, 32, 32), "stage1": (16, 32, 32), "stage3": (64, 8, 8)},
    "resnet32x4": {"stem": (32, 32, 32), "stage1": (64, 32, 32), "stage3": (256, 8, 8)},
    "wrn_40_2": {"stem": (16, 32, 32), "stage1": (32, 32, 32), "stage3_pre": (128, 8, 8)},
    "vgg13": {"stem": (64, 32, 32), "stage1": (128, 16, 16), "stage3": (512, 4, 4)},
    "mobilenetv2": {"stem": (16, 16, 16), "stage1": (12, 16, 16), "stage4": (160, 2, 2)},
}


@pytest.mark.parametrize("name", list(EXPECTED_SHAPES))
def test_expected_tap_shapes(name: str) -> None:
    shapes = _model(name).tap_shapes()
    assert {tap: shapes[tap] for tap in EXPECTED_SHAPES[name]} == EXPECTED_SHAPES[name]


def test_64px_inputs_work_and_vgg_pools_after_block3_only_then() -> None:
    assert _model("resnet8").tap_shapes((3, 64, 64))["stage3"] == (64, 16, 16)
    assert _model("wrn_16_2").tap_shapes((3, 64, 64))["pool"] == (128,)
    assert _model("mobilenetv2").tap_shapes((3, 64, 64))["stage4"] == (160, 4, 4)
    v = _model("vgg8").tap_shapes((3, 64, 64))
    assert (v["stage3"], v["stage4"]) == ((512, 8, 8), (512, 4, 4))


def test_tap_shapes_leaves_the_model_untouched() -> None:
    model = create_model("resnet8")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.tap_shapes()
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert next(model.parameters()).device.type == "cpu"


# ------------------------------------------------------------------------------------------------
# Pre-activation taps
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet20", "resnet8x4", "vgg8"])
def test_stage_is_relu_of_stage_pre(name: str) -> None:
    model = _model(name)
    with torch.no_grad():
        out = model(_batch())
    for k in range(1, 5):
        if f"stage{k}" in out:
            pre, post = out[f"stage{k}_pre"], out[f"stage{k}"]
            assert torch.equal(F.relu(pre), post)
            assert (pre < 0).any()  # the tap is really before the ReLU


def test_wrn_stage_is_the_following_bn_relu_of_stage_pre() -> None:
    model = create_model("wrn_16_2").eval()
    with torch.no_grad():
        out = model(_batch())
        following = (model.block2.layer[0].bn1, model.block3.layer[0].bn1, model.bn1)
        for k, bn in enumerate(following, start=1):
            expected = F.relu(bn(out[f"stage{k}_pre"]))
            torch.testing.assert_close(out[f"stage{k}"], expected, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------
# Benchmark features: RepDistiller's forward(x, is_feat=True, preact=False) feat[1:-1]
# ------------------------------------------------------------------------------------------------


def _repdistiller_features(name: str, model: TapNet, x: torch.Tensor) -> list[torch.Tensor]:
    """feat[1:-1] of RepDistiller's `forward(x, is_feat=True, preact=False)`, recomputed here by
    running the model's submodules in RepDistiller's order (not through the taps)."""
    if name.startswith("wrn"):  # raw residual sums of the three stages, no BN-ReLU after them
        f1 = model.block1.layer(model.conv1(x))
        f2 = model.block2.layer(f1)
        return [f1, f2, model.block3.layer(f2)]
    if name.startswith("resnet"):  # block outputs after their ReLU
        f1 = model.layer1(F.relu(model.bn1(model.conv1(x))))
        f2 = model.layer2(f1)
        return [f1, f2, model.layer3(f2)]
    if name.startswith("vgg"):  # ReLU of each block, max-pooled in between (not before block 4)
        x = F.relu(model.block0(x))
        feats = []
        for pool, block in ((model.pool0, model.block1), (model.pool1, model.block2)):
            x = F.relu(block(pool(x)))
            feats.append(x)
        x = F.relu(model.block3(model.pool2(x)))
        feats.append(x)
        return [*feats, F.relu(model.block4(x))]
    feats, x = [], model.conv1(x)  # MobileNetV2: after inverted-residual groups 1, 2, 4, 6
    for group in range(7):
        x = model.blocks[group](x)
        if group in (1, 2, 4, 6):
            feats.append(x)
    return feats


@pytest.mark.parametrize(
    "name", ["resnet20", "resnet8x4", "wrn_16_2", "wrn_40_1", "vgg8", "mobilenetv2"]
)
def test_feature_taps_are_repdistillers_features(name: str) -> None:
    model = create_model(name).eval()
    x = _batch()
    with torch.no_grad():
        out = model(x, model.feature_taps)
        expected = _repdistiller_features(name, model, x)
    assert len(model.feature_taps) == len(expected)
    for tap, feat in zip(model.feature_taps, expected, strict=True):
        torch.testing.assert_close(out[tap], feat, rtol=0, atol=0, msg=tap)


def test_wrn_features_are_the_raw_residual_sums() -> None:
    """WRN's benchmark features are not its post-activation stage taps (they were the default
    before: AT, NST, SP, FitNets and FT read the wrong tensor on WRN pairs)."""
    model = _model("wrn_40_2")
    assert model.feature_taps == ("stage1_pre", "stage2_pre", "stage3_pre")
    for name in ("resnet56", "resnet32x4", "vgg13"):
        assert all(t.startswith("stage") and "_pre" not in t for t in _model(name).feature_taps)


# ------------------------------------------------------------------------------------------------
# Parameter counts, derived from the architectures (not from this module)
# ------------------------------------------------------------------------------------------------


def _bn(c: int) -> int:
    return 2 * c


def _resnet(n: int, widths: tuple[int, int, int, int], k: int) -> int:
    """3x3 stem + BN; per BasicBlock two 3x3 convs + BNs, 1x1 conv + BN shortcut on change."""
    total = 9 * 3 * widths[0] + _bn(widths[0])
    cin = widths[0]
    for stage, c in enumerate(widths[1:]):
        for i in range(n):
            cin_i = cin if i == 0 else c
            total += 9 * cin_i * c + _bn(c) + 9 * c * c + _bn(c)
            if i == 0 and (cin != c or stage > 0):  # stages 2 and 3 stride 2
                total += cin * c + _bn(c)
        cin = c
    return total + widths[3] * k + k


def _wrn(depth: int, widen: int, k: int) -> int:
    """3x3 stem (no BN); per block BN, 3x3 conv, BN, 3x3 conv, 1x1 shortcut (no BN) on change."""
    n = (depth - 4) // 6
    widths = (16, 16 * widen, 32 * widen, 64 * widen)
    total = 9 * 3 * 16
    cin = 16
    for c in widths[1:]:
        for i in range(n):
            cin_i = cin if i == 0 else c
            total += _bn(cin_i) + 9 * cin_i * c + _bn(c) + 9 * c * c
            total += cin_i * c if cin_i != c else 0
        cin = c
    return total + _bn(widths[3]) + widths[3] * k + k


def _vgg(cfg: list[list[int]], k: int) -> int:
    """3x3 convs with bias, each followed by BN; one Linear(512, k)."""
    total, cin = 0, 3
    for block in cfg:
        for c in block:
            total += 9 * cin * c + c + _bn(c)
            cin = c
    return total + 512 * k + k


def _mobilenetv2_half(k: int) -> int:
    """Stem 3x3/2 conv 16 + BN; inverted residuals; 1x1 conv to 1280 + BN; Linear(1280, k)."""
    setting = [(1, 8, 1), (6, 12, 2), (6, 16, 3), (6, 32, 4), (6, 48, 3), (6, 80, 3), (6, 160, 1)]
    total, cin = 9 * 3 * 16 + _bn(16), 16
    for t, c, n in setting:
        for _ in range(n):
            h = cin * t  # expand 1x1, depthwise 3x3, project 1x1, each with BN
            total += cin * h + _bn(h) + 9 * h + _bn(h) + h * c + _bn(c)
            cin = c
    return total + 160 * 1280 + _bn(1280) + 1280 * k + k


# name -> (count from the formula, the same integer worked by hand, published millions)
COUNTS = {
    "resnet20": (_resnet(3, (16, 16, 32, 64), 100), 278_324, 0.27),
    "resnet56": (_resnet(9, (16, 16, 32, 64), 100), 861_620, 0.86),
    "resnet110": (_resnet(18, (16, 16, 32, 64), 100), 1_736_564, 1.74),
    "resnet8x4": (_resnet(1, (32, 64, 128, 256), 100), 1_233_540, 1.23),
    "resnet32x4": (_resnet(5, (32, 64, 128, 256), 100), 7_433_860, 7.43),
    "wrn_16_2": (_wrn(16, 2, 100), 703_284, 0.70),
    "wrn_40_1": (_wrn(40, 1, 100), 569_780, 0.57),
    "wrn_40_2": (_wrn(40, 2, 100), 2_255_156, 2.25),
    "vgg8": (_vgg([[64], [128], [256], [512], [512]], 100), 3_965_028, 3.96),
    "vgg13": (
        _vgg([[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]], 100),
        9_462_180,
        9.46,
    ),
    "mobilenetv2": (_mobilenetv2_half(100), 812_836, 0.81),
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts_match_the_architecture_and_published_figures(name: str) -> None:
    formula, by_hand, published_m = COUNTS[name]
    assert formula == by_hand
    assert parameter_count(_model(name)) == by_hand
    # CRD-style tables give millions to two places, sometimes truncated (2.2552M -> "2.25M")
    assert abs(by_hand / 1e6 - published_m) < 0.01


def test_parameter_counts_for_10_classes() -> None:
    # He et al.'s CIFAR-10 ResNet-20 "0.27M": the 100-class count less 90 * (64 + 1) head entries
    assert parameter_count(create_model("resnet20", num_classes=10)) == 278_324 - 90 * 65
    assert parameter_count(create_model("resnet8", num_classes=10)) == _resnet(
        1, (16, 16, 32, 64), 10
    )


def test_resnet112_is_resnet110() -> None:
    a, b = _model("resnet110"), create_model("resnet112")
    assert type(a) is type(b)
    assert {k: v.shape for k, v in a.state_dict().items()} == {
        k: v.shape for k, v in b.state_dict().items()
    }
    assert parameter_count(b) == parameter_count(a) == 1_736_564
    assert len(b.layer1) == len(b.layer2) == len(b.layer3) == 18


def test_state_dict_keys_follow_repdistiller_names() -> None:
    keys = {name: set(_model(name).state_dict()) for name in ("resnet20", "wrn_40_2", "vgg8")}
    assert {"conv1.weight", "layer3.0.downsample.0.weight", "classifier.weight"} <= keys["resnet20"]
    assert {"block2.layer.0.convShortcut.weight", "bn1.running_var"} <= keys["wrn_40_2"]
    assert {"block4.0.bias", "block4.1.running_mean"} <= keys["vgg8"]
    assert "blocks.6.0.conv.7.weight" in _model("mobilenetv2").state_dict()


# ------------------------------------------------------------------------------------------------
# Registry, gradients, seeding
# ------------------------------------------------------------------------------------------------


def test_unknown_model_name_lists_the_names() -> None:
    with pytest.raises(ValueError, match="resnet56.*mobilenetv2") as err:
        create_model("resnet51")
    assert "resnet51" in str(err.value)


STEM_CONV = {
    "resnet8": lambda m: m.conv1,
    "wrn_16_2": lambda m: m.conv1,
    "vgg8": lambda m: m.block0[0],
    "mobilenetv2": lambda m: m.conv1[0],
}


@pytest.mark.parametrize("name", list(STEM_CONV))
def test_gradients_flow_from_logits_to_the_stem(name: str) -> None:
    model = create_model(name, num_classes=10)
    model(_batch())["logits"].sum().backward()
    stem_conv = STEM_CONV[name](model)
    assert stem_conv.weight.grad is not None
    assert stem_conv.weight.grad.abs().sum() > 0


def test_generator_seeds_the_weights_and_spares_the_global_rng() -> None:
    state = torch.random.get_rng_state()
    a = create_model("vgg8", generator=torch.Generator().manual_seed(3))
    b = create_model("vgg8", generator=torch.Generator().manual_seed(3))
    c = create_model("vgg8", generator=torch.Generator().manual_seed(4))
    assert torch.equal(state, torch.random.get_rng_state())
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(a.block0[0].weight, c.block0[0].weight)
    # RepDistiller's init: He fan-out normal convs, zero conv biases, N(0, 0.01) VGG classifier
    assert torch.count_nonzero(a.block0[0].bias) == 0
    assert abs(a.classifier.weight.std().item() - 0.01) < 0.001
    assert abs(a.block4[0].weight.std().item() - (2 / (9 * 512)) ** 0.5) < 0.001

"""Generalized layers of every kd model: tables of the benchmark zoo, forward_layers (records,
negative indices, early stop, detached head), range errors, parameter groups, float64 shapes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sublim.errors import ConfigError
from sublim.kd.models import MODELS, create_model, layer_rows


def _model(name: str, classes: int = 10) -> torch.nn.Module:
    return create_model(name, classes, generator=torch.Generator().manual_seed(0))


def _batch(size: int = 32, n: int = 4) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------
# The benchmark zoo's tables (same definition: each ReLU, block and the Flatten, in order)
# ------------------------------------------------------------------------------------------------


def test_benchmark_zoo_tables() -> None:
    rn20 = layer_rows("resnet20", "cifar100")
    assert [g.name for g in rn20[:3]] == ["relu", "layer1.0", "layer1.1"]
    assert [g.shape for g in rn20] == [
        *[(16, 32, 32)] * 4,
        *[(32, 16, 16)] * 3,
        *[(64, 8, 8)] * 3,
        (64,),
    ]
    vgg8 = layer_rows("vgg8", "cifar100")
    assert [(g.name, g.shape) for g in vgg8] == [
        ("block0.2", (64, 32, 32)),
        ("block1.2", (128, 16, 16)),
        ("block2.2", (256, 8, 8)),
        ("block3.2", (512, 4, 4)),
        ("block4.2", (512, 4, 4)),  # RepDistiller pools after block 3 only at 64 px
        ("flatten", (512,)),
    ]
    assert [g.name for g in layer_rows("vgg13", "cifar100")][:2] == ["block0.2", "block0.5"]
    wrn = layer_rows("wrn_16_2", "cifar100")
    assert [g.name for g in wrn] == [
        *(f"block{k}.layer.{i}" for k in (1, 2, 3) for i in (0, 1)),
        "relu",
        "flatten",
    ]
    assert wrn[-2].shape == (128, 8, 8)
    mnv2 = layer_rows("mobilenetv2", "cifar100")
    assert len(mnv2) == 20 and mnv2[0].shape == (16, 16, 16) and mnv2[-2].shape == (1280, 2, 2)


@pytest.mark.parametrize("name", [n for n in MODELS if n not in ("resnet112", "vit_b")])
def test_every_model_has_a_table_ending_in_a_known_layer(name: str) -> None:
    rows = layer_rows(name, "cifar10")
    last = {"vit_ett": "encoder.layers.encoder_layer_7", "vgg11_bn": "classifier.4"}
    assert rows[-1].name == last.get(name, "classifier.4" if name == "vgg19_bn" else "flatten")
    assert [g.index for g in rows] == list(range(len(rows)))


def test_layer_rows_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="--dataset.*cifar10"):
        layer_rows("resnet9", "places365")
    with pytest.raises(ConfigError, match="MODEL.*resnet9"):
        layer_rows("resnet51", "cifar10")


# ------------------------------------------------------------------------------------------------
# forward_layers
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "layer", "tap"),
    [
        ("resnet9", 0, "stem"),
        ("resnet9", 4, "stage4"),
        ("resnet9", -1, "pool"),
        ("vgg11_bn", 8, "pool"),
        ("vgg11_bn", 7, "stage4"),
        ("mobilenetv2_w1", 17, "stage4"),
        ("vit_ett", 0, "stem"),
        ("vit_ett", -1, "stage4"),
        ("resnet20", 10, "pool"),
        ("wrn_16_2", 5, "stage3_pre"),
        ("mobilenetv2", 17, "stage4"),
        ("vgg8", 4, "stage4"),
    ],
)
def test_layers_equal_the_taps_they_coincide_with(name: str, layer: int, tap: str) -> None:
    model = _model(name).eval()
    x = _batch()
    with torch.no_grad():
        out = model(x)
        feats, logits = model.forward_layers(x, [layer])
    assert list(feats) == [layer]
    torch.testing.assert_close(feats[layer], out[tap], rtol=0, atol=0)
    torch.testing.assert_close(logits, out["logits"], rtol=0, atol=0)


def test_layer_shapes_match_the_table_and_negative_indices_count_from_the_end() -> None:
    model = _model("resnet9")
    table = model.layer_table()
    feats, _ = model.forward_layers(_batch(), range(-len(table), len(table)))
    for g in table:
        assert tuple(feats[g.index].shape[1:]) == g.shape
        assert feats[g.index - len(table)] is feats[g.index]


def test_stop_after_returns_early_without_running_the_rest() -> None:
    model = _model("resnet9")
    called = []
    model.num_layers()  # the (cached) count comes from a meta-device forward: not counted below
    model.layer4[0].conv2.register_forward_hook(lambda *a: called.append("layer4"))
    feats, logits = model.forward_layers(_batch(), [1, 3], stop_after=3)
    assert logits is None and set(feats) == {1, 3} and not called
    model.forward_layers(_batch(), [1])
    assert called == ["layer4"]
    with pytest.raises(ValueError, match="past stop_after"):
        model.forward_layers(_batch(), [4], stop_after=3)


def test_detach_after_cuts_the_cross_entropy_gradient_from_the_backbone() -> None:
    model = _model("vgg11_bn")
    y = torch.tensor([0, 1, 2, 3])
    feats, logits = model.forward_layers(_batch(), [1, 7], detach_after=7)
    assert feats[7].requires_grad  # recorded un-detached: the feature loss trains the backbone
    F.cross_entropy(logits, y).backward()
    backbone, head = model.param_groups()["backbone"], model.param_groups()["head"]
    assert all(p.grad is None for p in backbone)  # CE reaches nothing before layer 7
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head[::2])
    feats[1].square().mean().backward()
    assert model.features[0].weight.grad is not None


def test_detach_after_in_a_transformer_and_a_resnet() -> None:
    for name, cut in (("vit_ett", 7), ("resnet9", 4)):
        model = _model(name)
        if name == "vit_ett":
            torch.nn.init.normal_(model.heads.head.weight)
        feats, logits = model.forward_layers(_batch(), [cut], detach_after=-1 if cut == 7 else 4)
        logits.square().sum().backward()
        first = next(model.parameters())
        assert first.grad is None, name
        feats[cut].square().mean().backward()
        assert first.grad is not None and first.grad.abs().sum() > 0, name


def test_out_of_range_layers_list_the_valid_range_with_shapes() -> None:
    model = _model("resnet9")
    with pytest.raises(ValueError, match=r"valid -6\.\.5 .*0 relu 64x32x32.*5 flatten 512"):
        model.forward_layers(_batch(), [6])
    with pytest.raises(ValueError, match="-7"):
        model.forward_layers(_batch(), [-7])
    with pytest.raises(ValueError, match="valid"):
        model.forward_layers(_batch(), [0], stop_after=9)


def test_param_groups_split_at_the_first_linear() -> None:
    for name, head_params in (("resnet9", 2), ("vgg11_bn", 6), ("vit_ett", 2), ("resnet20", 2)):
        model = _model(name)
        groups = model.param_groups()
        assert len(groups["head"]) == head_params, name
        ids = [id(p) for g in groups.values() for p in g]
        assert sorted(ids) == sorted(id(p) for p in model.parameters())
    vit = _model("vit_ett")
    assert vit.param_groups()["head"][0] is vit.heads.head.weight


# ------------------------------------------------------------------------------------------------
# Shapes on the meta device: float64 and untouched models
# ------------------------------------------------------------------------------------------------


def test_tap_shapes_and_layer_table_work_for_float64_models() -> None:
    vgg = create_model("vgg8").double()
    assert vgg.tap_shapes()["pool"] == (512,)
    assert vgg.layer_table()[-1].shape == (512,)
    vit = create_model("vit_ett", 10).double()
    assert vit.tap_shapes()["pool"] == (192,)
    feats, _ = vit.forward_layers(_batch().double(), [0])
    assert feats[0].dtype == torch.float64


def test_layer_table_leaves_parameters_and_bn_statistics_alone() -> None:
    model = _model("resnet9")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.layer_table((3, 64, 64))
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)

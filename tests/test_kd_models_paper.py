"""KD_wo_CE's models: parameter counts and generalized-layer tables against the spec (sections 3
and 5), torchvision state-dict names, initialisation, image-size dependence, gradients."""

from __future__ import annotations

import pytest
import torch

from sublim.kd.models import TapNet, create_model, layer_rows, parameter_count

DATASETS = {"cifar10": (10, 32), "cifar100": (100, 32), "tinyimagenet": (200, 64)}


def _meta(name: str, classes: int = 10, size: int = 32) -> TapNet:
    with torch.device("meta"):
        return create_model(name, classes, image_size=size)


def _batch(size: int = 32, n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------------------
# Parameter counts: spec section 5, millions to two places, for CIFAR-10 / CIFAR-100 / Tiny
# ------------------------------------------------------------------------------------------------

SPEC_COUNTS = {
    "resnet34": (21.28, 21.33, 21.38),
    "resnet9": (4.90, 4.95, 5.00),
    "vgg19_bn": (38.96, 39.33, 39.74),
    "vgg11_bn": (28.15, 28.52, 28.93),
    "mobilenetv2_w1": (2.24, 2.35, 2.48),
    "vit_b": (85.15, 85.22, 85.41),
    "vit_ett": (2.99, 3.01, 3.06),
}


@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_parameter_counts_equal_the_spec_table(name: str) -> None:
    for (classes, size), millions in zip(DATASETS.values(), SPEC_COUNTS[name], strict=True):
        count = parameter_count(_meta(name, classes, size))
        assert round(count / 1e6, 2) == millions, (name, classes, count)


def test_exact_counts_worked_by_hand() -> None:
    # torchvision resnet18 (11,689,512) with a 3x3 stem (-9408 + 1728) and a 10-way fc
    assert parameter_count(_meta("resnet18")) == 11_689_512 - 9408 + 1728 - 513_000 + 5130
    # ViT: per block 4*768^2 + 4*768 (attention) + 2*768*3072 + 3072 + 768 (MLP) + 4*768 (LNs)
    block = 4 * 768 * 768 + 4 * 768 + 2 * 768 * 3072 + 3072 + 768 + 4 * 768
    embed = 3 * 4 * 4 * 768 + 768 + 768 + 65 * 768  # patch conv, class token, positions
    assert parameter_count(_meta("vit_b")) == 12 * block + embed + 2 * 768 + 768 * 10 + 10


# ------------------------------------------------------------------------------------------------
# Generalized-layer tables: spec section 3
# ------------------------------------------------------------------------------------------------


def _rep(shape: tuple[int, ...], n: int) -> list[tuple[int, ...]]:
    return [shape] * n


def _c(c: int, s: int) -> tuple[int, int, int]:
    return (c, s, s)


def _expected(name: str, size: int) -> list[tuple[int, ...]]:
    d = size // 32  # spatial factor of the 64 px models that do not reduce in the stem
    if name == "resnet34":
        return [
            _c(64, size),
            *_rep(_c(64, 32), 3),
            *_rep(_c(128, 16), 4),
            *_rep(_c(256, 8), 6),
            *_rep(_c(512, 4), 3),
            (512,),
        ]
    if name == "resnet9":
        return [_c(64, size), _c(64, 32), _c(128, 16), _c(256, 8), _c(512, 4), (512,)]
    if name == "vgg19_bn":
        widths = [(64, 2), (128, 2), (256, 4), (512, 4), (512, 4)]
        convs = [_c(c, 32 * d >> k) for k, (c, n) in enumerate(widths) for _ in range(n)]
        return [*convs, (512,), (4096,), (4096,)]
    if name == "vgg11_bn":
        widths = [(64, 1), (128, 1), (256, 2), (512, 2), (512, 2)]
        convs = [_c(c, 32 * d >> k) for k, (c, n) in enumerate(widths) for _ in range(n)]
        return [*convs, (512,), (4096,), (4096,)]
    if name == "mobilenetv2_w1":
        return [
            _c(32, 32),
            _c(16, 32),
            *_rep(_c(24, 16), 2),
            *_rep(_c(32, 8), 3),
            *_rep(_c(64, 4), 4),
            *_rep(_c(96, 4), 3),
            *_rep(_c(160, 2), 3),
            _c(320, 2),
            _c(1280, 2),
            (1280,),
        ]
    if name == "vit_b":
        return _rep((65, 768), 13)
    assert name == "vit_ett"
    return _rep((65, 192), 9)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", list(SPEC_COUNTS))
def test_layer_tables_equal_the_spec(name: str, size: int) -> None:
    table = _meta(name, 10, size).layer_table((3, size, size))
    assert [g.index for g in table] == list(range(len(table)))
    assert [g.shape for g in table] == _expected(name, size)


def test_layer_names_are_module_paths() -> None:
    names = {n: [g.name for g in layer_rows(n, "cifar10")] for n in SPEC_COUNTS}
    assert names["resnet34"][:3] == ["relu", "layer1.0", "layer1.1"]
    assert names["resnet34"][-1] == "flatten"
    assert names["vgg19_bn"][:2] == ["features.2", "features.5"]
    assert names["vgg19_bn"][-3:] == ["flatten", "classifier.1", "classifier.4"]
    assert names["mobilenetv2_w1"][0] == "features.0.2"
    assert names["mobilenetv2_w1"][-2:] == ["features.18.2", "flatten"]
    assert names["vit_b"][:2] == ["patch_embed", "encoder.layers.encoder_layer_0"]


def test_standard_layer_lists_hit_the_spec_shapes() -> None:
    # spec 1.2: the student/teacher layers of the paper's pairs, CIFAR-10 shapes
    rn34, rn9 = layer_rows("resnet34", "cifar10"), layer_rows("resnet9", "cifar10")
    assert [rn34[i].shape for i in (12, 13, 14, 15)] == [_c(256, 8)] * 2 + [_c(512, 4)] * 2
    assert [rn9[i].shape for i in (1, 2, 3, 4)] == [_c(64, 32), _c(128, 16), _c(256, 8), _c(512, 4)]
    mnv2 = layer_rows("mobilenetv2_w1", "cifar10")
    assert [mnv2[i].shape for i in (3, 6, 13, 17)] == [
        _c(24, 16),
        _c(32, 8),
        _c(96, 4),
        _c(320, 2),
    ]
    vgg11 = layer_rows("vgg11_bn", "cifar10")
    assert [vgg11[i].shape for i in (1, 3, 5, 7)] == [
        _c(128, 16),
        _c(256, 8),
        _c(512, 4),
        _c(512, 2),
    ]


# ------------------------------------------------------------------------------------------------
# torchvision names and shapes
# ------------------------------------------------------------------------------------------------


def _shapes(model: TapNet) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_resnet34_keys_are_torchvision_keys() -> None:
    s = _shapes(_meta("resnet34"))
    assert s["conv1.weight"] == (64, 3, 3, 3)  # torchvision: (64, 3, 7, 7)
    assert s["layer1.2.bn2.running_var"] == (64,)
    assert s["layer2.0.downsample.0.weight"] == (128, 64, 1, 1)
    assert s["layer4.2.conv2.weight"] == (512, 512, 3, 3)
    assert s["classifier.weight"] == (10, 512)  # torchvision: fc.weight
    assert not any(k.startswith("layer5") for k in s)


def test_vgg19_bn_keys_are_torchvision_keys() -> None:
    s = _shapes(_meta("vgg19_bn"))
    assert s["features.0.weight"] == (64, 3, 3, 3)
    assert s["features.1.running_mean"] == (64,)
    assert s["features.49.weight"] == (512, 512, 3, 3)
    assert s["classifier.0.weight"] == (4096, 512)  # torchvision: (4096, 25088)
    assert s["classifier.3.weight"] == (4096, 4096)
    assert s["classifier.6.weight"] == (10, 4096)
    assert sum(k.endswith(".weight") and len(v) == 4 for k, v in s.items()) == 16


def test_vit_b_keys_are_torchvision_keys() -> None:
    s = _shapes(_meta("vit_b"))
    assert s["conv_proj.weight"] == (768, 3, 4, 4)
    assert s["class_token"] == (1, 1, 768)
    assert s["encoder.pos_embedding"] == (1, 65, 768)
    layer = "encoder.layers.encoder_layer_11."
    assert s[layer + "self_attention.in_proj_weight"] == (2304, 768)
    assert s[layer + "self_attention.out_proj.weight"] == (768, 768)
    assert s[layer + "mlp.0.weight"] == (3072, 768)
    assert s[layer + "mlp.3.weight"] == (768, 3072)
    assert s[layer + "ln_2.bias"] == (768,)
    assert s["encoder.ln.weight"] == (768,)
    assert s["heads.head.weight"] == (10, 768)
    assert _shapes(_meta("vit_b", 200, 64))["conv_proj.weight"] == (768, 3, 8, 8)


# ------------------------------------------------------------------------------------------------
# Forward, image size, init, gradients (the small models on real tensors)
# ------------------------------------------------------------------------------------------------

SMALL = ["resnet9", "resnet18", "vgg11_bn", "mobilenetv2_w1", "vit_ett"]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", SMALL)
def test_forward_taps_match_tap_shapes(name: str, size: int) -> None:
    model = create_model(name, 10, image_size=size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = model(_batch(size))
    assert list(out) == [*model.tap_names, "logits"]
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == model.tap_shapes((3, size, size))
    assert out["logits"].shape == (2, 10)


def test_image_size_sets_the_stem() -> None:
    assert _meta("resnet34", 10, 32).maxpool is None
    assert _meta("resnet34", 10, 64).maxpool is not None
    assert _meta("mobilenetv2_w1", 10, 32).features[0][0].stride == (1, 1)
    assert _meta("mobilenetv2_w1", 10, 64).features[0][0].stride == (2, 2)
    assert _meta("vit_ett", 10, 64).patch_size == 8
    with pytest.raises(ValueError, match="multiple of 8"):
        _meta("vit_ett", 10, 36)


def test_reference_initialisations() -> None:
    g = torch.Generator().manual_seed(0)
    rn9 = create_model("resnet9", 10, generator=g)
    assert all(torch.count_nonzero(m.bn2.weight) == 0 for m in (rn9.layer1[0], rn9.layer4[0]))
    assert abs(rn9.layer4[0].conv2.weight.std().item() - (2 / (9 * 512)) ** 0.5) < 2e-3
    vit = create_model("vit_ett", 10, generator=g)
    assert torch.count_nonzero(vit.heads.head.weight) == 0
    assert torch.count_nonzero(vit.class_token) == 0
    assert abs(vit.encoder.pos_embedding.std().item() - 0.02) < 2e-3
    assert vit.encoder.layers[0].ln_1.eps == 1e-6
    vgg = create_model("vgg11_bn", 10, generator=g)
    assert abs(vgg.classifier[3].weight.std().item() - 0.01) < 1e-3
    mnv2 = create_model("mobilenetv2_w1", 10, generator=g)
    assert torch.count_nonzero(mnv2.classifier.bias) == 0


@pytest.mark.parametrize("name", SMALL)
def test_generator_seeds_the_weights_and_spares_the_global_rng(name: str) -> None:
    state = torch.random.get_rng_state()
    a = create_model(name, 10, generator=torch.Generator().manual_seed(3))
    b = create_model(name, 10, generator=torch.Generator().manual_seed(3))
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", SMALL)
def test_gradients_reach_the_first_layer(name: str) -> None:
    model = create_model(name, 10, generator=torch.Generator().manual_seed(0))
    if name == "vit_ett":  # the zero head would block every gradient at step 0
        torch.nn.init.normal_(model.heads.head.weight, generator=torch.Generator().manual_seed(1))
    model(_batch())["logits"].square().sum().backward()
    first = next(model.parameters())
    assert first.grad is not None and first.grad.abs().sum() > 0

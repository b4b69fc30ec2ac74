"""mdistiller's ImageNet models (ResNet18/34/50 in torchvision's layout, MobileNetV1): parameter
counts, taps at 224 px, torchvision's key names, preact BNs, a real forward/backward, and logits
equal to mdistiller's own models (fixtures from its models/imagenet/*.py, float64)."""

from __future__ import annotations

from functools import cache

import pytest
import torch

from sublim.kd.config import MODEL_NAMES, PRETRAINED_FILES
from sublim.kd.models import MODELS, TapNet, create_model, parameter_count
from sublim.kd.pretrained import adapt_state_dict

NAMES = ("resnet18_imagenet", "resnet34_imagenet", "resnet50_imagenet", "mobilenetv1")
IMAGENET = (3, 224, 224)


def _meta(name: str, classes: int = 1000) -> TapNet:
    with torch.device("meta"):
        return create_model(name, classes, image_size=224)


@cache
def _seeded(name: str) -> TapNet:
    """One seeded 10-class model per name, shared by the tests below (no test steps it)."""
    return create_model(name, 10, generator=torch.Generator().manual_seed(0))


def test_registered_in_both_lists_in_the_same_order() -> None:
    assert all(n in MODELS and n in MODEL_NAMES for n in NAMES)
    assert [n for n in MODELS if n in NAMES] == [n for n in MODEL_NAMES if n in NAMES]


@pytest.mark.parametrize(
    ("name", "count"),
    [
        ("resnet18_imagenet", 11_689_512),
        ("resnet34_imagenet", 21_797_672),
        ("resnet50_imagenet", 25_557_032),
        ("mobilenetv1", 4_231_976),
    ],
)
def test_parameter_counts_at_1000_classes(name: str, count: int) -> None:
    assert parameter_count(_meta(name)) == count


R18 = {"stem": (64, 112, 112), "stage1": (64, 56, 56), "stage2": (128, 28, 28)}
R18 |= {"stage3": (256, 14, 14), "stage4": (512, 7, 7), "pool": (512,)}
R50 = {"stem": (64, 112, 112), "stage1": (256, 56, 56), "stage2": (512, 28, 28)}
R50 |= {"stage3": (1024, 14, 14), "stage4": (2048, 7, 7), "pool": (2048,)}
MV1 = {"stem": (32, 112, 112), "stage1": (128, 56, 56), "stage2": (256, 28, 28)}
MV1 |= {"stage3": (512, 14, 14), "stage4": (1024, 7, 7), "pool": (1024,)}
SHAPES = {"resnet18_imagenet": R18, "resnet34_imagenet": R18, "resnet50_imagenet": R50}
SHAPES["mobilenetv1"] = MV1


@pytest.mark.parametrize("name", NAMES)
def test_tap_shapes_at_224(name: str) -> None:
    model = _meta(name)
    shapes = model.tap_shapes(IMAGENET)
    want = dict(SHAPES[name])
    want |= {f"stage{k}_pre": want[f"stage{k}"] for k in range(1, 5)}
    want["logits"] = (1000,)
    assert shapes == want
    assert list(shapes) == [*model.tap_names, "logits"]
    assert model.feature_taps == ("stage1", "stage2", "stage3", "stage4")
    assert model.preact_taps == ("stage1_pre", "stage2_pre", "stage3_pre", "stage4_pre")


@pytest.mark.parametrize(
    ("name", "layers", "first", "last"),
    [
        ("resnet18_imagenet", 10, "relu", "layer4.1"),
        ("resnet34_imagenet", 18, "relu", "layer4.2"),
        ("resnet50_imagenet", 18, "relu", "layer4.2"),
        ("mobilenetv1", 28, "model.0.2", "model.13.5"),
    ],
)
def test_generalized_layers(name: str, layers: int, first: str, last: str) -> None:
    table = _meta(name).layer_table(IMAGENET)
    assert len(table) == layers
    assert (table[0].name, table[-2].name, table[-1].name) == (first, last, "flatten")
    assert table[-2].shape == SHAPES[name]["stage4"]


def _torchvision_keys(blocks: tuple[int, ...], bottleneck: bool) -> list[str]:
    """torchvision's ResNet state-dict keys (torchvision/models/resnet.py), written out here."""

    def bn(p: str) -> list[str]:
        return [f"{p}.{s}" for s in ("weight", "bias", "running_mean", "running_var")] + [
            f"{p}.num_batches_tracked"
        ]

    keys = ["conv1.weight", *bn("bn1")]
    convs = 3 if bottleneck else 2
    for k, n in enumerate(blocks, start=1):
        for i in range(n):
            for c in range(1, convs + 1):
                keys += [f"layer{k}.{i}.conv{c}.weight", *bn(f"layer{k}.{i}.bn{c}")]
            if i == 0 and (k > 1 or bottleneck):
                keys += [f"layer{k}.0.downsample.0.weight", *bn(f"layer{k}.0.downsample.1")]
    return [*keys, "fc.weight", "fc.bias"]


@pytest.mark.parametrize(
    ("name", "blocks", "bottleneck"),
    [
        ("resnet18_imagenet", (2, 2, 2, 2), False),
        ("resnet34_imagenet", (3, 4, 6, 3), False),
        ("resnet50_imagenet", (3, 4, 6, 3), True),
    ],
)
def test_state_dict_keys_are_torchvisions_with_fc_renamed(
    name: str, blocks: tuple[int, ...], bottleneck: bool
) -> None:
    ours = [k.replace("classifier.", "fc.") for k in _meta(name).state_dict()]
    assert ours == _torchvision_keys(blocks, bottleneck)


def test_mobilenetv1_keys_are_mdistillers() -> None:
    keys = list(_meta("mobilenetv1").state_dict())
    assert keys[:6] == ["model.0.0.weight", *(f"model.0.1.{s}" for s in ("weight", "bias"))] + [
        "model.0.1.running_mean",
        "model.0.1.running_var",
        "model.0.1.num_batches_tracked",
    ]
    assert "model.13.3.weight" in keys and "model.13.4.running_var" in keys
    assert keys[-2:] == ["classifier.weight", "classifier.bias"]


def test_pretrained_loads_a_torchvision_file_whole() -> None:
    """A torchvision resnet18 file (random values) passes the check and every key is taken."""
    model = create_model("resnet18_imagenet", 1000, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    file = {
        k.replace("classifier.", "fc."): torch.randn(v.shape, generator=g).to(v.dtype)
        for k, v in model.state_dict().items()
    }
    adapted = adapt_state_dict(model, "resnet18_imagenet", file, 224)
    assert set(adapted) == set(model.state_dict())
    assert torch.equal(adapted["classifier.weight"], file["fc.weight"])
    assert set(NAMES[:3]) <= set(PRETRAINED_FILES)


@pytest.mark.parametrize("name", NAMES)
def test_preact_bns_form_the_preact_taps(name: str) -> None:
    model = _seeded(name)
    bns = model.preact_bns()
    assert list(bns) == list(model.preact_taps)
    channels = {k: SHAPES[name][k.removesuffix("_pre")][0] for k in bns}
    assert {k: bn.num_features for k, bn in bns.items()} == channels
    assert all(any(bn is m for m in model.modules()) for bn in bns.values())


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_at_64px(name: str) -> None:
    model = _seeded(name)
    model.zero_grad()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    out = model(x)
    assert out["logits"].shape == (2, 10)
    for k in range(1, 5):
        assert torch.equal(out[f"stage{k}"], out[f"stage{k}_pre"].relu())
    out["logits"].square().mean().backward()
    first = model.conv1.weight if hasattr(model, "conv1") else model.model[0][0].weight
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_init_is_mdistillers(name: str) -> None:
    """ResNets: convs N(0, 2 / (k*k*out)); MobileNetV1: PyTorch's default (uniform, bound
    1/sqrt(fan_in)); BN 1/0 for both. (The fixtures below pin the seeded values.)"""
    model = _seeded(name)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    big = max(convs, key=lambda m: m.weight.numel())
    k = big.kernel_size[0] * big.kernel_size[1]
    if name == "mobilenetv1":
        bound = (1 / (big.weight[0].numel())) ** 0.5
        assert big.weight.abs().max() <= bound and big.weight.abs().max() > 0.95 * bound
    else:
        assert big.weight.std().item() == pytest.approx((2 / (k * big.out_channels)) ** 0.5, 0.02)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert bool((m.weight == 1).all() and (m.bias == 0).all())


def _randomised(name: str) -> TapNet:
    """The fixture's model: seeded init, then BN affine and statistics drawn so BN is no identity."""
    g = torch.Generator().manual_seed(3)
    model = create_model(name, 1000, generator=g).double()
    for bn in model.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.weight.data.uniform_(0.5, 1.5, generator=g)
            bn.bias.data.normal_(0, 0.2, generator=g)
            bn.running_mean.normal_(0, 0.1, generator=g)
            bn.running_var.uniform_(0.5, 2, generator=g)
    return model.eval()


# mdistiller's models with the same state dict (fc renamed), eval mode, on g((1, 3, 224, 224), 0):
# logits[0, :4], logits.sum(), preact_feats[-1].mean()
MD_FIXTURES = {
    "resnet18_imagenet": (
        [0.35062277, -3.421283155, -0.5876668243, -0.2557922749],
        61.84867221298947,
        1.1015449147029288,
    ),
    "mobilenetv1": (
        [-0.1086329585, 0.1130588896, -0.0228504403, -0.0186791453],
        -2.9212716756641406,
        -0.004566704755380761,
    ),
}


@pytest.mark.parametrize("name", list(MD_FIXTURES))
def test_logits_and_preact_taps_equal_mdistillers(name: str) -> None:
    head, total, preact = MD_FIXTURES[name]
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224, dtype=torch.float64)
    with torch.no_grad():
        out = _randomised(name)(x)
    assert out["logits"][0, :4].tolist() == pytest.approx(head, rel=1e-8, abs=1e-9)
    assert out["logits"].sum().item() == pytest.approx(total, rel=1e-9)
    assert out["stage4_pre"].mean().item() == pytest.approx(preact, rel=1e-9)

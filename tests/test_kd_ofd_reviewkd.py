"""OFD and ReviewKD against mdistiller: the fact sheet's test vectors (rows 8, 8b, 9, 9b), and
losses and gradients of mdistiller's own `OFD.forward_train` / `ReviewKD.forward_train` run on
stub models in float64 with fixed parameters (literal fixtures below; the script was mdistiller
a08d46f's distillers/{OFD,ReviewKD}.py, unmodified). Then the per-pair channels, sizes and
extra-parameter counts of ReviewKD's authors' tables, both methods on every benchmark pair,
the teacher BNs behind each model's pre-activation taps, and tiny MNIST runs through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from kd_tiny import tiny
from torch import Tensor, nn

from sublim.cli.main import main
from sublim.kd import train as kd_train
from sublim.kd.losses import OFD, ReviewKD, create_distiller, hcl_loss, ofd_feat_loss, ofd_margin
from sublim.kd.losses.base import DistillerConfigError, TapShapes
from sublim.kd.models import MODELS, create_model
from sublim.kd.runner import run_experiment
from sublim.kd.train import named_model_shapes


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: these small convolutions run tens of times slower when the
    machine's other processes compete with torch's thread pool."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def g(shape: tuple[int, ...], seed: int) -> Tensor:
    """The fact sheet's input recipe."""
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64)


def close(a: Tensor | float, b: Tensor | list[float] | float, rel: float = 1e-9) -> bool:
    a = torch.as_tensor(a, dtype=torch.float64)
    b = torch.as_tensor(b, dtype=torch.float64)
    return bool(torch.allclose(a, b, rtol=rel, atol=rel * float(b.abs().max())))


def test_generator_matches_the_fact_sheet():
    assert close(g((4,), 0), [1.5409961082, -0.2934289058, -2.1787893821, 0.5684312773], 1e-9)


# ---------------------------------------------------------------------------------------------
# Fact sheet rows 8, 8b, 9, 9b, and mdistiller's gradients on them
# ---------------------------------------------------------------------------------------------

ROW8 = [-0.7978845835, -1.027623892, -1.42710793, -0.3000000119]
# mdistiller's float32 margins, printed in full
ROW8_MD = [-0.7978845834732056, -1.0276238918304443, -1.4271079301834106, -0.30000001192092896]


def _row8_margin() -> Tensor:
    return ofd_margin(torch.tensor([1.0, 0.5, 2.0, 0.1]), torch.tensor([0.0, -1.0, 0.5, 3.0]))


def test_ofd_margin_row8():
    m = _row8_margin()
    assert m.dtype == torch.float32 and m.shape == (1, 4, 1, 1)
    assert close(m.flatten(), ROW8, 1e-7)
    assert torch.equal(m.flatten(), torch.tensor(ROW8_MD, dtype=torch.float32))
    # the -3s branch (Phi(-m/s) <= 1e-3) and a zero gamma
    m = ofd_margin(torch.tensor([1.0, 0.0, 0.0]), torch.tensor([4.0, -2.0, 2.0]))
    assert m.flatten().tolist() == [-3.0, -2.0, 0.0]


def test_ofd_feat_loss_row8b_and_gradient():
    s = g((2, 4, 3, 3), 60).requires_grad_()
    t = g((2, 4, 3, 3), 61)
    loss = ofd_feat_loss(s, t, _row8_margin())
    assert close(loss, 64.66989168, 1e-9) and close(loss, 64.66989168056811, 1e-12)
    loss.backward()
    md_grad_0 = [0.1821835575779311, -2.929900343266102, -1.5235267576092837, 0.0]
    assert close(s.grad[0, :, 0, 0], md_grad_0, 1e-6)
    md_grad_12 = [
        -1.4168197112971694, -0.36970077825496983, -0.49420596207680656, -0.5179810923960826,
        4.268328863693428, -1.191693494748446, 2.155605330399588, 0.4760669336942588,
        -0.9080251755238342,
    ]  # fmt: skip
    assert close(s.grad[1, 2].flatten(), md_grad_12, 1e-6)
    assert close(s.grad.sum(), -2.214723364703534, 1e-6)
    assert close((s.grad**2).sum(), 129.33978336113626, 1e-6)


def test_hcl_rows_9_and_9b_and_gradients():
    s = [g((2, 4, 8, 8), 70).requires_grad_(), g((2, 8, 2, 2), 71).requires_grad_()]
    t = [g((2, 4, 8, 8), 72), g((2, 8, 2, 2), 73)]
    loss = hcl_loss(s, t)
    assert close(loss, 2.959814571, 1e-9) and close(loss, 2.9598145707679357, 1e-12)
    loss.backward()
    md0 = [0.0008704580818945459, 0.0012759362795595995, -0.001754113100244925,
           -0.0026421812824384315]  # fmt: skip
    md1 = [
        -0.053054871553507424, -0.014125353662036298, 0.025307768598373435, -0.009731803813475453,
        -0.04297946850222442, 0.0083225997739397, -0.005129259572703016, -0.08485765407392708,
    ]  # fmt: skip
    assert close(s[0].grad[0, :, 0, 0], md0, 1e-6) and close(s[1].grad[1, :, 1, 0], md1, 1e-6)
    assert close((s[0].grad ** 2).sum(), 0.006005426065572137, 1e-6)
    assert close((s[1].grad ** 2).sum(), 0.09104556954414827, 1e-6)
    s9 = g((2, 8, 1, 1), 74).requires_grad_()
    loss = hcl_loss([s9], [g((2, 8, 1, 1), 75)])
    assert close(loss, 1.567966072, 1e-9) and close(loss, 1.5679660717241082, 1e-12)
    loss.backward()
    md9b = [0.03346995929447316, -0.01723548711940355, 0.15504809752393375]
    assert close(s9.grad[0, :3].flatten(), md9b, 1e-6)


# ---------------------------------------------------------------------------------------------
# The whole distillers against mdistiller's forward_train on stub models
# ---------------------------------------------------------------------------------------------

B = 3


class _Teacher(nn.Module):
    """Stands in for a TapNet whose preact taps come from these BNs."""

    def __init__(self, bns: dict[str, nn.BatchNorm2d]) -> None:
        super().__init__()
        self.bns = bns

    def preact_bns(self) -> dict[str, nn.BatchNorm2d]:
        return self.bns


def _fill(module: nn.Module, first_seed: int) -> None:
    """Parameters, in registration order, set to 0.5 g(shape, first_seed + i), as the script
    did with mdistiller's modules (the same shapes in the same order)."""
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.copy_(0.5 * g(tuple(p.shape), first_seed + i))


def test_ofd_matches_mdistiller_forward_train():
    s_shapes = TapShapes({"stem": (2, 8, 8), "stage1_pre": (3, 4, 4), "stage2_pre": (5, 2, 2)},
                         preact_taps=("stage1_pre", "stage2_pre"))  # fmt: skip
    t_shapes = TapShapes({"stem": (2, 8, 8), "stage1_pre": (4, 8, 8), "stage2_pre": (6, 2, 2)},
                         preact_taps=("stage1_pre", "stage2_pre"))  # fmt: skip
    d = create_distiller("ofd", s_shapes, t_shapes).double()
    assert d.weight == 1e-3 and d.ce_weight == 1.0 and d.teacher_mode == "train"
    bn1, bn2 = nn.BatchNorm2d(4).double(), nn.BatchNorm2d(6).double()
    with torch.no_grad():
        bn1.weight.copy_(g((4,), 205)), bn1.bias.copy_(g((4,), 206))
        bn2.weight.copy_(g((6,), 207)), bn2.bias.copy_(0.3 * g((6,), 208))
    with pytest.raises(RuntimeError, match="bind_teacher"):
        d({}, {}, torch.zeros(B))
    d.bind_teacher(_Teacher({"stage1_pre": bn1, "stage2_pre": bn2}))
    md_margins = [
        [-1.03214430809021, -0.8554825782775879, -0.5449273586273193, -0.9786098003387451],
        [-0.8838620781898499, -0.37036699056625366, -0.37406495213508606, -0.14040297269821167,
         -0.15173381567001343, -0.9318831562995911],
    ]  # fmt: skip
    for mine, md in zip(d.margins(), md_margins, strict=True):
        assert torch.equal(mine.flatten(), torch.tensor(md, dtype=torch.float32).double())
    _fill(d.connectors, 210)
    p1, p2 = g((B, 3, 4, 4), 201).requires_grad_(), g((B, 5, 2, 2), 202).requires_grad_()
    s = {"stage1_pre": p1, "stage2_pre": p2}
    t = {"stage1_pre": g((B, 4, 8, 8), 203), "stage2_pre": g((B, 6, 2, 2), 204)}
    (loss,) = d(s, t, torch.zeros(B)).values()
    assert close(loss, 0.04226359972542951, 1e-9)
    loss.backward()
    md_p1 = [0.00014305007624259344, -6.426570306301241e-05, 4.5029114934779466e-05]
    assert close(p1.grad[0, :, 1, 2], md_p1, 1e-6)
    md_p2 = [-3.13569806444165e-05, -0.0002233151240553205, -0.00046823991512345245,
             -0.00026063108744950455, 0.0005101533505629633]  # fmt: skip
    assert close(p2.grad[2, :, 0, 1], md_p2, 1e-6)
    assert close((p1.grad**2).sum(), 1.5855695170573488e-06, 1e-6)
    assert close((p2.grad**2).sum(), 3.9772512206534415e-06, 1e-6)
    conv0 = d.connectors[0][0].weight.grad[:, 0, 0, 0]
    md_conv0 = [-5.245265629048324e-05, 0.0001830266695472561, 0.00014232203886018093,
                -0.0004506617731909549]  # fmt: skip
    assert close(conv0, md_conv0, 1e-6)
    # the margins are state: a fresh distiller loading it is bound to the same values
    again = create_distiller("ofd", s_shapes, t_shapes).double()
    again.load_state_dict(d.state_dict())
    assert again.bound and all(
        torch.equal(a, b) for a, b in zip(again.margins(), d.margins(), strict=True)
    )


def test_reviewkd_matches_mdistiller_forward_train():
    s_shapes = TapShapes(
        {"stem": (2, 8, 8), "stage1": (3, 4, 4), "stage2": (5, 2, 2), "pool": (6,)},
        feature_taps=("stem", "stage1", "stage2"),  # mdistiller's feats, f0 included
    )
    t_shapes = TapShapes(
        {"stem": (2, 8, 8), "stage1_pre": (4, 8, 8), "stage2_pre": (7, 4, 4), "pool": (9,)},
        preact_taps=("stage1_pre", "stage2_pre"),
    )
    d = create_distiller("reviewkd", s_shapes, t_shapes).double()
    assert d.weight == 5.0 and d.teacher_mode == "eval"
    # f0 falls off as in mdistiller: levels pair the deepest entries of both lists
    assert d.student_taps == ("stage1", "stage2", "pool")
    assert d.teacher_taps == ("stage1_pre", "stage2_pre", "pool")
    assert d.extra_parameters() == 1292  # mdistiller's get_extra_parameters for these shapes
    shapes = [tuple(p.shape) for p in d.parameters()]
    assert shapes[:3] == [(6, 6, 1, 1), (6,), (6,)] and shapes[-2:] == [(2, 12, 1, 1), (2,)]
    _fill(d.abfs, 310)
    f1 = g((B, 3, 4, 4), 301).requires_grad_()
    f2 = g((B, 5, 2, 2), 302).requires_grad_()
    pooled = g((B, 6), 303).requires_grad_()
    s = {"stem": g((B, 2, 8, 8), 300), "stage1": f1, "stage2": f2, "pool": pooled}
    t = {"stage1_pre": g((B, 4, 8, 8), 304), "stage2_pre": g((B, 7, 4, 4), 305)}
    t["pool"] = g((B, 9), 306)
    # mdistiller's epoch 10 (counted from 1) is our 0-based 9: warm-up factor 1/2
    (loss,) = d(s, t, torch.zeros(B), epoch=9).values()
    assert close(loss, 8.83077579301024, 1e-9)
    loss.backward()
    md_f1 = [0.0018669690295044109, -0.003241944332918498, 0.0006137558351208975]
    assert close(f1.grad[0, :, 1, 2], md_f1, 1e-6)
    md_f2 = [-0.00954970918541035, -0.00018132390031664822, -0.0007418304890030791,
             -0.000766995854098995, 0.0007715279400505827]  # fmt: skip
    assert close(f2.grad[2, :, 0, 1], md_f2, 1e-6)
    md_pooled = [0.021292689544547595, 0.0039978236441942, -0.008389835735682737,
                 -0.005027836136333923, 0.0020356950129163673, -0.010845296463744904]  # fmt: skip
    assert close(pooled.grad[1], md_pooled, 1e-6)
    assert close((f1.grad**2).sum(), 0.0034271201535841806, 1e-6)
    assert close((f2.grad**2).sum(), 0.0018529835484158458, 1e-6)
    assert close((pooled.grad**2).sum(), 0.3471809480741879, 1e-6)
    att = d.abfs[-1].att[0]  # the shallowest level's attention conv
    md_att = [-0.015412128589499516, 0.0005856750853587299, -0.020667396770670466,
              0.03139453478310445]  # fmt: skip
    assert close(att.weight.grad.flatten()[:4], md_att, 1e-6)
    assert close(att.bias.grad.sum(), -0.00882424009122781, 1e-6)
    assert s["stem"].grad is None and all(v.grad is None for v in t.values())


def test_reviewkd_warmup_counts_like_mdistiller_or_the_authors():
    shapes = named_model_shapes("resnet8", 10, (3, 32, 32))
    d = create_distiller("reviewkd", shapes, shapes)
    assert [d.warmup_factor(e) for e in (0, 9, 19, 30)] == [0.05, 0.5, 1.0, 1.0]
    rv = create_distiller("reviewkd", shapes, shapes, warmup_from=0)
    assert [rv.warmup_factor(e) for e in (0, 10, 20)] == [0.0, 0.5, 1.0]
    assert create_distiller("reviewkd", shapes, shapes, warmup_epochs=0).warmup_factor(0) == 1.0
    with pytest.raises(DistillerConfigError, match="warmup_from"):
        create_distiller("reviewkd", shapes, shapes, warmup_from=2)


# ---------------------------------------------------------------------------------------------
# Benchmark pairs: ReviewKD's tables, both methods on every pair
# ---------------------------------------------------------------------------------------------

# teacher, student: in_channels, out_channels (shallow to deep), shapes, out_shapes (deepest
# first), extra parameters; the fact sheet's section 3.9 (RV's build_review_kd)
# fmt: off
REVIEW = {
    ("resnet32x4", "resnet8x4"): ([64, 128, 256, 256], [64, 128, 256, 256], [1, 8, 16, 32], [1, 8, 16, 32], 1_808_774),
    ("resnet56", "resnet20"): ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], [1, 8, 16, 32], 114_278),
    ("resnet110", "resnet32"): ([16, 32, 64, 64], [16, 32, 64, 64], [1, 8, 16, 32], [1, 8, 16, 32], 114_278),
    ("wrn_40_2", "wrn_16_2"): ([32, 64, 128, 128], [32, 64, 128, 128], [1, 8, 16, 32], [1, 8, 16, 32], 453_830),
    ("wrn_40_2", "wrn_40_1"): ([16, 32, 64, 64], [32, 64, 128, 128], [1, 8, 16, 32], [1, 8, 16, 32], 216_006),
    ("vgg13", "vgg8"): ([128, 256, 512, 512, 512], [128, 256, 512, 512, 512], [1, 4, 4, 8, 16], [1, 4, 4, 8, 16], 9_847_560),
    ("vgg13", "mobilenetv2"): ([12, 16, 48, 160, 1280], [128, 256, 512, 512, 512], [1, 2, 4, 8, 16], [1, 4, 4, 8, 16], 9_640_712),
    ("resnet50", "mobilenetv2"): ([12, 16, 48, 160, 1280], [256, 512, 1024, 2048, 2048], [1, 2, 4, 8, 16], [1, 4, 8, 16, 32], 27_933_192),
    ("resnet50", "vgg8"): ([128, 256, 512, 512, 512], [256, 512, 1024, 2048, 2048], [1, 4, 4, 8, 16], [1, 4, 8, 16, 32], 28_140_040),
    ("resnet32x4", "shufflev1"): ([240, 480, 960, 960], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32], 4_607_366),
    ("wrn_40_2", "shufflev1"): ([240, 480, 960, 960], [32, 64, 128, 128], [1, 4, 8, 16], [1, 8, 16, 32], 2_984_646),
    ("resnet32x4", "shufflev2"): ([116, 232, 464, 1024], [64, 128, 256, 256], [1, 4, 8, 16], [1, 8, 16, 32], 4_195_718),
}
# fmt: on
# the thirteen CIFAR-100 pairs of the fact sheet's section 6.1 (res110 -> res20 has no RV row)
PAIRS = [*REVIEW, ("resnet110", "resnet20")]
AVAILABLE = [p for p in PAIRS if p[0] in MODELS and p[1] in MODELS]


def _shapes(name: str) -> TapShapes:
    return named_model_shapes(name, 100, (3, 32, 32))


@pytest.mark.parametrize("pair", [p for p in REVIEW if p in AVAILABLE], ids="->".join)
def test_reviewkd_reproduces_the_authors_tables(pair):
    in_c, out_c, shapes, out_shapes, extra = REVIEW[pair]
    t, s = (_shapes(name) for name in pair)
    d = create_distiller("reviewkd", s, t)
    assert [s[k][0] for k in d.student_taps] == in_c
    assert [t[k][0] for k in d.teacher_taps] == out_c
    assert [abf.conv1[0].in_channels for abf in d.abfs][::-1] == in_c
    assert [abf.conv2[0].out_channels for abf in d.abfs][::-1] == out_c
    assert [1 if len(s[k]) == 1 else s[k][1] for k in reversed(d.student_taps)] == shapes
    assert [h for h, _ in d.out_hw] == out_shapes
    assert d.extra_parameters() == extra
    assert [abf.att is None for abf in d.abfs] == [True] + [False] * (len(in_c) - 1)
    # the authors' ImageNet cap on the middle width
    if in_c[-1] > 256:
        capped = create_distiller("reviewkd", s, t, max_mid_channels=256)
        assert capped.abfs[0].conv1[0].out_channels == 256


def _ofd_extra(s: TapShapes, t: TapShapes, d: OFD) -> int:
    """conv1x1 s_c -> t_c plus BN per stage, by formula."""
    pairs = [(s[a][0], t[b][0]) for a, b in zip(d.student_taps, d.teacher_taps, strict=True)]
    return sum(sc * tc + 2 * tc for sc, tc in pairs)


@pytest.mark.parametrize("pair", AVAILABLE, ids="->".join)
def test_both_methods_train_on_every_benchmark_pair(pair):
    """Connectors and ABFs come from the tap shapes, so every pair builds (mdistiller's OFD
    fails on five cross-architecture pairs); one forward and backward, losses finite."""
    torch.manual_seed(0)
    teacher, student = (create_model(name, 100) for name in pair)
    t_shapes, s_shapes = (_shapes(name) for name in pair)
    x = torch.randn(2, 3, 32, 32)
    for method in ("ofd", "reviewkd"):
        d = create_distiller(method, s_shapes, t_shapes)
        d.bind_teacher(teacher)
        if method == "ofd":
            assert d.extra_parameters() == _ofd_extra(s_shapes, t_shapes, d)
            assert all((m <= 0).all() for m in d.margins())
        teacher.train(d.teacher_mode == "train")
        with torch.no_grad():
            t = teacher(x, d.teacher_taps)
        s = student(x, ("logits", *d.student_taps))
        losses = d(s, t, torch.zeros(2, dtype=torch.long), epoch=30)
        loss = sum(losses.values())
        assert torch.isfinite(loss) and loss > 0
        student.zero_grad()
        loss.backward()
        grads = [p.grad for p in student.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(gr).all() for gr in grads)
        assert all(p.grad is not None for p in d.parameters() if p.requires_grad)


def test_each_models_preact_bns_are_its_preact_taps():
    """Every family that declares pre-activation taps names the BN behind each one (the
    channels agree); ShuffleNetV2 cannot (half of its tap comes from no BN) and is refused as
    an OFD teacher in one line."""
    for name in MODELS:
        model = kd_train.blank_model(name, 10, 32)
        if name == "shufflev2":
            with pytest.raises(NotImplementedError):
                model.preact_bns()
            continue
        bns = model.preact_bns()
        assert set(bns) == set(model.preact_taps), name
        shapes = _shapes(name) if bns else {}
        for tap, bn in bns.items():
            assert isinstance(bn, nn.BatchNorm2d) and bn.num_features == shapes[tap][0], tap
    if "shufflev2" in MODELS:
        shapes = _shapes("shufflev2")
        d = create_distiller("ofd", _shapes("resnet8"), shapes)
        with pytest.raises(DistillerConfigError, match="OFD teacher"):
            d.bind_teacher(create_model("shufflev2", 10))


def test_wrn_preact_taps_are_the_bn_outputs():
    """mdistiller's WRN preact_feats: each stage sum through the BN that follows it."""
    model = create_model("wrn_16_2", 10).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 32, 32))
    for tap, bn in model.preact_bns().items():
        k = tap[len("stage") : -len("_bn")]
        assert torch.allclose(out[tap], bn(out[f"stage{k}_pre"]))
        assert torch.allclose(out[f"stage{k}"], torch.relu(out[tap]))


def test_ofd_validation():
    shapes = _shapes("resnet8")
    with pytest.raises(DistillerConfigError, match="connector_kernel"):
        create_distiller("ofd", shapes, shapes, connector_kernel=2)
    no_preact = TapShapes({"stage1": (4, 8, 8), "pool": (4,)})
    with pytest.raises(DistillerConfigError, match="pre-activation"):
        create_distiller("ofd", shapes, no_preact)
    d = create_distiller("ofd", shapes, shapes, connector_kernel=3)
    assert d.connectors[0][0].kernel_size == (3, 3) and d.connectors[0][0].padding == (1, 1)
    d.bind_teacher(create_model("resnet8", 10))
    s = {k: torch.randn(2, *shapes[k]) for k in d.student_taps}
    assert torch.isfinite(d(s, s, torch.zeros(2))["ofd"])


# ---------------------------------------------------------------------------------------------
# End to end: the CLI on the bundled MNIST, the teacher's mode, resuming
# ---------------------------------------------------------------------------------------------

TINY = ["--dataset", "mnist", "--epochs", "1", "--batch-size", "100", "--train-limit", "200"]
TINY += ["--test-limit", "100", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def mnist_teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kd")
    args = ["kd", "train-teacher", "--model", "resnet14", *TINY, "--outdir", str(out)]
    assert main([*args, "--data-dir", str(out / "none")]) == 0
    return out


@pytest.mark.parametrize("method", ["ofd", "reviewkd"])
def test_cli_distills_on_mnist(mnist_teacher: Path, method: str, monkeypatch) -> None:
    modes: list[bool] = []  # the teacher's training flag at each of its forwards
    run_taps = kd_train.run_taps

    def spy(model, x, taps, **kw):  # type: ignore[no-untyped-def]
        if "logits" not in taps:  # the student's calls always ask for its logits
            modes.append(model.training)
        return run_taps(model, x, taps, **kw)

    monkeypatch.setattr(kd_train, "run_taps", spy)
    args = ["kd", "distill", "--method", method, "--teacher", "resnet14", "--student", "resnet8"]
    args += [*TINY, "--outdir", str(mnist_teacher), "--data-dir", str(mnist_teacher / "none")]
    assert main(args) == 0
    (status,) = (mnist_teacher / "mnist" / method).rglob("status.json")
    assert json.loads(status.read_text())["status"] == "completed"
    metrics = json.loads((status.parent / "metrics.json").read_text())
    assert all(torch.isfinite(torch.tensor(metrics["train_loss"])))
    assert modes == [method == "ofd"] * 2  # two steps: OFD's teacher in train mode (as MD's)
    last = torch.load(status.parent / "last.pt", weights_only=True)
    if method == "ofd":  # the saved margins are those of the trained teacher's BNs
        (ck,) = (mnist_teacher / "mnist" / "teacher").rglob("best.pt")
        weights = torch.load(ck, weights_only=True)["weights"]
        bn = "layer1.1.bn2"  # resnet14: two blocks per stage, the last one's bn2
        want = ofd_margin(weights[f"{bn}.weight"], weights[f"{bn}.bias"])
        assert torch.equal(last["distiller"]["margin0"], want)


def test_ofd_resumes_to_the_uninterrupted_run(mnist_teacher: Path, tmp_path: Path) -> None:
    """The teacher runs in train mode, so its BN running statistics change during training and
    a resumed run starts from the checkpoint's; its train-mode forward never reads them, so the
    resumed run equals the uninterrupted one exactly."""
    (ck,) = (mnist_teacher / "mnist" / "teacher").rglob("best.pt")
    kw = dict(role="student", teacher="resnet14", method="ofd", epochs=2)
    whole = tiny(tmp_path / "a", teacher_checkpoint_path=str(ck), **kw)
    a = Path(run_experiment(whole)["dir"])
    part = whole.replace(outdir=str(tmp_path / "b"))
    assert run_experiment(part, stop_after=lambda e: e == 0)["status"] == "in_progress"
    b = Path(run_experiment(part)["dir"])
    last_a, last_b = (torch.load(d / "last.pt", weights_only=True) for d in (a, b))
    for key in ("model", "distiller"):
        assert last_a[key].keys() == last_b[key].keys()
        assert all(torch.equal(last_a[key][k], last_b[key][k]) for k in last_a[key]), key
    assert last_a["history"]["train_loss"] == last_b["history"]["train_loss"]


def test_registered_with_the_reference_weights():
    assert (OFD.name, OFD.default_weight, OFD.ce_weight) == ("ofd", 1e-3, 1.0)
    assert (ReviewKD.name, ReviewKD.default_weight, ReviewKD.ce_weight) == ("reviewkd", 5.0, 1.0)
    for cls in (OFD, ReviewKD):
        assert cls.__doc__ and "Reference" in cls.__doc__


def test_ofd_named_taps_give_mdistillers_imagenet_connectors() -> None:
    """mdistiller's R50 -> MobileNetV1 OFD: MobileNetV1's last three stages against ResNet50's
    stages 2-4, connectors 256->512, 512->1024, 1024->2048 (fact sheet 3.7)."""
    from sublim.kd.train import named_model_shapes

    s = named_model_shapes("mobilenetv1", 1000, (3, 224, 224))
    t = named_model_shapes("resnet50_imagenet", 1000, (3, 224, 224))
    taps = ["stage2_pre", "stage3_pre", "stage4_pre"]
    d = create_distiller("ofd", s, t, student_taps=taps, teacher_taps=taps)
    pairs = [(c[0].in_channels, c[0].out_channels) for c in d.connectors]
    assert pairs == [(256, 512), (512, 1024), (1024, 2048)]
    assert d.teacher_taps == tuple(taps)
    with pytest.raises(DistillerConfigError, match="together"):
        create_distiller("ofd", s, t, student_taps=taps)

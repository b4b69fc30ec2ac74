"""PKT, CC, VID and KDSVD against the reference code (RepDistiller, mdistiller).

Loss values are the fact sheet's section 8 rows (kd_benchmark_SPEC.md), produced by running the
reference files themselves in float64. Gradients were obtained the same way: the reference
classes (RepDistiller's distiller_zoo PKT, Correlation, VIDLoss, KDSVD and models.util.LinearEmbed;
mdistiller's kdsvd_loss) run on the same seeded float64 inputs, and a few numbers of each
gradient (sum, sum of absolute values, some entries) stored here as literals.
Inputs: g(shape, seed) = torch.manual_seed(seed); torch.randn(*shape, dtype=torch.float64).
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import pytest
import torch

from sublim.kd.losses import METHODS, create_distiller
from sublim.kd.losses.base import DistillerConfigError, TapShapes
from sublim.kd.losses.correlation import (
    cc_repdistiller_loss,
    kdsvd_losses,
    svd_vectors,
    taylor_rbf_correlation,
)
from sublim.kd.losses.info import pkt_loss

REL = 1e-9  # loss values: float64 against float64
GRAD_REL = 1e-7  # gradients


def g(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64)


def close(value: float | torch.Tensor, expected: float, rel: float = REL) -> bool:
    value = value.item() if isinstance(value, torch.Tensor) else value
    return math.isclose(value, expected, rel_tol=rel, abs_tol=0.0)


def check_grad(grad: torch.Tensor, ref: dict, rel: float = GRAD_REL) -> None:
    """`grad` against a reference record: {"sum", "abs", "at": {index: value}}."""
    assert math.isclose(grad.sum().item(), ref["sum"], rel_tol=rel, abs_tol=1e-15)
    assert math.isclose(grad.abs().sum().item(), ref["abs"], rel_tol=rel)
    for index, value in ref["at"].items():
        assert math.isclose(grad[index].item(), value, rel_tol=rel, abs_tol=1e-15), index


def test_generator_matches_the_fact_sheet():
    expected = [1.5409961082, -0.2934289058, -2.1787893821, 0.5684312773]
    assert all(close(a, b, 1e-9) for a, b in zip(g((4,), 0).tolist(), expected, strict=True))


# ---------------------------------------------------------------------------------------------
# PKT (rows 1 and 1b)
# ---------------------------------------------------------------------------------------------

PKT_GRAD = {  # d loss / d f_s, RepDistiller's PKT (== mdistiller's pkt_loss)
    "plain": {
        "sum": 0.003838802841211524,
        "abs": 0.018620974142832456,
        "at": {(0, 0): 0.00018541629964011585, (3, 5): -9.262455484897343e-05,
               (7, 15): 0.00014216963311824854},
    },
    "relu": {
        "sum": -0.006309881916888589,
        "abs": 0.012358737145770024,
        "at": {(0, 0): 3.1585785393629916e-06, (3, 5): -0.00010085034609429081,
               (7, 15): -6.151927085618795e-06},
    },
}  # fmt: skip


@pytest.mark.parametrize(
    ("relu", "expected"), [(False, 0.004299382802), (True, 0.001405224542)], ids=["1", "1b"]
)
def test_pkt_matches_reference(relu: bool, expected: float) -> None:
    f_s, f_t = g((8, 16), 1), g((8, 32), 2)
    if relu:
        f_s, f_t = f_s.relu(), f_t.relu()
    f_s.requires_grad_()
    d = create_distiller("pkt", {"pool": (16,)}, {"pool": (32,)}, weight=1.0)
    assert (d.default_weight, d.ce_weight, d.extra_parameters()) == (30000.0, 1.0, 0)
    loss = d({"pool": f_s}, {"pool": f_t}, torch.zeros(8, dtype=torch.long))["pkt"]
    assert close(loss, expected) and close(pkt_loss(f_s, f_t), expected)
    loss.backward()
    check_grad(f_s.grad, PKT_GRAD["relu" if relu else "plain"])


# ---------------------------------------------------------------------------------------------
# CC (row 2, and the embeddings' gradients)
# ---------------------------------------------------------------------------------------------


def test_cc_loss_on_embeddings_matches_reference():
    e_s, e_t = g((8, 128), 3).requires_grad_(), g((8, 128), 4).requires_grad_()
    loss = cc_repdistiller_loss(e_s, e_t)
    assert close(loss, 159.1997336)
    loss.backward()
    ref = {"sum": -4.435715886302981, "abs": 284.5376267373806,
           "at": {(0, 0): -0.03623708543417739, (4, 7): 0.1609604349353716,
                  (7, 127): 0.03047488818362124}}  # fmt: skip
    check_grad(e_s.grad, ref)
    check_grad(-e_t.grad, ref)  # |e_s - e_t|: antisymmetric


def test_cc_trains_both_embeddings_as_reference():
    """RepDistiller's LinearEmbed pair with fixed seeded weights: the loss and the gradients of
    both embeddings (the teacher's is trained too) and of the student feature."""
    d = create_distiller("cc", {"pool": (16,)}, {"pool": (24,)}, weight=1.0).double()
    assert (d.default_weight, d.extra_parameters()) == (0.02, 16 * 128 + 128 + 24 * 128 + 128)
    with torch.no_grad():
        d.embed_s.weight.copy_(0.1 * g((128, 16), 7))
        d.embed_s.bias.copy_(0.1 * g((128,), 8))
        d.embed_t.weight.copy_(0.1 * g((128, 24), 9))
        d.embed_t.bias.copy_(0.1 * g((128,), 10))
    f_s, f_t = g((8, 16), 5).requires_grad_(), g((8, 24), 6).requires_grad_()
    loss = d({"pool": f_s}, {"pool": f_t}, torch.zeros(8, dtype=torch.long))["cc"]
    assert close(loss, 31.102883623631687)
    loss.backward()
    assert f_t.grad is None  # the teacher's feature is detached; its embedding is not
    check_grad(d.embed_s.weight.grad, {
        "sum": 9.245888255399562, "abs": 585.2828933263634,
        "at": {(0, 0): -0.2625307966518587, (5, 3): -0.21090676658245056,
               (127, 15): 0.1855135901396281}})  # fmt: skip
    check_grad(d.embed_s.bias.grad, {
        "sum": 6.143205786449806, "abs": 41.716479462234986,
        "at": {(0,): -0.2560253531522598, (100,): -0.028954072644892706}})  # fmt: skip
    check_grad(d.embed_t.weight.grad, {
        "sum": 12.120732818108273, "abs": 991.3065528384957,
        "at": {(0, 0): -0.13978965514848785, (5, 3): -0.011168692780285733,
               (127, 23): -0.09115434172372297}})  # fmt: skip
    check_grad(f_s.grad, {
        "sum": -2.1824663967987865, "abs": 26.533395222350187,
        "at": {(0, 0): 0.007206372083575436, (7, 15): -0.12294203860677304}})  # fmt: skip


def test_cc_gaussian_kernel_is_the_papers_taylor_expansion():
    """The kernel option: the P-th order expansion by its formula, converging to the Gaussian
    RBF of the normalised features; the loss is the mean squared difference of the matrices."""
    e_s, e_t = g((6, 5), 60), g((6, 7), 61)
    x = e_s / e_s.norm(dim=1, keepdim=True)
    cos = x @ x.t()
    gamma = 0.4
    by_hand = sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * cos**p
                  for p in range(3))  # fmt: skip
    assert torch.allclose(taylor_rbf_correlation(e_s, gamma, 2), by_hand, rtol=1e-12)
    exact = torch.exp(-gamma * torch.cdist(x, x).pow(2))
    assert torch.allclose(taylor_rbf_correlation(e_s, gamma, 30), exact, rtol=1e-10)
    d = create_distiller(
        "cc", {"pool": (5,)}, {"pool": (7,)}, kernel="gaussian", embed_dim=None, weight=1.0
    )
    assert d.extra_parameters() == 0
    y = e_t / e_t.norm(dim=1, keepdim=True)
    k_t = sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * (y @ y.t()) ** p
              for p in range(3))  # fmt: skip
    loss = d({"pool": e_s}, {"pool": e_t}, torch.zeros(6, dtype=torch.long))["cc"]
    assert close(loss, float(((by_hand - k_t) ** 2).mean()), 1e-12)
    with pytest.raises(DistillerConfigError, match="embed_dim: invalid value None"):
        create_distiller("cc", {"pool": (5,)}, {"pool": (7,)}, embed_dim=None)


# ---------------------------------------------------------------------------------------------
# VID (row 3)
# ---------------------------------------------------------------------------------------------

VID_LOG_SCALE = math.log(math.exp(5 - 1e-5) - 1)  # 4.993229183: the variance starts at 5


def _vid(variance: str = "learned"):
    d = create_distiller(
        "vid", {"stage1": (4, 8, 8)}, {"stage1": (6, 4, 4)}, variance=variance
    ).double()
    pair = d.pairs[0]
    with torch.no_grad():
        for i, seed in ((0, 10), (2, 11), (4, 12)):
            pair.regressor[i].weight.copy_(0.3 * g(tuple(pair.regressor[i].weight.shape), seed))
        pair.log_scale.fill_(VID_LOG_SCALE)
    return d, pair


@pytest.mark.parametrize("variance", ["learned", "fixed"])
def test_vid_matches_reference(variance: str) -> None:
    d, pair = _vid(variance)
    s = g((2, 4, 8, 8), 13).requires_grad_()  # pooled to 4x4
    t = g((2, 6, 4, 4), 14)
    loss = d({"stage1": s}, {"stage1": t}, torch.zeros(2, dtype=torch.long))["vid"]
    assert close(loss, 0.9182711143)
    loss.backward()
    check_grad(s.grad, {
        "sum": -0.0011241110039871523, "abs": 0.013419457308922952,
        "at": {(0, 0, 0, 0): 3.7262747752874115e-05, (1, 3, 7, 7): 2.883271727123539e-05,
               (0, 2, 5, 1): 6.589289632260126e-05}})  # fmt: skip
    check_grad(pair.regressor[0].weight.grad, {
        "sum": 0.00022338165712021212, "abs": 0.010780784619935318,
        "at": {(0, 0, 0, 0): -0.0007020740684819402, (5, 3, 0, 0): -0.0010424600927594217,
               (2, 1, 0, 0): 0.0012586792751934364}})  # fmt: skip
    check_grad(pair.regressor[4].weight.grad, {
        "sum": -0.004223430899677232, "abs": 0.00950480671922057,
        "at": {(0, 0, 0, 0): -1.4415459798063247e-05, (5, 5, 0, 0): -0.0002840475828280491}})  # fmt: skip
    regressors = 6 * 4 + 6 * 6 + 6 * 6
    if variance == "learned":  # RepDistiller: a Parameter, trained and counted
        assert isinstance(pair.log_scale, torch.nn.Parameter)
        assert "pairs.0.log_scale" in dict(d.named_parameters())
        ref = [0.013768076551184637, 0.012600007660232839, 0.01258684799090366,
               0.013047953165013497, 0.012621799709202068, 0.012144105091864005]  # fmt: skip
        assert all(close(a, b, GRAD_REL) for a, b in zip(pair.log_scale.grad, ref, strict=True))
        assert d.extra_parameters() == regressors + 6
    else:  # mdistiller: a buffer, never trained, the variance stays 5
        assert not isinstance(pair.log_scale, torch.nn.Parameter)
        assert "pairs.0.log_scale" in dict(d.named_buffers())
        assert "pairs.0.log_scale" not in dict(d.named_parameters())
        assert pair.log_scale.grad is None and not pair.log_scale.requires_grad
        assert d.extra_parameters() == regressors


def test_vid_starts_at_variance_five():
    d = create_distiller("vid", {"stage1": (4, 8, 8)}, {"stage1": (6, 4, 4)})
    var = torch.nn.functional.softplus(d.pairs[0].log_scale.double()) + 1e-5
    assert torch.allclose(var, torch.full((6,), 5.0, dtype=torch.float64), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# KDSVD (row 6)
# ---------------------------------------------------------------------------------------------

KDSVD_SHAPES = {"stage1": (8, 4, 4), "stage2": (8, 4, 4), "stage3": (16, 2, 2)}
# d loss / d s_i: RepDistiller's KDSVD, and mdistiller's kdsvd_loss with its float32 cast
# removed (float64 throughout; with the cast its gradients carry float32 rounding)
KDSVD_GRAD = {
    "repdistiller": [
        {"sum": 0.038395126895529236, "abs": 0.673313087697458,
         "at": {(0, 0, 0, 0): -0.00029301159045372165, (3, 7, 1, 1): 0.0021725133279823046,
                (1, 2, 1, 0): 0.001405288397473911}},
        {"sum": 0.0636862060436717, "abs": 2.6154760810420177,
         "at": {(0, 0, 0, 0): -0.0006961797870958358, (3, 7, 1, 1): -3.6276231784587674e-05,
                (1, 2, 1, 0): -0.005402261710359126}},
        {"sum": 0.026174059976747252, "abs": 0.31956143917772273,
         "at": {(0, 0, 0, 0): 0.00021204873087539032, (3, 7, 1, 1): -0.0015515179708268344,
                (1, 2, 1, 0): -0.0001333001029400494}},
    ],
    "mdistiller": [
        {"sum": -0.13283665507771614, "abs": 1.1427418149289401,
         "at": {(0, 0, 0, 0): 0.0008797726673637745, (3, 7, 1, 1): -0.0037535519756946986,
                (1, 2, 1, 0): -4.277456877719167e-05}},
        {"sum": -0.36450864583371184, "abs": 3.5462779998769935,
         "at": {(0, 0, 0, 0): 1.5182637916962484e-05, (3, 7, 1, 1): -0.006167068998532857,
                (1, 2, 1, 0): 0.0016281625974601914}},
        {"sum": -0.009960928873213218, "abs": 0.22676333362575932,
         "at": {(0, 0, 0, 0): -0.0003723515208317982, (3, 7, 1, 1): 0.0003322198074301476,
                (1, 2, 1, 0): 0.001206895233519683}},
    ],
}  # fmt: skip


def _kdsvd_inputs() -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    s = [g((4, 8, 4, 4), 40), g((4, 8, 4, 4), 41), g((4, 16, 2, 2), 42)]
    t = [g((4, 8, 4, 4), 43), g((4, 8, 4, 4), 44), g((4, 16, 2, 2), 45)]
    return s, t


@pytest.mark.parametrize("matrix", ["repdistiller", "mdistiller"])
def test_kdsvd_matches_reference(matrix: str) -> None:
    """Random Gaussian maps: distinct singular values, where the SVD's gradient is defined."""
    s, t = _kdsvd_inputs()
    for x in s:
        x.requires_grad_()
    d = create_distiller("kdsvd", KDSVD_SHAPES, KDSVD_SHAPES, matrix=matrix)
    assert (d.default_weight, d.k, d.extra_parameters()) == (1.0, 1, 0)
    names = tuple(KDSVD_SHAPES)
    s_taps, t_taps = dict(zip(names, s, strict=True)), dict(zip(names, t, strict=True))
    loss = d(s_taps, t_taps, torch.zeros(4, dtype=torch.long))["kdsvd"]
    if matrix == "repdistiller":
        levels = kdsvd_losses(s, t)
        assert close(levels[0], 0.1485216465) and close(levels[1], 0.1745878089)
        assert close(loss, levels[0].item() + levels[1].item(), 1e-12)
    else:  # the fact sheet's 0.1158991233 is mdistiller's float32 SVD; float64 here
        assert close(loss, 0.11589925337939802)
    loss.backward()
    for x, ref in zip(s, KDSVD_GRAD[matrix], strict=True):
        check_grad(x.grad, ref)


def test_kdsvd_mdistiller_in_float32_matches_its_published_value():
    s, t = _kdsvd_inputs()
    loss = sum(kdsvd_losses([x.float() for x in s], [x.float() for x in t], matrix="mdistiller"))
    assert loss.dtype == torch.float32 and close(loss, 0.1158991233, 1e-6)


def test_kdsvd_signs_and_vectors_follow_torch_svd():
    """torch.linalg.svd's V (not V^H) with the signs of the deprecated torch.svd RepDistiller
    calls: the per-level values are invariant to neither, so equal values pin both."""
    x = g((3, 6, 2, 2), 46)
    s, v = svd_vectors(x, 4)
    mat = x.reshape(3, 6, 4).transpose(1, 2)
    _, s_ref, v_ref = torch.svd(mat)
    assert torch.allclose(v, torch.nn.functional.normalize(v_ref[:, :, :4], dim=1), atol=1e-12)
    assert torch.allclose(s, torch.nn.functional.normalize(s_ref[:, :4], dim=1), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Registry: real model pairs, extra parameters (fact sheet section 5), bad input
# ---------------------------------------------------------------------------------------------

# teacher -> student: (VID extra, CC extra), RepDistiller's construction (fact sheet section 5)
SECTION5 = {
    ("vgg13", "mobilenetv2"): (1_325_952, 229_632),
    ("resnet50", "mobilenetv2"): (11_533_056, 426_240),
    ("resnet50", "vgg8"): (12_881_664, 327_936),
    ("resnet32x4", "shufflev1"): (495_040, 155_904),
    ("resnet32x4", "shufflev2"): (328_384, 164_096),
    ("wrn_40_2", "shufflev1"): (204_512, 139_520),
}


@functools.cache
def model_shapes(name: str) -> TapShapes:
    """Tap shapes of a model of the zoo (built once per name; only the shapes are kept)."""
    from sublim.kd.models import MODELS, create_model

    if name not in MODELS:
        pytest.skip(f"{name} is not among the models yet")
    return TapShapes.of(create_model(name, 100))


@pytest.mark.parametrize(("teacher", "student"), sorted(SECTION5))
def test_extra_parameters_match_the_fact_sheet(teacher: str, student: str) -> None:
    vid, cc = SECTION5[teacher, student]
    s, t = model_shapes(student), model_shapes(teacher)
    assert create_distiller("vid", s, t).extra_parameters() == vid
    assert create_distiller("cc", s, t).extra_parameters() == cc
    assert create_distiller("pkt", s, t).extra_parameters() == 0
    # mdistiller's VID counts (and trains) the regressors only
    log_scales = sum(t[tap][0] for tap in t.feature_taps[: len(s.feature_taps)])
    assert create_distiller("vid", s, t, variance="fixed").extra_parameters() == vid - log_scales


@pytest.mark.parametrize(
    ("teacher", "student"), [("resnet32x4", "resnet8x4"), ("wrn_40_2", "wrn_16_2")]
)
def test_same_width_pairs_build_every_method(teacher: str, student: str) -> None:
    s, t = model_shapes(student), model_shapes(teacher)
    for method in ("pkt", "cc", "vid", "kdsvd"):
        d = create_distiller(method, s, t)
        assert d.weight == METHODS[method].default_weight
    assert create_distiller("kdsvd", s, t).student_taps == s.feature_taps
    assert create_distiller("vid", s, t).teacher_taps == t.feature_taps


def test_kdsvd_refuses_pairs_it_cannot_compare() -> None:
    s, t = model_shapes("mobilenetv2"), model_shapes("vgg13")
    with pytest.raises(DistillerConfigError, match="equal channel counts.*12.*128"):
        create_distiller("kdsvd", s, t)
    with pytest.raises(DistillerConfigError, match="equal widths.*'stage4' has 2"):
        create_distiller("kdsvd", s, t, matrix="mdistiller")
    with pytest.raises(DistillerConfigError, match="at least two"):
        create_distiller(
            "kdsvd", KDSVD_SHAPES, KDSVD_SHAPES, student_taps=["stage1"], teacher_taps=["stage1"]
        )


@pytest.mark.parametrize(
    ("method", "params", "words"),
    [
        ("vid", {"variance": "foo"}, "variance: invalid value 'foo'; vid expects one of learned"),
        ("cc", {"kernel": "rbf"}, "kernel: invalid value 'rbf'; cc expects one of repdistiller"),
        ("kdsvd", {"matrix": "cxhw"}, "matrix: invalid value 'cxhw'; kdsvd expects one of"),
        ("kdsvd", {"k": 0}, "k: invalid value 0"),
        ("vid", {"init_variance": 0.0}, "init_variance: invalid value 0.0"),
        ("cc", {"embed_dim": 0}, "embed_dim: invalid value 0"),
        ("pkt", {"eps": -1.0}, "eps: invalid value -1.0"),
    ],
)
def test_bad_parameters_are_named(method: str, params: dict, words: str) -> None:
    with pytest.raises(DistillerConfigError, match=words):
        create_distiller(method, KDSVD_SHAPES | {"pool": (8,)}, KDSVD_SHAPES | {"pool": (8,)},
                         **params)  # fmt: skip


# ---------------------------------------------------------------------------------------------
# End to end: the CLI on the bundled MNIST
# ---------------------------------------------------------------------------------------------


def test_each_method_trains_through_the_cli_on_mnist(tmp_path: Path) -> None:
    """A resnet8 teacher, then one tiny distillation per method (100 images in two batches, one
    epoch): each completes with finite losses and a nonzero method term. One thread: the
    machine's cores are shared, and oversubscribed threads make these small steps slow."""
    from sublim.cli.main import main

    common = ["--dataset", "mnist", "--data-dir", str(tmp_path / "none"), "--outdir",
              str(tmp_path / "o"), "--epochs", "1", "--batch-size", "50", "--train-limit",
              "100", "--test-limit", "50", "--device", "cpu", "--quiet"]  # fmt: skip
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["kd", "train-teacher", "--model", "resnet8", *common]) == 0
        for method in ("pkt", "cc", "vid", "kdsvd"):
            args = ["kd", "distill", "--method", method, "--teacher", "resnet8", "--student"]
            assert main([*args, "resnet8", *common]) == 0, method
            (metrics,) = (tmp_path / "o").glob(f"mnist/{method}/*/*/metrics.json")
            history = json.loads(metrics.read_text())
            assert all(math.isfinite(x) for x in history["train_loss"]), method
            term = history["terms"][-1][method]
            assert math.isfinite(term) and term > 0, (method, history["terms"])
    finally:
        torch.set_num_threads(threads)

"""Numeric fixtures for every distillation method in `sublim.kd.losses`.

Each method is checked against a second implementation written differently (numpy float64,
loops over samples, explicit formulas; convolutions and batch norm re-done by hand) on small
fixed random inputs, and where possible against a tiny case worked by hand. Then: tap and
parameter validation, extra-parameter counts by formula, gradients to the student taps only,
`combine`, DKD's warm-up, and CUDA agreement where a GPU exists.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from sublim.errors import UserError
from sublim.kd.losses import (
    DKD,
    METHODS,
    Distiller,
    combine,
    create_distiller,
)
from sublim.kd.losses.base import TapShapes

B = 5
K = 7
S_SHAPES = {
    "stem": (3, 8, 8),
    "stage1": (3, 8, 8),
    "stage2": (4, 4, 4),
    "stage3": (6, 2, 2),
    "stage3_pre": (6, 2, 2),
    "pool": (6,),
    "logits": (K,),
    "L0": (3, 8, 8),  # generalized layers (fkd reads these)
    "L1": (6, 2, 2),
}
T_SHAPES = {
    "stem": (4, 8, 8),
    "stage1": (4, 8, 8),
    "stage2": (6, 4, 4),
    "stage3": (8, 2, 2),
    "stage3_pre": (8, 2, 2),
    "pool": (8,),
    "logits": (K,),
    "L0": (4, 8, 8),
    "L1": (8, 2, 2),
}


def make_taps(
    shapes: dict[str, tuple[int, ...]], seed: int, *, grad: bool = False, relu: bool = True
) -> dict[str, Tensor]:
    """Fixed random float64 taps; feature maps post-ReLU-like (non-negative) by default."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name, shape in shapes.items():
        x = torch.randn(B, *shape, generator=gen, dtype=torch.float64)
        if relu and len(shape) == 3:
            x = x.abs()
        out[name] = x.requires_grad_(grad)
    return out


def targets(seed: int = 0) -> Tensor:
    return torch.randint(0, K, (B,), generator=torch.Generator().manual_seed(seed))


def build(name: str, s_shapes=S_SHAPES, t_shapes=T_SHAPES, **params) -> Distiller:
    if name == "fkd":  # it distils listed generalized layers; tests/test_kd_fkd.py covers it
        params = {"student_layers": [0, 1], "teacher_layers": [0, 1], **params}
    if name == "ab" and s_shapes is S_SHAPES:  # the shapes above have one pre-activation tap
        taps = ["stage1", "stage2", "stage3_pre"]
        params = {"student_taps": taps, "teacher_taps": taps, **params}
    if name == "fsp" and s_shapes is S_SHAPES:  # channels must agree: 4@4, 6@2 vs 4@8, 6@4
        pairs = {"student_taps": ["stage2", "stage3"], "teacher_taps": ["stage1", "stage2"]}
        params = {**pairs, **params}
    if name == "kdsvd" and s_shapes is S_SHAPES:  # RepDistiller's needs equal channels
        params = {"matrix": "mdistiller", **params}
    if name in ("crd", "crd_kd"):  # a small contrast: 8 negatives
        params = {"nce_k": 8, **params}
    if name in ("ofd", "reviewkd") and s_shapes is S_SHAPES:  # one pre-activation tap each
        s_shapes = TapShapes(S_SHAPES, preact_taps=("stage3_pre",))
        t_shapes = TapShapes(T_SHAPES, preact_taps=("stage3_pre",))
    torch.manual_seed(0)  # module init only; the numbers checked do not depend on it
    d = create_distiller(name, s_shapes, t_shapes, **params).double()
    if name == "ofd":  # margins come from the teacher's BatchNorm (bind_teacher); fixed here
        d.set_margins([torch.full((t_shapes["stage3_pre"][0],), -0.5)])
    if d.needs_index:  # CRD: a memory bank over a training set of 4 * B samples, 4 classes
        d.bind_data(torch.arange(4 * B) % 4, seed=0)
    return d


def call(d: Distiller, s, t, y: Tensor, epoch: int = 0) -> dict[str, Tensor]:
    """A distiller's losses; CRD's also get the batch's dataset indices and fixed negatives."""
    if not d.needs_index:
        return d(s, t, y, epoch=epoch)
    index = torch.arange(len(y))
    negatives = (index[:, None] + 1 + torch.arange(d.nce_k)) % (4 * B)
    contrast = torch.cat([index[:, None], negatives], 1).to(y.device)
    return d(s, t, y, epoch, index=index.to(y.device), step=0, contrast_idx=contrast)


def npy(x: Tensor) -> np.ndarray:
    return x.detach().double().cpu().numpy()


# ---------------------------------------------------------------------------------------------
# Plain numpy building blocks for the references
# ---------------------------------------------------------------------------------------------


def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def np_kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) with 0 log 0 = 0."""
    m = p > 0
    return float(np.sum(p[m] * np.log(p[m] / q[m])))


def np_conv2d(x, w, b=None, stride=1, pad=0):
    """Direct convolution: x [B, C, H, W], w [O, C, kh, kw]."""
    n, _, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("bckl,ockl->bo", patch, w)
    return out if b is None else out + b[None, :, None, None]


def np_conv_transpose2d(x, w, b, stride=1, pad=0):
    """Transposed convolution by scattering: x [B, C, H, W], w [C, O, kh, kw]."""
    n, _, h, wd = x.shape
    _, o, kh, kw = w.shape
    full = np.zeros((n, o, (h - 1) * stride + kh, (wd - 1) * stride + kw))
    for i in range(h):
        for j in range(wd):
            full[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw] += np.einsum(
                "bc,cokl->bokl", x[:, :, i, j], w
            )
    out = full[:, :, pad : full.shape[2] - pad, pad : full.shape[3] - pad]
    return out + b[None, :, None, None]


def np_bn_train(x, bn: nn.BatchNorm2d):
    """Batch norm with batch statistics (biased variance), as in training mode."""
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = x.var(axis=(0, 2, 3), keepdims=True)
    y = (x - mean) / np.sqrt(var + bn.eps)
    return y * npy(bn.weight)[None, :, None, None] + npy(bn.bias)[None, :, None, None]


def np_leaky(x, slope=0.1):
    return np.where(x > 0, x, slope * x)


def np_pool_to(x: np.ndarray, h: int, w: int) -> np.ndarray:
    """Average-pool [B, C, H, W] to (h, w) for integer ratios."""
    n, c, hh, ww = x.shape
    return x.reshape(n, c, h, hh // h, w, ww // w).mean(axis=(3, 5))


def np_seq(x: np.ndarray, seq: nn.Sequential) -> np.ndarray:
    """Run a Sequential of convs / transposed convs / BN / (Leaky)ReLU in numpy."""
    for m in seq:
        if isinstance(m, nn.ConvTranspose2d):
            x = np_conv_transpose2d(x, npy(m.weight), npy(m.bias), m.stride[0], m.padding[0])
        elif isinstance(m, nn.Conv2d):
            b = None if m.bias is None else npy(m.bias)
            x = np_conv2d(x, npy(m.weight), b, m.stride[0], m.padding[0])
        elif isinstance(m, nn.BatchNorm2d):
            x = np_bn_train(x, m)
        elif isinstance(m, nn.LeakyReLU):
            x = np_leaky(x, m.negative_slope)
        elif isinstance(m, nn.ReLU):
            x = np.maximum(x, 0)
        else:  # pragma: no cover
            raise TypeError(m)
    return x


def close(a: float | Tensor, b: float, tol: float = 1e-9) -> bool:
    a = float(a.detach()) if isinstance(a, Tensor) else float(a)
    return math.isclose(a, b, rel_tol=tol, abs_tol=tol)


# ---------------------------------------------------------------------------------------------
# KD
# ---------------------------------------------------------------------------------------------


def ref_kd(s: np.ndarray, t: np.ndarray, temp: float) -> float:
    total = 0.0
    for zs, zt in zip(s, t, strict=True):
        total += np_kl(np_softmax(zt / temp), np_softmax(zs / temp))
    return total / len(s) * temp**2


def test_kd_matches_reference():
    s, t = make_taps(S_SHAPES, 1), make_taps(T_SHAPES, 2)
    d = build("kd")
    assert (d.temperature, d.weight, d.ce_weight) == (4.0, 0.9, 0.1)
    out = d(s, t, targets())
    assert set(out) == {"kd"}
    assert close(out["kd"], 0.9 * ref_kd(npy(s["logits"]), npy(t["logits"]), 4.0))


def test_kd_two_classes_by_hand():
    # teacher probabilities (0.8, 0.2), student (0.5, 0.5) at T = 4
    temp = 4.0
    t = {"logits": temp * torch.tensor([[math.log(0.8), math.log(0.2)]], dtype=torch.float64)}
    s = {"logits": torch.zeros(1, 2, dtype=torch.float64)}
    d = create_distiller("kd", {"logits": (2,)}, {"logits": (2,)}, weight=1.0)
    kl = 0.8 * math.log(0.8 / 0.5) + 0.2 * math.log(0.2 / 0.5)
    assert close(d(s, t, torch.tensor([0]))["kd"], 16 * kl)
    # identical distributions: no loss
    assert close(d(t, t, torch.tensor([0]))["kd"], 0.0)


# ---------------------------------------------------------------------------------------------
# Logit standardisation
# ---------------------------------------------------------------------------------------------


def np_zscore(z: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    return (z - z.mean()) / (eps + z.std(ddof=1))


def test_logit_std_matches_reference():
    s, t = make_taps(S_SHAPES, 3), make_taps(T_SHAPES, 4)
    d = build("logit_std")
    # CE weight 0.1: the authors' current config (CFG.KD.LOSS.CE_WEIGHT in their cfg.py; this
    # fixture said 1.0, the value before their March 2024 change)
    assert (d.temperature, d.weight, d.ce_weight, d.eps) == (2.0, 9.0, 0.1, 1e-7)
    zs = np.stack([np_zscore(z) for z in npy(s["logits"])])
    zt = np.stack([np_zscore(z) for z in npy(t["logits"])])
    assert close(d(s, t, targets())["logit_std"], 9.0 * ref_kd(zs, zt, 2.0))


def test_logit_std_eps_expresses_vkd_normalized():
    """The KD_wo_CE paper's VKDNormalized: z-scores with eps 1e-6, T = 4, and 16 times the KL
    without T^2 (weight 1 here: `ref_kd`, like the method, includes the T^2 = 16)."""
    s, t = make_taps(S_SHAPES, 3), make_taps(T_SHAPES, 4)
    s["logits"] = s["logits"] * 1e-6  # a near-constant row, where eps matters
    d = build("logit_std", temperature=4.0, weight=1.0, eps=1e-6)
    zs = np.stack([np_zscore(z, 1e-6) for z in npy(s["logits"])])
    zt = np.stack([np_zscore(z, 1e-6) for z in npy(t["logits"])])
    assert close(d(s, t, targets())["logit_std"], ref_kd(zs, zt, 4.0))
    default = build("logit_std", temperature=4.0, weight=1.0)(s, t, targets())["logit_std"]
    assert not close(default, ref_kd(zs, zt, 4.0), 1e-3)
    with pytest.raises(ValueError, match="eps"):
        build("logit_std", eps=-1.0)


def test_logit_std_two_classes_by_hand_and_invariance():
    # z-score of (1, 3): mean 2, sample std sqrt(2) -> (-1/sqrt 2, 1/sqrt 2); same for (0, 10)
    d = create_distiller("logit_std", {"logits": (2,)}, {"logits": (2,)}, weight=1.0)
    s = {"logits": torch.tensor([[3.0, 1.0]], dtype=torch.float64)}
    t = {"logits": torch.tensor([[0.0, 10.0]], dtype=torch.float64)}
    a_s = 1 / (math.sqrt(2) + 1e-7)  # the code's 1e-7 in the denominator
    a_t = 5 / (math.sqrt(50) + 1e-7)
    p_t = np_softmax(np.array([-a_t, a_t]) / 2)
    p_s = np_softmax(np.array([a_s, -a_s]) / 2)
    assert close(d(s, t, torch.tensor([0]))["logit_std"], 4 * np_kl(p_t, p_s))
    # invariant to a per-sample affine map of either side's logits
    s2, t2 = make_taps(S_SHAPES, 5), make_taps(T_SHAPES, 6)
    d7 = build("logit_std")
    base = d7(s2, t2, targets())["logit_std"]
    t3 = {"logits": 3.0 * t2["logits"] + 5.0}
    s3 = {"logits": 0.5 * s2["logits"] - 2.0}
    assert close(d7(s3, t3, targets())["logit_std"], float(base), 1e-6)


# ---------------------------------------------------------------------------------------------
# DKD
# ---------------------------------------------------------------------------------------------


def ref_dkd(s, t, y, alpha, beta, temp) -> tuple[float, float]:
    """TCKD and NCKD with the non-target distribution renormalised explicitly."""
    tckd = nckd = 0.0
    for zs, zt, c in zip(s, t, y, strict=True):
        ps, pt = np_softmax(zs / temp), np_softmax(zt / temp)
        bs, bt = np.array([ps[c], 1 - ps[c]]), np.array([pt[c], 1 - pt[c]])
        tckd += np_kl(bt, bs)
        keep = np.arange(len(zs)) != c
        nckd += np_kl(pt[keep] / pt[keep].sum(), ps[keep] / ps[keep].sum())
    n = len(s)
    return alpha * tckd / n * temp**2, beta * nckd / n * temp**2


def test_dkd_matches_reference():
    s, t = make_taps(S_SHAPES, 7), make_taps(T_SHAPES, 8)
    y = targets(1)
    d = build("dkd")
    assert (d.alpha, d.beta, d.temperature, d.warmup_epochs) == (1.0, 8.0, 4.0, 20)
    out = d(s, t, y, epoch=30)
    tckd, nckd = ref_dkd(npy(s["logits"]), npy(t["logits"]), y.numpy(), 1.0, 8.0, 4.0)
    assert close(out["dkd_tckd"], tckd) and close(out["dkd_nckd"], nckd)


def test_dkd_one_hot_teacher_by_hand():
    # T = 1; teacher ~one-hot on class 0; student probabilities (1/4, 1/4, 1/2)
    shapes = {"logits": (3,)}
    d = create_distiller("dkd", shapes, shapes, temperature=1.0, warmup_epochs=0)
    t = {"logits": torch.tensor([[60.0, 0.0, 0.0]], dtype=torch.float64)}
    s = {"logits": torch.tensor([[0.0, 0.0, math.log(2.0)]], dtype=torch.float64)}
    out = d(s, t, torch.tensor([0]))
    # TCKD = KL((1, 0) || (1/4, 3/4)) = log 4
    assert close(out["dkd_tckd"], math.log(4.0), 1e-12)
    # NCKD = 8 * KL((1/2, 1/2) || (1/3, 2/3))
    assert close(out["dkd_nckd"], 8 * (0.5 * math.log(1.5) + 0.5 * math.log(0.75)), 1e-12)


def test_dkd_warmup_factor():
    d = build("dkd")
    # 0-based epoch index; mdistiller's 1-based min(epoch / 20, 1)
    assert [d.warmup_factor(e) for e in (0, 10, 19, 20, 30)] == [0.05, 0.55, 1.0, 1.0, 1.0]
    s, t, y = make_taps(S_SHAPES, 9), make_taps(T_SHAPES, 10), targets(2)
    full = d(s, t, y, epoch=30)
    for epoch, factor in ((0, 0.05), (10, 0.55), (20, 1.0), (30, 1.0)):
        out = d(s, t, y, epoch=epoch)
        for key in full:
            assert close(out[key], factor * float(full[key]), 1e-12)
    assert create_distiller("dkd", S_SHAPES, T_SHAPES, warmup_epochs=0).warmup_factor(0) == 1.0


def test_dkd_saturated_student_is_finite():
    shapes = {"logits": (3,)}
    d = create_distiller("dkd", shapes, shapes, warmup_epochs=0)
    s = {"logits": torch.tensor([[800.0, -800.0, 0.0]], requires_grad=True)}
    t = {"logits": torch.tensor([[1.0, 2.0, 3.0]])}
    total = sum(d(s, t, torch.tensor([0])).values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(s["logits"].grad).all()


# ---------------------------------------------------------------------------------------------
# FitNets
# ---------------------------------------------------------------------------------------------


def ref_fitnets(d, s_map: np.ndarray, t_map: np.ndarray) -> float:
    reg = d.regressor
    if isinstance(reg.conv, nn.ConvTranspose2d):
        x = np_conv_transpose2d(
            s_map, npy(reg.conv.weight), npy(reg.conv.bias), reg.conv.stride[0], 1
        )
    else:
        x = np_conv2d(
            s_map, npy(reg.conv.weight), npy(reg.conv.bias), reg.conv.stride[0], reg.conv.padding[0]
        )
    x = np.maximum(np_bn_train(x, reg.bn), 0)
    return float(((x - t_map) ** 2).mean())


@pytest.mark.parametrize(
    ("s_hw", "t_hw", "kernel"),
    [(4, 4, (1, 1)), (8, 4, (3, 3)), (2, 4, (4, 4)), (5, 4, (2, 2))],
    ids=["same", "student-2x", "student-half", "valid-conv"],
)
def test_fitnets_matches_reference_and_counts(s_hw, t_hw, kernel):
    s_shapes = {"stage2": (3, s_hw, s_hw)}
    t_shapes = {"stage2": (5, t_hw, t_hw)}
    d = build("fitnets", s_shapes, t_shapes)
    assert d.regressor.conv.kernel_size == kernel
    assert d.student_taps == ("stage2",) and d.teacher_taps == ("stage2",)
    s, t = make_taps(s_shapes, 11), make_taps(t_shapes, 12)
    out = d(s, t, targets())
    assert close(out["fitnets"], 100.0 * ref_fitnets(d, npy(s["stage2"]), npy(t["stage2"])))
    # conv weights + conv bias + BN affine
    kh, kw = kernel
    assert d.extra_parameters() == 3 * 5 * kh * kw + 5 + 2 * 5


def test_fitnets_by_hand():
    # 1 -> 1 channel, conv weight 2, BN at identity (eval, running var 1 - eps): relu(2x)
    shapes = {"stage2": (1, 1, 2)}
    d = create_distiller("fitnets", shapes, shapes).double().eval()
    with torch.no_grad():
        d.regressor.conv.weight.fill_(2.0)
        d.regressor.conv.bias.zero_()
        d.regressor.bn.running_var.fill_(1.0 - d.regressor.bn.eps)
    s = {"stage2": torch.tensor([[[[1.0, -1.0]]]], dtype=torch.float64)}
    t = {"stage2": torch.tensor([[[[2.0, 1.0]]]], dtype=torch.float64)}
    # regressed (2, 0) vs (2, 1): MSE 1/2, times 100
    assert close(d(s, t, torch.tensor([0]))["fitnets"], 50.0)


def test_fitnets_taps_are_parameters_and_smaller_student_is_refused():
    d = create_distiller("fitnets", S_SHAPES, T_SHAPES, guided="stage1", hint="stage2")
    assert d.student_taps == ("stage1",) and d.teacher_taps == ("stage2",)
    with pytest.raises(ValueError, match="guided"):
        create_distiller("fitnets", {"stage2": (3, 3, 3)}, {"stage2": (3, 8, 8)})


# ---------------------------------------------------------------------------------------------
# AT
# ---------------------------------------------------------------------------------------------


def ref_at(pairs: list[tuple[np.ndarray, np.ndarray]], p: float = 2.0) -> float:
    total = 0.0
    for fs, ft in pairs:
        if fs.shape[2] > ft.shape[2]:
            fs = np_pool_to(fs, *ft.shape[2:])
        elif fs.shape[2] < ft.shape[2]:
            ft = np_pool_to(ft, *fs.shape[2:])
        sq = []
        for a, b in zip(fs, ft, strict=True):  # per sample
            qa = (a**p).mean(axis=0).ravel()
            qb = (b**p).mean(axis=0).ravel()
            sq.append((qa / np.linalg.norm(qa) - qb / np.linalg.norm(qb)) ** 2)
        total += float(np.mean(sq))
    return total


def test_at_matches_reference_default_stages():
    s, t = make_taps(S_SHAPES, 13), make_taps(T_SHAPES, 14)
    d = build("at")
    assert d.student_taps == ("stage1", "stage2", "stage3") == d.teacher_taps
    expected = ref_at([(npy(s[k]), npy(t[k])) for k in ("stage1", "stage2", "stage3")])
    assert close(d(s, t, targets())["at"], 1000.0 * expected)


def test_at_pools_mismatched_sizes():
    s, t = make_taps(S_SHAPES, 15), make_taps(T_SHAPES, 16)
    d = build("at", student_taps=("stage1", "stage3"), teacher_taps=("stage2", "stage2"))
    pairs = [(npy(s["stage1"]), npy(t["stage2"])), (npy(s["stage3"]), npy(t["stage2"]))]
    assert close(d(s, t, targets())["at"], 1000.0 * ref_at(pairs))


def test_at_by_hand():
    # student map (1, 0; 0, 0) -> (1, 0, 0, 0); teacher all ones -> (1/2, 1/2, 1/2, 1/2)
    shapes = {"stage1": (1, 2, 2)}
    d = create_distiller("at", shapes, shapes)
    s = {"stage1": torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])}
    t = {"stage1": torch.ones(1, 1, 2, 2)}
    # squared differences (1/4, 1/4, 1/4, 1/4): mean 1/4, times 1000
    assert close(d(s, t, torch.tensor([0]))["at"], 250.0, 1e-6)


# ---------------------------------------------------------------------------------------------
# FT
# ---------------------------------------------------------------------------------------------


def _ft_factors(d, s, t) -> tuple[np.ndarray, np.ndarray]:
    factor_t = np_seq(npy(t["stage3"]), d.paraphraser.encoder)
    factor_s = np_seq(npy(s["stage3"]), d.translator)
    assert factor_t.shape == factor_s.shape == (B, 4, 2, 2)  # rate 0.5 of 8 teacher channels
    return factor_s, factor_t


def test_ft_default_is_repdistillers_formula():
    """RepDistiller's FactorTransfer (p1 = 2, p2 = 1): mean |normalize(mean_c F_s^2) -
    normalize(mean_c F_t^2)|. This fixture held the FT authors' formula (now `formula="authors"`)
    before the default followed the benchmark most papers compare with."""
    s, t = make_taps(S_SHAPES, 17), make_taps(T_SHAPES, 18)
    d = build("ft")
    assert (d.formula, d.paraphraser_lr, d.weight) == ("repdistiller", 0.01, 200.0)
    assert d.student_taps == ("stage3",) and d.teacher_taps == ("stage3",)
    factor_s, factor_t = _ft_factors(d, s, t)
    diffs = []
    for a, b in zip(factor_s, factor_t, strict=True):  # per sample
        qa, qb = (a**2).mean(axis=0).ravel(), (b**2).mean(axis=0).ravel()
        diffs.append(np.abs(qa / np.linalg.norm(qa) - qb / np.linalg.norm(qb)))
    assert close(d(s, t, targets())["ft"], 200.0 * float(np.mean(diffs)))
    rec = np_seq(factor_t, d.paraphraser.decoder)
    assert close(d.paraphraser_loss(t), float(((rec - npy(t["stage3"])) ** 2).mean()))


def test_ft_authors_formula():
    """The FT paper's eq. (3) as in the authors' code: L1 of the L2-normalised whole factors."""
    s, t = make_taps(S_SHAPES, 17), make_taps(T_SHAPES, 18)
    d = build("ft", formula="authors")
    factor_s, factor_t = _ft_factors(d, s, t)
    norm = [
        (a.ravel() / np.linalg.norm(a), b.ravel() / np.linalg.norm(b))
        for a, b in zip(factor_s, factor_t, strict=True)
    ]
    expected = np.mean([np.abs(a - b) for a, b in norm])
    assert close(d(s, t, targets())["ft"], 200.0 * expected)
    assert not close(build("ft")(s, t, targets())["ft"], 200.0 * expected, 1e-3)
    with pytest.raises(ValueError, match="formula"):
        build("ft", formula="paper")
    with pytest.raises(ValueError, match="paraphraser_lr"):
        build("ft", paraphraser_lr=0.0)
    assert build("ft", paraphraser_lr=None).paraphraser_lr is None  # the recipe's --lr


def test_ft_parameter_count_and_frozen_paraphraser():
    d = build("ft")
    c, k, cs = 8, 4, 6  # teacher channels, factor channels, student channels
    paraphraser = (9 * c * c + c) + (9 * c * k + k) + (9 * k * k + k)  # encoder
    paraphraser += (9 * k * k + k) + (9 * k * c + c) + (9 * c * c + c)  # decoder
    translator = (9 * cs * cs + 3 * cs) + (9 * cs * k + 3 * k) + (9 * k * k + 3 * k)  # + BN
    assert sum(p.numel() for p in d.paraphraser.parameters()) == paraphraser
    assert d.extra_parameters() == paraphraser + translator
    s, t = make_taps(S_SHAPES, 19, grad=True), make_taps(T_SHAPES, 20, grad=True)
    d(s, t, targets())["ft"].backward()
    assert all(p.grad is None for p in d.paraphraser.parameters())
    assert all(p.grad is not None for p in d.translator.parameters())
    d.zero_grad()
    d.paraphraser_loss(t).backward()
    assert all(p.grad is not None for p in d.paraphraser.encoder.parameters())
    assert t["stage3"].grad is None


# ---------------------------------------------------------------------------------------------
# RKD
# ---------------------------------------------------------------------------------------------


def np_smooth_l1(x: np.ndarray, y: np.ndarray) -> float:
    d = np.abs(x - y)
    return float(np.where(d < 1, 0.5 * d**2, d - 0.5).mean())


def ref_rkd(es: np.ndarray, et: np.ndarray) -> tuple[float, float]:
    n = len(es)

    def distances(e):
        d = np.array([[math.dist(e[i], e[j]) for j in range(n)] for i in range(n)])
        off = [d[i, j] for i in range(n) for j in range(n) if i != j]
        return d / np.mean(off)

    def cosines(e):
        a = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    if j != i and k != i:
                        u, v = e[j] - e[i], e[k] - e[i]
                        a[i, j, k] = u @ v / (np.linalg.norm(u) * np.linalg.norm(v))
        return a

    return (
        25.0 * np_smooth_l1(distances(es), distances(et)),
        50.0 * np_smooth_l1(cosines(es), cosines(et)),
    )


def test_rkd_matches_reference():
    s, t = make_taps(S_SHAPES, 21), make_taps(T_SHAPES, 22)
    d = build("rkd")
    out = d(s, t, targets())
    dist, angle = ref_rkd(npy(s["pool"]), npy(t["pool"]))
    assert close(out["rkd_distance"], dist) and close(out["rkd_angle"], angle)


def test_rkd_three_points_by_hand():
    # teacher: a 3-4-5 right triangle; student: a unit right isosceles triangle
    shapes = {"pool": (2,)}
    d = create_distiller("rkd", shapes, shapes)
    t = {"pool": torch.tensor([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]], dtype=torch.float64)}
    s = {"pool": torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)}
    out = d(s, t, torch.zeros(3, dtype=torch.long))
    # distances / mean: teacher (3, 4, 5) / 4, student (1, 1, sqrt 2) / ((2 + sqrt 2) / 3)
    mu = (2 + math.sqrt(2)) / 3
    diffs = [3 / 4 - 1 / mu, 4 / 4 - 1 / mu, 5 / 4 - math.sqrt(2) / mu]
    huber = [0.5 * x * x if abs(x) < 1 else abs(x) - 0.5 for x in diffs]
    assert close(out["rkd_distance"], 25.0 * 2 * sum(huber) / 9)  # each pair twice, 9 entries
    # angle cosines: right angle at the origin on both; 3/5 and 4/5 vs sqrt(2)/2 elsewhere
    r = math.sqrt(2) / 2
    angle = 2 * (0.5 * (0.6 - r) ** 2 + 0.5 * (0.8 - r) ** 2) / 27  # (j, k) and (k, j)
    assert close(out["rkd_angle"], 50.0 * angle)


# ---------------------------------------------------------------------------------------------
# NST
# ---------------------------------------------------------------------------------------------


def ref_nst(pairs: list[tuple[np.ndarray, np.ndarray]]) -> float:
    total = 0.0
    for fs, ft in pairs:
        if fs.shape[2] > ft.shape[2]:
            fs = np_pool_to(fs, *ft.shape[2:])
        elif fs.shape[2] < ft.shape[2]:
            ft = np_pool_to(ft, *fs.shape[2:])
        per_sample = []
        for a, b in zip(fs, ft, strict=True):
            xs = [c.ravel() / np.linalg.norm(c) for c in a]
            xt = [c.ravel() / np.linalg.norm(c) for c in b]

            def k(u, v):
                return (u @ v) ** 2

            mmd = np.mean([k(u, v) for u in xt for v in xt])
            mmd += np.mean([k(u, v) for u in xs for v in xs])
            mmd -= 2 * np.mean([k(u, v) for u in xs for v in xt])
            per_sample.append(mmd)
        total += float(np.mean(per_sample))
    return total


def test_nst_matches_reference():
    s, t = make_taps(S_SHAPES, 23), make_taps(T_SHAPES, 24)
    d = build("nst")
    assert d.student_taps == ("stage1", "stage2", "stage3")
    expected = ref_nst([(npy(s[k]), npy(t[k])) for k in ("stage1", "stage2", "stage3")])
    assert close(d(s, t, targets())["nst"], 50.0 * expected)
    d2 = build("nst", student_taps=("stage1",), teacher_taps=("stage2",))  # 8x8 vs 4x4
    assert close(d2(s, t, targets())["nst"], 50.0 * ref_nst([(npy(s["stage1"]), npy(t["stage2"]))]))


def test_nst_by_hand():
    # one channel each: s = (1, 0), t = (1, 1)/sqrt 2 -> MMD = 1 + 1 - 2 * (1/sqrt 2)^2 = 1
    shapes = {"stage1": (1, 1, 2)}
    d = create_distiller("nst", shapes, shapes)
    s = {"stage1": torch.tensor([[[[1.0, 0.0]]]])}
    t = {"stage1": torch.tensor([[[[3.0, 3.0]]]])}
    assert close(d(s, t, torch.tensor([0]))["nst"], 50.0, 1e-6)


# ---------------------------------------------------------------------------------------------
# SP
# ---------------------------------------------------------------------------------------------


def ref_sp(fs: np.ndarray, ft: np.ndarray) -> float:
    n = len(fs)

    def g(f):
        q = f.reshape(n, -1)
        m = np.array([[q[i] @ q[j] for j in range(n)] for i in range(n)])
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    return float(np.sum((g(ft) - g(fs)) ** 2) / n**2)


def test_sp_matches_reference():
    s, t = make_taps(S_SHAPES, 25), make_taps(T_SHAPES, 26)
    d = build("sp")
    assert d.student_taps == ("stage3",) and d.teacher_taps == ("stage3",)
    assert close(d(s, t, targets())["sp"], 3000.0 * ref_sp(npy(s["stage3"]), npy(t["stage3"])))


def test_sp_two_samples_by_hand():
    # student rows (1, 0), (1, 1): G = [[1, 1], [1, 2]] -> rows (1, 1)/sqrt 2, (1, 2)/sqrt 5
    # teacher rows (1, 0), (0, 1): G = I
    shapes = {"pool": (2,)}
    d = create_distiller("sp", shapes, shapes, student_tap="pool", teacher_tap="pool")
    s = {"pool": torch.tensor([[1.0, 0.0], [1.0, 1.0]], dtype=torch.float64)}
    t = {"pool": torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)}
    r2, r5 = math.sqrt(2), math.sqrt(5)
    sq = (1 / r2 - 1) ** 2 + (1 / r2) ** 2 + (1 / r5) ** 2 + (2 / r5 - 1) ** 2
    assert close(d(s, t, torch.tensor([0, 1]))["sp"], 3000.0 * sq / 4)


# ---------------------------------------------------------------------------------------------
# SimKD
# ---------------------------------------------------------------------------------------------


def test_simkd_matches_reference_and_counts():
    s, t = make_taps(S_SHAPES, 27), make_taps(T_SHAPES, 28)
    d = build("simkd")
    assert (d.weight, d.ce_weight) == (1.0, 0.0)
    proj = np_seq(npy(s["stage3"]), d.projector)
    assert close(d(s, t, targets())["simkd"], float(((proj - npy(t["stage3"])) ** 2).mean()))
    torch.manual_seed(1)
    classifier = nn.Linear(8, K).double()
    logits = npy(d.student_logits(s["stage3"], classifier))
    expected = proj.mean(axis=(2, 3)) @ npy(classifier.weight).T + npy(classifier.bias)
    assert np.allclose(logits, expected, rtol=1e-10, atol=1e-10)
    cs, mid, ct = 6, 4, 8  # bottleneck factor 2
    assert d.extra_parameters() == cs * mid + 2 * mid + 9 * mid * mid + 2 * mid + mid * ct + 2 * ct


def test_simkd_pools_larger_student_map():
    s_shapes, t_shapes = {"stage3": (3, 4, 4)}, {"stage3": (4, 2, 2)}
    d = build("simkd", s_shapes, t_shapes)
    s, t = make_taps(s_shapes, 29), make_taps(t_shapes, 30)
    proj = np_seq(np_pool_to(npy(s["stage3"]), 2, 2), d.projector)
    assert close(d(s, t, targets())["simkd"], float(((proj - npy(t["stage3"])) ** 2).mean()))


# ---------------------------------------------------------------------------------------------
# All methods: gradients, devices, registry, validation, combine
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(METHODS))
def test_gradients_reach_student_taps_only(name):
    d = build(name)
    s = make_taps(S_SHAPES, 31, grad=True)
    t = make_taps(T_SHAPES, 32, grad=True)
    out = call(d, s, t, targets(), epoch=25)
    assert out and all(v.ndim == 0 and torch.isfinite(v) for v in out.values())
    sum(out.values()).backward()
    for tap in d.student_taps:
        assert s[tap].grad is not None and s[tap].grad.abs().sum() > 0, tap
    assert all(x.grad is None for x in t.values())
    unused = set(S_SHAPES) - set(d.student_taps)
    assert all(s[k].grad is None for k in unused)
    if name == "simkd":  # the student's path to its logits goes through the projector
        d.zero_grad()
        classifier = nn.Linear(8, K).double().requires_grad_(False)
        d.student_logits(s["stage3"], classifier).sum().backward()
        assert all(p.grad is not None for p in d.projector.parameters())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", sorted(METHODS))
def test_cuda_matches_cpu(name, monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # compare at float32 accuracy
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    d = build(name).float()
    s, t = make_taps(S_SHAPES, 33), make_taps(T_SHAPES, 34)
    s, t = {k: v.float() for k, v in s.items()}, {k: v.float() for k, v in t.items()}
    y = targets()
    gpu = copy.deepcopy(d).cuda()  # before the CPU call, which updates CRD's memory bank
    cpu = call(d, s, t, y, epoch=25)
    out = call(
        gpu, {k: v.cuda() for k, v in s.items()}, {k: v.cuda() for k, v in t.items()}, y.cuda(), 25
    )
    for key, value in cpu.items():
        assert out[key].device.type == "cuda"
        assert torch.allclose(out[key].cpu(), value, rtol=1e-4, atol=1e-5), key


def test_registry_and_defaults():
    weights = {name: cls.default_weight for name, cls in METHODS.items()}
    assert weights == {  # RepDistiller's beta, mdistiller's feature weight where only it has one
        "kd": 0.9, "logit_std": 9.0, "fitnets": 100.0, "at": 1000.0, "ft": 200.0,
        "rkd": 1.0, "nst": 50.0, "sp": 3000.0, "dkd": 1.0, "simkd": 1.0, "fkd": 1.0,
        "pkt": 30000.0, "cc": 0.02, "vid": 1.0, "kdsvd": 1.0, "ofd": 1e-3, "reviewkd": 5.0,
        "ab": 1.0, "fsp": 50.0, "crd": 0.8, "crd_kd": 0.8, "kd_dot": 0.9,
    }  # fmt: skip
    for name, cls in METHODS.items():
        assert cls.name == name and cls.__doc__ and "Reference" in cls.__doc__
    rkd = build("rkd")
    assert (rkd.distance_weight, rkd.angle_weight) == (25.0, 50.0)
    assert build("kd", weight=2.0).weight == 2.0
    for name in ("kd", "logit_std", "rkd", "at", "nst", "sp", "dkd"):
        assert build(name).extra_parameters() == 0


def test_weight_scales_every_loss():
    s, t, y = make_taps(S_SHAPES, 35), make_taps(T_SHAPES, 36), targets()
    for name in sorted(METHODS):
        one, three = build(name, weight=1.0), build(name, weight=3.0)
        a, b = call(one, s, t, y, epoch=30), call(three, s, t, y, epoch=30)
        for key in a:
            if (name, key) == ("crd_kd", "kd"):  # RepDistiller's -a: its own kd_weight
                assert close(b[key], a[key].item(), 1e-10)
                continue
            assert close(b[key], 3.0 * a[key].item(), 1e-10), (name, key)


def test_unknown_method_and_parameter():
    with pytest.raises(ValueError, match=r"'hinton'.*ab, at, cc, crd, crd_kd, dkd, fitnets"):
        create_distiller("hinton", S_SHAPES, T_SHAPES)
    with pytest.raises(ValueError, match=r"tempreature.*temperature"):
        create_distiller("kd", S_SHAPES, T_SHAPES, tempreature=3)
    with pytest.raises(ValueError, match="temperature"):
        create_distiller("kd", S_SHAPES, T_SHAPES, temperature=0)
    with pytest.raises(UserError):  # the CLI prints these as one line
        create_distiller("fitnets", S_SHAPES, T_SHAPES, hint_layer=2)


@pytest.mark.parametrize(
    ("name", "params", "tap"),
    [
        ("fitnets", {"guided": "stage9"}, "stage9"),
        ("fitnets", {"hint": "stage9"}, "stage9"),
        ("fitnets", {"guided": "pool"}, "pool"),  # not a feature map
        (
            "at",
            {"student_taps": ("stage1", "block7"), "teacher_taps": ("stage1", "stage2")},
            "block7",
        ),
        ("nst", {"student_taps": ("stage1",), "teacher_taps": ("stage0",)}, "stage0"),
        ("rkd", {"teacher_tap": "embedding"}, "embedding"),
        ("sp", {"student_tap": "stage5"}, "stage5"),
        ("ft", {"teacher_tap": "logits"}, "logits"),
        ("simkd", {"student_tap": "stage4"}, "stage4"),
    ],
)
def test_missing_or_wrong_taps_are_named(name, params, tap):
    with pytest.raises(ValueError, match=tap):
        create_distiller(name, S_SHAPES, T_SHAPES, **params)


def test_logit_and_pairing_validation():
    with pytest.raises(ValueError, match="logits"):
        create_distiller("kd", S_SHAPES, {**T_SHAPES, "logits": (K + 1,)})
    with pytest.raises(ValueError, match="logits"):
        create_distiller("dkd", {"pool": (3,)}, T_SHAPES)
    with pytest.raises(ValueError, match="student_taps"):
        create_distiller("at", S_SHAPES, T_SHAPES, student_taps="stage1")
    deeper = {**T_SHAPES, "stage4": (8, 1, 1)}
    with pytest.raises(ValueError, match="teacher_taps"):
        create_distiller("at", S_SHAPES, deeper)  # 3 student stages vs 4 teacher stages
    d = create_distiller("at", S_SHAPES, deeper, teacher_taps=("stage2", "stage3", "stage4"))
    assert d.teacher_taps == ("stage2", "stage3", "stage4")
    # last-feature methods default to each side's deepest stage output
    for name in ("ft", "sp", "simkd"):
        d = create_distiller(name, S_SHAPES, deeper)
        assert d.student_taps == ("stage3",) and d.teacher_taps == ("stage4",)
    with pytest.raises(ValueError, match="stageN"):
        create_distiller("sp", {"pool": (3,)}, T_SHAPES)


def test_declared_feature_taps_are_the_defaults():
    """A TapShapes' feature_taps (a model's benchmark features, e.g. a WRN's raw residual sums)
    are what the feature methods read by default; SimKD keeps the map the classifier pools."""
    features = ("stage1_pre", "stage2_pre", "stage3_pre")
    s = TapShapes({**S_SHAPES, **{f"{k}_pre": S_SHAPES[k] for k in ("stage1", "stage2")}}, features)
    t = TapShapes({**T_SHAPES, **{f"{k}_pre": T_SHAPES[k] for k in ("stage1", "stage2")}}, features)
    for name in ("at", "nst"):
        d = create_distiller(name, s, t)
        assert d.student_taps == d.teacher_taps == features, name
    for name in ("sp", "ft"):
        d = create_distiller(name, s, t)
        assert d.student_taps == d.teacher_taps == ("stage3_pre",), name
    d = create_distiller("fitnets", s, t)
    assert d.student_taps == d.teacher_taps == ("stage2_pre",)
    assert create_distiller("simkd", s, t).teacher_taps == ("stage3",)
    # explicit taps still win; a plain dict of shapes means the post-activation stage taps
    assert create_distiller("sp", s, t, student_tap="stage3").student_taps == ("stage3",)
    assert create_distiller("at", dict(s), dict(t)).student_taps == ("stage1", "stage2", "stage3")
    with pytest.raises(ValueError, match="stage9"):
        TapShapes(S_SHAPES, ("stage9",))
    with pytest.raises(ValueError, match="hint"):
        create_distiller("fitnets", s, TapShapes(T_SHAPES, ("stage3",)))


def test_wrn_pair_defaults_read_the_benchmark_features():
    """wrn_40_2 -> wrn_16_2: every feature method's default equals the method on the raw
    residual sums (RepDistiller's and mdistiller's WRN features), not on the post-activation
    stage taps it read before (AT 2.186 -> 1.588 on this batch)."""
    from sublim.kd.models import create_model

    teacher = create_model("wrn_40_2", generator=torch.Generator().manual_seed(1)).eval()
    student = create_model("wrn_16_2", generator=torch.Generator().manual_seed(2)).eval()
    x = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        s, t = student(x), teacher(x)
    s_shapes, t_shapes = TapShapes.of(student), TapShapes.of(teacher)
    pre = ("stage1_pre", "stage2_pre", "stage3_pre")
    explicit = {
        "at": {"student_taps": pre, "teacher_taps": pre},
        "nst": {"student_taps": pre, "teacher_taps": pre},
        "sp": {"student_tap": "stage3_pre", "teacher_tap": "stage3_pre"},
        "fitnets": {"guided": "stage2_pre", "hint": "stage2_pre"},
        "ft": {"student_tap": "stage3_pre", "teacher_tap": "stage3_pre"},
    }
    y = torch.zeros(16, dtype=torch.long)
    for name, taps in explicit.items():
        torch.manual_seed(0)
        default = create_distiller(name, s_shapes, t_shapes)
        torch.manual_seed(0)
        named = create_distiller(name, student.tap_shapes(), teacher.tap_shapes(), **taps)
        torch.manual_seed(0)
        post = create_distiller(name, student.tap_shapes(), teacher.tap_shapes())
        with torch.no_grad():
            a, b, c = (float(sum(d(s, t, y).values())) for d in (default, named, post))
        assert a == b and a != c, name


def test_combine():
    ce = torch.tensor(2.0)
    losses = {"a": torch.tensor(1.0), "b": torch.tensor(3.0)}
    assert float(combine(ce, losses, None)) == 6.0
    assert float(combine(ce, losses, 0.25)) == 0.75 * 2.0 + 0.25 * 4.0
    assert float(combine(ce, losses, 0.0)) == 2.0
    assert float(combine(ce, losses, 1.0)) == 4.0
    assert float(combine(ce, losses, None, ce_weight=0.1)) == pytest.approx(0.2 + 4.0)
    assert float(combine(ce, {}, 0.5)) == 1.0
    with pytest.raises(ValueError, match="alpha"):
        combine(ce, losses, 1.5)
    # gradients flow through both terms
    x = torch.tensor(1.0, requires_grad=True)
    combine(2 * x, {"kd": 3 * x}, 0.5).backward()
    assert float(x.grad) == 0.5 * 2 + 0.5 * 3


def test_dkd_is_a_registered_distiller():
    assert issubclass(DKD, Distiller) and METHODS["dkd"] is DKD

"""The KD_wo_CE feature-distillation method (`fkd`) against plain second implementations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sublim.kd.losses import FeatureKD, create_distiller
from sublim.kd.losses.base import DistillerConfigError

S_SHAPES = {"L0": (4, 8, 8), "L1": (6, 4, 4), "L2": (8,), "logits": (5,)}
T_SHAPES = {"L0": (5, 8, 8), "L1": (7, 2, 2), "L2": (9, 4, 4), "L3": (3,), "logits": (5,)}


def _feats(shapes: dict, b: int, seed: int, grad: bool = False) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn((b, *v), generator=g, dtype=torch.float64).requires_grad_(grad)
        for k, v in shapes.items()
    }


def _pool(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Average pooling by integer factors, written out (what adaptive pooling does here)."""
    b, c, h, w = x.shape
    fh, fw = h // size[0], w // size[1]
    return x.reshape(b, c, size[0], fh, size[1], fw).mean(dim=(3, 5))


def _as4d(x: torch.Tensor) -> torch.Tensor:
    return x[:, :, None, None] if x.dim() == 2 else x


def _pair_loss(w: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample MSE of a 1x1-conv projection, aligning the larger map to the smaller."""
    s, t = _as4d(s), _as4d(t)
    if s.shape[-1] > t.shape[-1]:
        s = _pool(s, t.shape[-2:])
    elif s.shape[-1] < t.shape[-1]:
        t = _pool(t, s.shape[-2:])
    proj = torch.einsum("oc,bchw->bohw", w[:, :, 0, 0], s)
    return torch.stack([((proj[i] - t[i]) ** 2).mean() for i in range(s.shape[0])])


def _make(**params: object) -> FeatureKD:
    torch.manual_seed(0)
    d = create_distiller("fkd", S_SHAPES, T_SHAPES, **params)
    return d.double()  # type: ignore[return-value]


def test_one_to_one_mse_equals_plain_loops() -> None:
    d = _make(student_layers=[0, 1, 2], teacher_layers=[0, 2, 3])
    s, t = _feats(S_SHAPES, 6, 1), _feats(T_SHAPES, 6, 2)
    got = d(s, t, torch.zeros(6, dtype=torch.long))["feat"]
    # student L1 (4x4) vs teacher L2 (4x4): same size; L0 8x8 vs 8x8; L2 vector vs L3 vector
    want = torch.stack(
        [
            _pair_loss(d.projectors[0].weight, s["L0"], t["L0"]).mean(),
            _pair_loss(d.projectors[1].weight, s["L1"], t["L2"]).mean(),
            _pair_loss(d.projectors[2].weight, s["L2"], t["L3"]).mean(),
        ]
    ).mean()
    torch.testing.assert_close(got, want)
    assert d.student_taps == ("L0", "L1", "L2") and d.teacher_taps == ("L0", "L2", "L3")


def test_spatial_alignment_pools_the_larger_side() -> None:
    # student L0 8x8 vs teacher L1 2x2: the student is pooled; student L1 4x4 vs teacher L0 8x8:
    # the teacher is pooled
    d = _make(student_layers=[0, 1], teacher_layers=[1, 0])
    s, t = _feats(S_SHAPES, 4, 3), _feats(T_SHAPES, 4, 4)
    got = d(s, t, torch.zeros(4, dtype=torch.long))["feat"]
    want = (
        _pair_loss(d.projectors[0].weight, s["L0"], t["L1"]).mean()
        + _pair_loss(d.projectors[1].weight, s["L1"], t["L0"]).mean()
    ) / 2
    torch.testing.assert_close(got, want)


def test_fully_connected_mapping_weights_every_teacher_layer_equally() -> None:
    d = _make(student_layers=[0, 1], teacher_layers=[0, 2], mapping="full")
    assert len(d.projectors) == 4
    s, t = _feats(S_SHAPES, 5, 5), _feats(T_SHAPES, 5, 6)
    got = d(s, t, torch.zeros(5, dtype=torch.long))["feat"]
    per_layer = []
    for i, sk in enumerate(("L0", "L1")):
        losses = [
            _pair_loss(d.projectors[2 * i + j].weight, s[sk], t[tk])
            for j, tk in enumerate(("L0", "L2"))
        ]
        per_layer.append((sum(losses) / 2).mean())
    torch.testing.assert_close(got, torch.stack(per_layer).mean())


def test_attention_mapping_weights_pairs_by_softmax_of_gram_embeddings() -> None:
    d = _make(
        student_layers=[0, 1],
        teacher_layers=[0, 2],
        mapping="attention",
        projector="conv1x1",
        batch_size=6,
        attention_dims=[8, 4],
    )
    s, t = _feats(S_SHAPES, 6, 7), _feats(T_SHAPES, 6, 8)
    got = d(s, t, torch.zeros(6, dtype=torch.long))["feat"]

    def embed(mlp: torch.nn.Module, f: torch.Tensor) -> torch.Tensor:
        f = f.flatten(1)
        h = f @ f.T
        for lin in (mlp.net[0], mlp.net[2]):
            h = F.leaky_relu(h @ lin.weight.T + lin.bias)
        return h / h.norm(dim=1, keepdim=True)

    q = [embed(d.queries[i], s[k]) for i, k in enumerate(("L0", "L1"))]
    k = [embed(d.keys[j], t[n]) for j, n in enumerate(("L0", "L2"))]
    total = 0.0
    for i, sk in enumerate(("L0", "L1")):
        logits = torch.stack([(q[i] * k[j]).sum(1) for j in range(2)], 1)
        w = torch.softmax(logits, 1)
        losses = [
            _pair_loss(d.projectors[2 * i + j].weight, s[sk], t[tk])
            for j, tk in enumerate(("L0", "L2"))
        ]
        total = total + (w[:, 0] * losses[0] + w[:, 1] * losses[1]).mean()
    torch.testing.assert_close(got, total / 2)


def test_attention_pads_a_smaller_last_batch() -> None:
    d = _make(student_layers=[0], teacher_layers=[0, 2], mapping="attention", batch_size=8)
    out = d(_feats(S_SHAPES, 5, 1), _feats(T_SHAPES, 5, 2), torch.zeros(5, dtype=torch.long))
    assert torch.isfinite(out["feat"])


def test_similarity_preserving_whole_matrix_by_default_first_row_on_request() -> None:
    s, t = _feats(S_SHAPES, 6, 9), _feats(T_SHAPES, 6, 10)

    def cos(f: torch.Tensor) -> torch.Tensor:
        f = f.flatten(1)
        n = f / f.norm(dim=1, keepdim=True).clamp_min(1e-4)
        return n @ n.T

    y = torch.zeros(6, dtype=torch.long)
    full = _make(student_layers=[0, 1], teacher_layers=[1, 2], relation="sp")(s, t, y)["feat"]
    want = (
        ((cos(s["L0"]) - cos(t["L1"])) ** 2).mean() + ((cos(s["L1"]) - cos(t["L2"])) ** 2).mean()
    ) / 2
    torch.testing.assert_close(full, want)
    row = _make(student_layers=[0, 1], teacher_layers=[1, 2], relation="sp", sp_first_row_only=True)
    got = row(s, t, y)["feat"]
    want_row = (
        ((cos(s["L0"])[0] - cos(t["L1"])[0]) ** 2).mean()
        + ((cos(s["L1"])[0] - cos(t["L2"])[0]) ** 2).mean()
    ) / 2
    torch.testing.assert_close(got, want_row)
    assert not torch.allclose(full, got)


def test_token_features_take_the_one_dimensional_path() -> None:
    s_shapes = {"L0": (5, 6), "L1": (5, 6), "logits": (3,)}
    t_shapes = {"L0": (5, 10), "L1": (5, 10), "logits": (3,)}
    torch.manual_seed(0)
    d = create_distiller(
        "fkd", s_shapes, t_shapes, student_layers=[1], teacher_layers=[-1]
    ).double()
    s, t = _feats(s_shapes, 4, 11), _feats(t_shapes, 4, 12)
    got = d(s, t, torch.zeros(4, dtype=torch.long))["feat"]
    w = d.projectors[0].weight[:, :, 0]  # Conv1d over tokens: D_s -> D_t per token
    proj = torch.einsum("od,bnd->bno", w, s["L1"])
    torch.testing.assert_close(got, ((proj - t["L1"]) ** 2).mean())
    assert isinstance(d.projectors[0], torch.nn.Conv1d) and d.teacher_taps == ("L1",)


def test_embed_projector_and_logit_losses() -> None:
    d = _make(student_layers=[1], teacher_layers=[2], projector="embed", logit_loss="kd")
    assert [type(m).__name__ for m in d.projectors[0]][:3] == ["Conv2d", "BatchNorm2d", "ReLU"]
    assert d.extra_parameters() == 6 * 18 + 18 * 18 * 9 + 18 * 9 + 2 * 2 * 18  # mid = 2 C_t
    s, t = _feats(S_SHAPES, 4, 13), _feats(T_SHAPES, 4, 14)
    out = d(s, t, torch.zeros(4, dtype=torch.long))
    p_t = F.softmax(t["logits"] / 4, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(s["logits"] / 4, 1))).sum(1).mean()
    torch.testing.assert_close(out["kd"], 16 * kl)  # the paper's LGLossWeight T^2 = 16
    std = _make(student_layers=[1], teacher_layers=[2], logit_loss="kd_std", zscore_eps=1e-6)
    z = lambda v: (v - v.mean(1, keepdim=True)) / (1e-6 + v.std(1, keepdim=True))  # noqa: E731
    p_t = F.softmax(z(t["logits"]) / 4, 1)
    kl = (p_t * (p_t.log() - F.log_softmax(z(s["logits"]) / 4, 1))).sum(1).mean()
    torch.testing.assert_close(std(s, t, torch.zeros(4, dtype=torch.long))["kd"], 16 * kl)


def test_separate_head_cuts_after_the_last_student_layer() -> None:
    assert _make(student_layers=[0, 1], teacher_layers=[0, 1], separate_head=True).detach_after == 1
    assert _make(student_layers=[0, -2], teacher_layers=[0, 1]).detach_after is None


@pytest.mark.parametrize(
    ("params", "fragment"),
    [
        ({"student_layers": [0, 5], "teacher_layers": [0, 1]}, "-3..2 (0: 4x8x8, 1: 6x4x4, 2: 8)"),
        ({"student_layers": [0, 1], "teacher_layers": [0]}, "one2one needs one teacher layer"),
        ({"student_layers": [0], "teacher_layers": [0], "mapping": "star"}, "one2one, full"),
        ({"student_layers": [0], "teacher_layers": [0], "projector": "mlp"}, "conv1x1, embed"),
        ({"student_layers": "0", "teacher_layers": [0]}, "expects a list of integers"),
        ({"student_layers": [], "teacher_layers": [0]}, "a non-empty list"),
        ({"teacher_layers": [0]}, "list the generalized layers"),
    ],
)
def test_bad_parameters_are_one_line_errors(params: dict, fragment: str) -> None:
    with pytest.raises(DistillerConfigError) as err:
        create_distiller("fkd", S_SHAPES, T_SHAPES, **params)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_unalignable_spatial_sizes_are_refused() -> None:
    s_shapes = {"L0": (4, 8, 2), "logits": (5,)}
    t_shapes = {"L0": (4, 4, 4), "logits": (5,)}
    with pytest.raises(DistillerConfigError, match="cannot be aligned"):
        create_distiller("fkd", s_shapes, t_shapes, student_layers=[0], teacher_layers=[0])


def test_teacher_side_gets_no_gradient_and_student_side_does() -> None:
    d = _make(student_layers=[0, 1], teacher_layers=[0, 2], mapping="attention", batch_size=4)
    s, t = _feats(S_SHAPES, 4, 15, grad=True), _feats(T_SHAPES, 4, 16, grad=True)
    d(s, t, torch.zeros(4, dtype=torch.long))["feat"].backward()
    assert s["L0"].grad is not None and s["L0"].grad.abs().sum() > 0
    assert t["L0"].grad is None and t["L2"].grad is None

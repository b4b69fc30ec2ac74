"""sublim.geometry: every metric against a plain per-pair implementation, known answers, planner."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sublim.errors import ConfigError
from sublim.geometry import (
    QualityAccumulator,
    balanced_subsets,
    layer_quality,
    linear_cka,
    linear_cka_gram,
    plan_passes,
    rsa,
    select_layers,
)
from sublim.geometry.dims import linear_probe, pca_dims, twonn
from sublim.geometry.gram import center_gram, gram
from sublim.geometry.plan import pass_bytes


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread avoids OpenMP hand-offs that stall on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---------------------------------------------------------------- plain reference implementation


def plain_quality(
    f: np.ndarray, y: np.ndarray, fb: np.ndarray, yb: np.ndarray, n_train: int
) -> dict:
    """The reference's statistics 4, 6, 7 and Q, written out pair by pair (float64 except where
    the reference's float32 matters: the entropy)."""
    classes = sorted(set(y.tolist()))
    norms = np.linalg.norm(f, axis=1)
    h = f / norms[:, None]
    avg_intra, min_intra, avg_inter, min_inter, class_norm = [], [], [], [], []
    block_intra, block_min = [], []  # the reference's: the whole block, diagonal included
    for c in classes:
        idx = [n for n in range(len(y)) if y[n] == c]
        vals = [abs(h[n] @ h[m]) for i, n in enumerate(idx) for m in idx[i + 1 :]]
        avg_intra.append(np.mean(vals))
        min_intra.append(np.min(vals))
        block = [abs(h[n] @ h[m]) for n in idx for m in idx]
        block_intra.append(np.mean(block))
        block_min.append(np.min(block))
        class_norm.append(np.mean(norms[idx]))
        for c2 in classes:
            if c2 != c:
                avg_inter.append(
                    np.mean([abs(h[n] @ h[m]) for n in idx for m in range(len(y)) if y[m] == c2])
                )
        min_inter.append(
            min(np.linalg.norm(f[n] - f[m]) for n in idx for m in range(len(y)) if y[m] != c)
        )
    width = max(int((yb == c).sum()) for c in classes)
    lam = torch.zeros(len(classes), width)
    for row, c in enumerate(classes):
        xc = fb[yb == c] - fb[yb == c].mean(0)
        s = np.linalg.svd(xc, compute_uv=False) ** 2
        lam[row, : len(s)] = torch.tensor(s / s.sum(), dtype=torch.float32)
    ed_sum, ed = 0, []
    for row in range(len(classes)):  # the reference's while-loop
        cnt = 0
        while torch.sum(lam[row, :cnt]) < 0.95 and cnt < width - 1:
            cnt += 1
        ed.append(cnt)
        ed_sum += cnt
    p = lam[:, :ed_sum]
    p = torch.where(p == 0, 1e-127, p)
    p /= torch.sum(p, dim=1, keepdim=True)
    ent = torch.sum(-1 * p * torch.log(p), dim=1)
    ent[ent != ent] = 0
    h_corr = []
    for row, c in enumerate(classes):
        q = lam[row, : ed[row]].double().numpy()
        q = q / q.sum()
        q = q[q > 0]
        h_corr.append(-(q * np.log(q)).sum() / math.log(int((yb == c).sum())))
    s_ = np.mean(block_intra) - np.mean(avg_inter)
    s_corr = np.mean(avg_intra) - np.mean(avg_inter)
    i_ = (1 - np.mean(block_min)) * float(ent.mean()) / math.log(5)
    i_corr = (1 - np.mean(min_intra)) * np.mean(h_corr)
    k = (n_train / math.pi) ** (1 / min(len(f), f.shape[1]))
    e_ = k * 2 * np.mean(min_inter) / np.mean(class_norm)
    return {
        "s": s_,
        "i": i_,
        "e": e_,
        "q": s_ + math.sqrt(i_ * e_),
        "s_corrected": s_corr,
        "i_corrected": i_corr,
        "q_corrected": s_corr + math.sqrt(i_corr * e_),
        "ed": np.mean(ed),
        "cos_intra": np.mean(avg_intra),
        "cos_intra_ref": np.mean(block_intra),
        "cos_min_intra_ref": np.mean(block_min),
        "cos_inter": np.mean(avg_inter),
        "cos_min_intra": np.mean(min_intra),
        "dist_min_inter": np.mean(min_inter),
    }


def clustered(
    n_per: int, classes: int, dim: int, seed: int, spread: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, dim, generator=g) * 2
    y = torch.arange(classes).repeat_interleave(n_per)
    x = centers[y] + spread * torch.randn(len(y), dim, generator=g)
    return torch.relu(x) + 0.01, y  # non-negative like post-ReLU features


def accumulate(
    f: torch.Tensor, y: torch.Tensor, n_train: int, cols: int | None = None, rows: int = 7
) -> dict:
    acc = QualityAccumulator(
        y, f.shape[1], n_train=n_train, b_in_a=torch.arange(len(y)), probe=True
    )
    cols = cols or f.shape[1]
    for lo in range(0, f.shape[1], cols):
        for start in range(0, len(y), rows):
            acc.add(f[start : start + rows, lo : lo + cols])
    return acc.result()


# ---------------------------------------------------------------- quality against the plain version


@pytest.mark.parametrize("dim", [20, 8])  # 8 < 12 per class: the reference's padded-zero quirk
def test_quality_matches_plain_reference(dim: int) -> None:
    f, y = clustered(12, 3, dim, seed=1)
    row = accumulate(f, y, n_train=50_000)
    ref = plain_quality(f.double().numpy(), y.numpy(), f.double().numpy(), y.numpy(), 50_000)
    for key, value in ref.items():
        assert row[key] == pytest.approx(value, rel=2e-4, abs=1e-5), key
    if dim == 8:
        assert row["i"] == 0.0  # float32 1e-127 underflows, NaN -> 0: kept as the reference has it


def test_class_pass_b_outside_a_matches_plain() -> None:
    f, y = clustered(20, 3, 16, seed=2)
    a = torch.cat([torch.nonzero(y == c).reshape(-1)[:8] for c in range(3)])
    acc = QualityAccumulator(y[a], 16, n_train=1000, b_labels=y)
    acc.add(f[a])
    for c in range(3):  # two column slices per class
        acc.add_class(c, f[y == c][:, :10])
        acc.add_class(c, f[y == c][:, 10:])
    row = acc.result()
    ref = plain_quality(f[a].double().numpy(), y[a].numpy(), f.double().numpy(), y.numpy(), 1000)
    for key, value in ref.items():
        assert row[key] == pytest.approx(value, rel=2e-4, abs=1e-5), key


def test_gram_path_equals_direct_and_slices() -> None:
    f, y = clustered(10, 4, 30, seed=3)
    assert torch.allclose(gram(f), f @ f.T, rtol=1e-5, atol=1e-4)
    whole, sliced = accumulate(f, y, 5000), accumulate(f, y, 5000, cols=7, rows=3)
    for key in whole:
        assert sliced[key] == pytest.approx(whole[key], rel=1e-4, abs=1e-6), key


def test_two_separated_clusters_give_maximal_separation() -> None:
    g = torch.Generator().manual_seed(4)
    y = torch.arange(2).repeat_interleave(25)
    base = torch.zeros(2, 40)
    base[0, :20], base[1, 20:] = 1.0, 1.0  # orthogonal, non-negative
    f = base[y] * 10 + 0.01 * torch.rand(50, 40, generator=g)
    row = accumulate(f, y, 5000)
    assert row["s"] > 0.99 and row["cos_intra"] > 0.99 and row["cos_inter"] < 0.01
    assert row["probe_acc"] == 1.0


# ---------------------------------------------------------------- dimensions


def test_pca_and_twonn_on_a_subspace() -> None:
    g = torch.Generator().manual_seed(5)
    d, dim = 4, 40
    basis = torch.linalg.qr(torch.randn(dim, d + 1, generator=g, dtype=torch.float64))[0]
    z = torch.rand(1500, d, generator=g, dtype=torch.float64)
    x = z @ basis[:, :d].T + 3.0 * basis[:, d]  # an affine d-plane: still d-dim after L2 norm
    pca90, pca95 = pca_dims(torch.linalg.svdvals(x - x.mean(0)) ** 2)
    assert pca90 == d and pca95 == d
    centered = torch.linalg.eigvalsh(center_gram(x @ x.T)).flip(0)
    assert pca_dims(centered) == [d, d]
    assert twonn(x @ x.T) == pytest.approx(d, abs=0.4)


def test_twonn_matches_plain_loop() -> None:
    g = torch.Generator().manual_seed(6)
    x = torch.randn(60, 7, generator=g, dtype=torch.float64)
    h = x / x.norm(dim=1, keepdim=True)
    mu = []
    for n in range(len(h)):
        r = sorted(float((h[n] - h[m]).norm()) for m in range(len(h)) if m != n)
        mu.append(r[1] / r[0])
    mu = np.sort(mu)
    keep = int(len(mu) * 0.9)
    xs = np.log(mu[:keep])
    ys = -np.log(1 - np.arange(keep) / len(mu))
    assert twonn(x @ x.T) == pytest.approx((xs * ys).sum() / (xs * xs).sum(), rel=1e-9)


def test_probe_on_gram_equals_primal_gradient_descent() -> None:
    f, y = clustered(15, 3, 12, seed=7, spread=3.0)
    fc = (f - f.mean(0)).double()
    top = float(torch.linalg.eigvalsh(fc.T @ fc).max())
    fs = fc / math.sqrt(top)
    w, b = torch.zeros(12, 3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    for _ in range(50):
        r = torch.softmax(fs @ w + b, 1) - onehot
        w -= 2 * len(y) * fs.T @ r / len(y)
        b -= 2 * r.mean(0)
    primal = float(((fs @ w + b).argmax(1) == y).double().mean())
    assert linear_probe(center_gram(f @ f.T), y, 3, top, steps=50) == pytest.approx(primal)


# ---------------------------------------------------------------- similarity


def plain_cka(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x - x.mean(0), y - y.mean(0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


@pytest.mark.parametrize("n,dim", [(50, 8), (12, 40)])  # feature form and Gram form
def test_cka_known_answers(n: int, dim: int) -> None:
    g = torch.Generator().manual_seed(8)
    x = torch.randn(n, dim, generator=g, dtype=torch.float64)
    q = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))[0]
    assert float(linear_cka(x, x @ q)) == pytest.approx(1.0, abs=1e-10)
    assert float(linear_cka(x, 3.5 * x + 2.0)) == pytest.approx(1.0, abs=1e-10)
    y = torch.randn(n, 5, generator=g, dtype=torch.float64)
    assert float(linear_cka(x, y)) == pytest.approx(plain_cka(x.numpy(), y.numpy()), rel=1e-9)
    assert float(linear_cka_gram(x @ x.T, y @ y.T)) == pytest.approx(
        float(linear_cka(x, y)), rel=1e-9
    )


def test_cka_of_independent_noise_is_near_zero_and_batched() -> None:
    g = torch.Generator().manual_seed(9)
    x = torch.randn(2000, 4, generator=g, dtype=torch.float64)
    ys = torch.randn(3, 2000, 4, generator=g, dtype=torch.float64)
    batched = linear_cka(x, ys)
    assert batched.shape == (3,) and float(batched.max()) < 0.02
    for k in range(3):
        assert float(batched[k]) == pytest.approx(float(linear_cka(x, ys[k])), rel=1e-10)


def test_rsa_matches_plain_and_is_one_on_itself() -> None:
    g = torch.Generator().manual_seed(10)
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    ys = torch.randn(2, 20, 9, generator=g, dtype=torch.float64)
    assert float(rsa(x, x)) == pytest.approx(1.0, abs=1e-12)
    assert float(rsa(x, 2 * x + 1)) == pytest.approx(1.0, abs=1e-12)
    batched = rsa(x, ys)
    for k in range(2):
        rx, ry = 1 - np.corrcoef(x.numpy()), 1 - np.corrcoef(ys[k].numpy())
        iu = np.triu_indices(20, 1)
        assert float(batched[k]) == pytest.approx(np.corrcoef(rx[iu], ry[iu])[0, 1], rel=1e-9)


# ---------------------------------------------------------------- selection, sampling, planning


def test_select_layers_against_a_hand_made_curve() -> None:
    q = [0.1, 0.5, 0.3, 0.9, 0.2, 0.8, float("nan"), 0.7]
    rows = [{"layer": i, "q": v, "s": -v, "i": 1.0, "e": v, "sqrt_ie": v} for i, v in enumerate(q)]
    assert select_layers(rows, "q", 4) == [1, 3, 5, 7]
    assert select_layers(rows, "s", 2) == [0, 4]
    assert select_layers(rows, "i", 3) == [0, 1, 2]  # ties go to the shallower layer
    with pytest.raises(ConfigError, match="metric: invalid value 'x'"):
        select_layers(rows, "x", 2)
    with pytest.raises(ConfigError, match="k: invalid value 9"):
        select_layers(rows, "q", 9)


def test_balanced_subsets_sizes_nesting_and_determinism() -> None:
    labels = torch.arange(100).repeat(120)  # 12,000 samples, 100 classes
    a, b = balanced_subsets(labels, 100, seed=3)
    assert len(a) == 5000 and len(b) == 12_000 // 100 * 100
    assert torch.bincount(labels[a]).tolist() == [50] * 100
    assert set(a.tolist()) <= set(b.tolist())
    a2, b2 = balanced_subsets(labels, 100, seed=3)
    assert torch.equal(a, a2) and torch.equal(b, b2)
    assert not torch.equal(a, balanced_subsets(labels, 100, seed=4)[0])
    a10, b10 = balanced_subsets(torch.arange(10).repeat(700), 10, seed=0)
    assert torch.equal(a10, b10) and len(a10) == 5000


def test_planner_respects_the_budget() -> None:
    dims = {0: 65536, **dict.fromkeys(range(1, 4), 65536), **{i: 32768 for i in range(4, 8)}}
    dims.update({i: 16384 for i in range(8, 14)} | {i: 8192 for i in range(14, 17)} | {17: 512})
    budget = int(2.5 * 2**30)
    plan = plan_passes(dims, 5000, budget)
    assert [[s.layer for s in p] for p in plan] == [
        [0, 1],
        [2, 3],
        [4, 5, 6, 7],
        list(range(8, 18)),
    ]
    small = plan_passes(dims, 5000, 500_000_000)  # 25,000 columns: big layers are sliced
    assert all(pass_bytes(p, 5000) <= 500_000_000 for p in small)
    for layer, dim in dims.items():
        spans = sorted((s.lo, s.hi) for p in small for s in p if s.layer == layer)
        assert spans[0][0] == 0 and spans[-1][1] == dim
        assert all(x[1] == y[0] for x, y in zip(spans, spans[1:], strict=False))
    with pytest.raises(ConfigError, match="budget_bytes"):
        plan_passes(dims, 5000, 100)


# ---------------------------------------------------------------- the driver


class Synthetic:
    """A fake model: layer k = a fixed random tanh map of the previous one; records early exits."""

    def __init__(self, widths: list[int], seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        shapes = [12, *widths]
        self.w = [
            torch.randn(a, b, generator=g) / math.sqrt(a)
            for a, b in zip(shapes, shapes[1:], strict=False)
        ]
        self.deepest: list[int] = []

    def __call__(self, x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        h, out = x.float().reshape(len(x), -1), {}
        self.deepest.append(max(layers))
        for k, w in enumerate(self.w[: max(layers) + 1]):
            h = torch.tanh(h @ w) + 1.5  # positive and full rank
            if k in layers:
                out[k] = h.reshape(len(x), -1, 2)  # non-flat outputs are flattened per sample
        return out


def test_layer_quality_end_to_end() -> None:
    g = torch.Generator().manual_seed(11)
    labels = torch.arange(4).repeat(30)
    images = (
        (torch.randn(4, 12, generator=g)[labels] + torch.randn(120, 12, generator=g))
        .mul(40)
        .clamp(-128, 127)
    )
    model = Synthetic([24, 30, 10])
    rows = layer_quality(
        model, images, labels, 4, [2, 0, 1], seed=5, per_class_a=10, per_class_b=20
    )
    assert [r["layer"] for r in rows] == [0, 1, 2] and rows[0]["n_a"] == 40 and rows[0]["n_b"] == 80
    a, b = balanced_subsets(labels, 4, 5, per_class_a=10, per_class_b=20)
    feats = model(images, [0, 1, 2])
    for r in rows:
        f = feats[r["layer"]].reshape(120, -1).double()
        ref = plain_quality(f[a].numpy(), labels[a].numpy(), f[b].numpy(), labels[b].numpy(), 120)
        for key, value in ref.items():
            assert r[key] == pytest.approx(value, rel=2e-4, abs=1e-5), (r["layer"], key)
    model.deepest.clear()
    sliced = layer_quality(
        model,
        images,
        labels,
        4,
        [0, 1, 2],
        seed=5,
        per_class_a=10,
        per_class_b=20,
        budget_bytes=4 * 40 * 25,
        chunk=16,
    )
    assert 2 in model.deepest and 0 in model.deepest  # passes stop at their deepest layer
    for r, s in zip(rows, sliced, strict=False):
        for key in r:
            assert s[key] == pytest.approx(r[key], rel=1e-4, abs=1e-6), key
    again = layer_quality(
        Synthetic([24, 30, 10]),
        images,
        labels,
        4,
        [0, 1, 2],
        seed=5,
        per_class_a=10,
        per_class_b=20,
    )
    assert again == rows
    other = layer_quality(model, images, labels, 4, [0], seed=6, per_class_a=10, per_class_b=20)
    assert other[0]["s"] != rows[0]["s"]
    with pytest.raises(ConfigError, match="layers: invalid value"):
        layer_quality(model, images, labels, 4, [-1])

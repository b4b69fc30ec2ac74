"""Knowledge quality against KD_wo_CE's own code: its S, I, E, Q on stored features.

tests/data/kd_wo_ce_quality.{npz,json}: features (float32) and the numbers the reference code
(Thegolfingocto/KD_wo_CE @ 3abceed: Analysis.IComputePCAID, IComputeCovarianceStats,
IComputeDistMtxStats, ComputeClassPCAID and TrainerUtils.TPlotClassificationEfficiency's
arithmetic, run on the CPU) gives for them. Cases: plain clusters; a common offset with
|f|^2 / variance about 38 and 965; a class whose features span 3 dimensions; a layer narrower
than a class (its padded zero ratios make every class entropy NaN -> 0); A = 25 per class inside
B = 50 per class with one class of 44 (TinyImageNet's sizes for CNN teachers).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sublim.errors import ConfigError
from sublim.geometry import QualityAccumulator

DATA = Path(__file__).parent / "data" / "kd_wo_ce_quality"
CASES = json.loads(DATA.with_suffix(".json").read_text())
ARRAYS = np.load(DATA.with_suffix(".npz"))


def features(name: str) -> tuple[torch.Tensor, ...]:
    fa, ya = (torch.from_numpy(ARRAYS[f"{name}_{k}"]) for k in ("fa", "ya"))
    if f"{name}_fb" in ARRAYS:
        fb, yb = (torch.from_numpy(ARRAYS[f"{name}_{k}"]) for k in ("fb", "yb"))
    else:
        fb, yb = fa, ya
    return fa, ya, fb, yb


def analyse(fa, ya, fb, yb, n_train: int, cols: int | None = None) -> dict:
    """One layer through the accumulator: B inside A by positions, else B class by class."""
    b_in_a = torch.arange(len(ya)) if fb is fa else None
    acc = QualityAccumulator(
        ya, fa.shape[1], n_train=n_train, b_in_a=b_in_a, b_labels=None if b_in_a is not None else yb
    )
    cols = cols or fa.shape[1]
    for lo in range(0, fa.shape[1], cols):
        for start in range(0, len(ya), 11):
            acc.add(fa[start : start + 11, lo : lo + cols])
        if b_in_a is None:
            for c in yb.unique().tolist():
                acc.add_class(c, fb[yb == c][:, lo : lo + cols])
    return acc.result()


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("cols", [None, 17])  # whole layer, and column slices of 17
def test_reference_columns_equal_the_reference_code(name: str, cols: int | None) -> None:
    case = CASES[name]
    row = analyse(*features(name), case["n_train"], cols)
    ref = case["reference"]
    assert row["ed"] == pytest.approx(ref["ed"], abs=1e-9), "ED"
    assert row["d_g"] == ref["d_g"]
    for key in ("s", "e", "entropy", "dist_min_inter", "norm_mean"):
        # S, a difference of two means of |cos|, also to the float32 rounding of the reference's
        # own cosines (1e-7 absolute), which is all it has when an offset brings them near 1
        assert row[key] == pytest.approx(ref[key], rel=1e-5, abs=1e-7), key
    assert row["cos_intra_ref"] == pytest.approx(ref["cos_intra"], rel=1e-6, abs=1e-7)
    assert row["cos_min_intra_ref"] == pytest.approx(ref["cos_min_intra"], rel=1e-6, abs=2e-7)
    # I = (1 - min |cos|) H / ln 5: the reference's float32 minimum cosine is off by up to
    # 2e-7, i.e. 2e-7 / (1 - min) relative in I (2.5e-4 at the 965 offset); ours is exact
    slack = 2e-7 / (1 - ref["cos_min_intra"])
    assert row["i"] == pytest.approx(ref["i"], rel=1e-5 + slack, abs=1e-12), "i"
    assert row["q"] == pytest.approx(ref["q"], rel=1e-5 + slack, abs=1e-7), "q"


def float64_truth(fa, ya, fb, yb, n_train: int) -> dict:
    """The corrected columns written out in float64 from the features (SVD, pairs)."""
    fa, fb = fa.double(), fb.double()
    h = fa / fa.norm(dim=1, keepdim=True)
    cos = (h @ h.T).abs()
    classes = ya.unique().tolist()
    intra, min_intra, inter, min_inter, norms = [], [], [], [], []
    dist = torch.cdist(fa, fa)
    for c in classes:
        i = ya == c
        block = cos[i][:, i]
        n = int(i.sum())
        off = ~torch.eye(n, dtype=torch.bool)
        intra.append(block[off].mean())
        min_intra.append(block[off].min())
        inter += [cos[i][:, ya == c2].mean() for c2 in classes if c2 != c]
        min_inter.append(dist[i][:, ~i].min())
        norms.append(fa[i].norm(dim=1).mean())
    ent = []
    for c in classes:
        x = fb[yb == c] - fb[yb == c].mean(0)
        lam = torch.linalg.svdvals(x) ** 2
        lam = lam / lam.sum()
        ed = int((lam.cumsum(0) < 0.95).sum()) + 1
        p = lam[:ed] / lam[:ed].sum()
        ent.append(float(-(p * p.log()).sum()) / math.log(int((yb == c).sum())))
    s = float(torch.stack(intra).mean() - torch.stack(inter).mean())
    i_ = (1 - float(torch.stack(min_intra).mean())) * float(np.mean(ent))
    k = (n_train / math.pi) ** (1 / min(len(ya), fa.shape[1]))
    e = k * 2 * float(torch.stack(min_inter).mean() / torch.stack(norms).mean())
    return {"s_corrected": s, "i_corrected": i_, "e": e, "q_corrected": s + math.sqrt(i_ * e)}


@pytest.mark.parametrize("name", sorted(CASES))
def test_corrected_columns_equal_float64_math(name: str) -> None:
    fa, ya, fb, yb = features(name)
    row = analyse(fa, ya, fb, yb, CASES[name]["n_train"], cols=29)
    truth = float64_truth(fa, ya, fb, yb, CASES[name]["n_train"])
    for key in ("s_corrected", "i_corrected"):
        assert row[key] == pytest.approx(truth[key], rel=1e-6, abs=1e-9), key
    for key in ("e", "q_corrected"):  # distances from a float32 Gram of centered features
        assert row[key] == pytest.approx(truth[key], rel=1e-5), key


def test_dead_and_constant_layers_are_nan_with_a_warning_and_never_chosen() -> None:
    """An all-zero layer and a constant layer among good ones: NaN where undefined, one warning
    each naming the layer, every other layer its own numbers, auto choices skip them."""
    from sublim.geometry import QualityWarning, layer_quality, select_layers

    fa, ya, _, _ = features("plain")
    images = torch.arange(len(ya))  # the "images" are row indices into the stored features

    def run(x: torch.Tensor, layers: list[int]) -> dict[int, torch.Tensor]:
        f = fa[x]
        table = {0: f, 1: torch.zeros_like(f), 2: torch.full_like(f, 3.0), 3: f.flip(1) * 2}
        return {layer: table[layer] for layer in layers}

    messages: list[str] = []
    rows = layer_quality(run, images, ya, 4, [0, 1, 2, 3], n_train=50_000, warn=messages.append)
    alone = layer_quality(run, images, ya, 4, [0, 3], n_train=50_000)
    for good, ref in zip((rows[0], rows[3]), alone, strict=True):
        for key in ("s", "i", "e", "q", "q_corrected"):
            assert good[key] == pytest.approx(ref[key], rel=1e-12), key
    dead, constant = rows[1], rows[2]
    assert all(math.isnan(dead[k]) for k in ("s", "i", "e", "q", "s_corrected", "q_corrected"))
    assert constant["s"] == pytest.approx(0.0, abs=1e-12)  # |cos| = 1 everywhere: defined
    assert constant["e"] == 0.0  # no distance between classes: defined
    assert math.isnan(constant["i"]) and math.isnan(constant["q"])  # no variance: no entropy
    assert math.isnan(constant["i_corrected"]) and constant["degenerate_classes"] == 4
    assert len(messages) == 2
    assert messages[0].startswith("layer 1:") and "all zero" in messages[0]
    assert messages[1].startswith("layer 2:") and "within-class variance" in messages[1]
    for metric in ("q", "q_corrected", "i", "i_corrected", "sqrt_ie"):
        assert set(select_layers(rows, metric, 2)) == {0, 3}
    with pytest.raises(ConfigError, match="only 2 layers have a defined q"):
        select_layers(rows, "q", 3)
    with pytest.warns(QualityWarning, match="layer 1"):  # the default: a Python warning
        layer_quality(run, images, ya, 4, [0, 1], n_train=50_000)


def test_tinyimagenet_cnn_set_b_is_the_reference_pool() -> None:
    """The reference analyses 10,000 TinyImageNet images for a CNN (50 per class): B = 50/class;
    a ViT sees the whole training set (B = min(500, N / C)); other datasets keep the rule."""
    from sublim.kd.analyze import default_per_class_b

    assert default_per_class_b("resnet34", "tinyimagenet", 200) == 50
    assert default_per_class_b("vgg19_bn", "tinyimagenet", 200) == 50
    assert default_per_class_b("vit_b", "tinyimagenet", 200) is None
    assert default_per_class_b("resnet34", "cifar100", 100) is None

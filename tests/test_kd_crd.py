"""CRD and CRD+KD: RepDistiller's numbers (fact sheet section 8 row 7, and gradients from its
`crd/` code run in float64), the sampler's guarantees, the memory banks in the state dict, and
tiny end-to-end runs on the bundled MNIST (CLI, kill-and-resume)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sublim.cli.main import main
from sublim.kd.config import KDConfig
from sublim.kd.experiment import Experiment
from sublim.kd.losses import CRD, CRDKD, KD, create_distiller, draw_contrast, nce_loss
from sublim.kd.losses.base import DistillerConfigError
from sublim.kd.losses.contrast import class_blocks
from sublim.kd.runner import run_experiment


def g(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The fact sheet's input recipe."""
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64)


def rel_close(value: float, expected: float, rtol: float = 1e-9) -> bool:
    return abs(value - expected) <= rtol * abs(expected)


# ---------------------------------------------------------------------------------------------
# Fact sheet row 7 (N = 10, K = 4, dim 8, T 0.07, m 0.5), and RepDistiller's gradients
# ---------------------------------------------------------------------------------------------

Y = torch.tensor([0, 3, 7])
CONTRAST = torch.tensor([[0, 1, 2, 4, 5], [3, 0, 2, 6, 9], [7, 1, 4, 8, 9]])
# d loss / d parameters after call 1: RepDistiller's CRDLoss run in float64 (T = 0.07 exactly,
# AliasMethod.cuda a no-op), module built and then .double()'d, the same inputs
GRAD_WS = [0.104067208096753, 0.0474582798587592, 0.0246650659814718, -0.201795245137785, 0.394503578064578, 0.0628970358477363, 0.223795410860833, -0.74051110719259, 0.0837362602838809, -0.0842601074174547, 0.321358997724361, -0.133634943646651, -0.00993025897721705, -0.119449354180384, 0.318055440831151, 0.221716302811279, 0.303767440602186, -0.0763061439523405, -0.0575022182140519, -0.268150696750967, -0.0815661130164339, 0.174347915097296, -0.469616079772346, -0.103799387088642, 0.0156853853209206, 0.0608407131934058, 0.220640786113308, 0.0544250363776295, 0.379110048383779, 0.00333679776850931, -0.0255043287813762, 0.360614390013359, 0.246088343577648, 0.0249938134654078, 0.483405193191731, 0.0751268500593743, -0.0864379599039726, -0.0131564544695823, -0.253958667000613, 0.0429142534571454, -0.615137182366913, -0.0191337932595792, 0.0691756833465221, 0.0215369600957994, 0.375809656918354, 0.0457411842879023, 0.725240868578483, 0.000431051612508518]  # fmt: skip  # noqa: E501
GRAD_BS = [0.172859383382083, -0.508338407030219, -0.196218580661014, -0.333721599931966, 0.0408167915639019, 0.296298652632024, -0.0722571657292342, 0.0366760657878648]  # fmt: skip  # noqa: E501
GRAD_WT = [-0.563086976514649, -1.11496010542783, 0.35519550505165, -0.145507350201073, -1.94747429527596, 0.277289734674285, 0.588476178092737, -0.459938431065447, 0.625502726608211, 0.377637446705851, -0.364407322886083, -0.10369974712956, -0.0969342549654705, -0.568438663262484, 0.73386832086036, 0.0862220368848391, 0.558058962493098, -0.329124022109344, -0.120563864118667, 1.36095367548704, 0.45648053333713, 0.479298017469003, 0.123494853126317, 0.0306718432909255, 0.709689894943226, -0.0430762806476298, -0.0528654823939002, -0.0114001364856975, 0.0113366448389351, -0.101770254742147, 0.67315559442244, 0.604882077701858, 0.0161216239985429, 0.60968234026742, 0.127733551440319, 0.083066074373465, -0.0343161504733391, -0.105602274333552, 0.524187579372778, -0.779097999688951]  # fmt: skip  # noqa: E501
GRAD_BT = [-1.41879187968216, 0.313509045871709, -0.535065006972594, 0.349100051573708, 1.17666692289919, -0.121641635216407, 1.33102473950225, -0.159499543640741]  # fmt: skip  # noqa: E501


def row7() -> tuple[CRD, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A float64 CRD with row 7's weights and banks (weight 1: the raw loss), and its inputs."""
    d = CRD({"pool": (6,)}, {"pool": (5,)}, feat_dim=8, nce_k=4, weight=1.0).double()
    d.bind_data(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), seed=0)
    with torch.no_grad():
        d.embed_s.linear.weight.copy_(g((8, 6), 50))
        d.embed_s.linear.bias.copy_(g((8,), 51))
        d.embed_t.linear.weight.copy_(g((8, 5), 52))
        d.embed_t.linear.bias.copy_(g((8,), 53))
        for name, seed in (("memory_s", 54), ("memory_t", 55)):
            rows = g((10, 8), seed)
            getattr(d.memory, name).copy_(rows / rows.norm(dim=1, keepdim=True))
    return d, {"pool": g((3, 6), 56).requires_grad_()}, {"pool": g((3, 5), 57)}


def test_fact_sheet_row7_losses_z_and_memory() -> None:
    d, s, t = row7()
    first = d(s, t, Y, index=Y, contrast_idx=CONTRAST)["crd"].item()
    assert rel_close(first, 28.43151949)
    z_s, z_t = d.memory.z.tolist()
    assert rel_close(z_s, 4387.276003) and rel_close(z_t, 31215.18843)
    row = d.memory.memory_s[3, :3].tolist()  # RepDistiller's memory_v1
    for value, expected in zip(row, [0.7842683852, -0.4725307447, 0.2138443852], strict=True):
        assert rel_close(value, expected)
    second = d(s, t, Y, index=Y, contrast_idx=CONTRAST)["crd"].item()
    assert rel_close(second, 23.90715061)
    assert d.memory.z.tolist() == [z_s, z_t]  # Z stays fixed after the first call


def test_gradients_match_repdistiller() -> None:
    d, s, t = row7()
    d(s, t, Y, index=Y, contrast_idx=CONTRAST)["crd"].backward()
    for param, expected in (
        (d.embed_s.linear.weight, GRAD_WS),
        (d.embed_s.linear.bias, GRAD_BS),
        (d.embed_t.linear.weight, GRAD_WT),
        (d.embed_t.linear.bias, GRAD_BT),
    ):
        want = torch.tensor(expected, dtype=torch.float64).view(param.shape)
        torch.testing.assert_close(param.grad, want, rtol=1e-6, atol=1e-12)
    assert s["pool"].grad is not None and t["pool"].grad is None


def test_whole_bank_scores_equal_repdistillers_gathered_rows() -> None:
    """Scoring against the whole bank then gathering == gathering rows then bmm, and the
    stable NCE form == RepDistiller's exp / Z form, at a larger size with repeated indices."""
    gen = torch.Generator().manual_seed(3)
    n, k, b, dim = 300, 40, 6, 16
    d = CRD({"pool": (12,)}, {"pool": (9,)}, feat_dim=dim, nce_k=k, weight=1.0).double()
    d.bind_data(torch.randint(0, 5, (n,), generator=gen), seed=1)
    v_s = torch.nn.functional.normalize(torch.randn(b, dim, generator=gen, dtype=torch.float64))
    v_t = torch.nn.functional.normalize(torch.randn(b, dim, generator=gen, dtype=torch.float64))
    idx = torch.randint(0, n, (b, k + 1), generator=gen)
    s_s, s_t = d.memory.scores(v_s, v_t, idx, 0.07)
    for scores, bank, v, z in ((s_s, d.memory.memory_t, v_s, 0), (s_t, d.memory.memory_s, v_t, 1)):
        rows = bank.index_select(0, idx.flatten()).view(b, k + 1, dim)
        out = torch.exp(torch.bmm(rows, v.view(b, dim, 1)).squeeze(2) / 0.07)
        torch.testing.assert_close(scores.exp(), out, rtol=1e-12, atol=0)
        x = out / d.memory.z[z]
        c = k / n
        ref = (
            -(
                torch.log(x[:, 0] / (x[:, 0] + c + 1e-7)).sum()
                + torch.log(c / (x[:, 1:] + c + 1e-7)).sum()
            )
            / b
        )
        mine = nce_loss(scores, d.memory.z[z].log(), n)
        assert rel_close(mine.item(), ref.item(), 1e-12)
        # float32 at the CIFAR-100 ratio K / N: the stable form keeps float32 accuracy
        mine32 = nce_loss(scores.float(), d.memory.z[z].log().float(), n)
        assert rel_close(mine32.item(), ref.item(), 1e-5)


# ---------------------------------------------------------------------------------------------
# Sampler
# ---------------------------------------------------------------------------------------------

LABELS = torch.tensor([0] * 7 + [1] * 12 + [2] * 4 + [3] * 9)[
    torch.randperm(32, generator=torch.Generator().manual_seed(0))
]


def _draw(index: torch.Tensor, k: int, seed: int = 0, **kw: str) -> torch.Tensor:
    kw = {"mode": "exact", "negatives": "without_replacement", **kw}
    gen = torch.Generator().manual_seed(seed)
    return draw_contrast(index, LABELS, class_blocks(LABELS), k, generator=gen, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("negatives", ["without_replacement", "with_replacement"])
@pytest.mark.parametrize("mode", ["exact", "relax"])
def test_sampler_positive_first_negatives_of_other_classes(mode: str, negatives: str) -> None:
    index = torch.arange(32)
    idx = _draw(index, 19, mode=mode, negatives=negatives)
    assert idx.shape == (32, 20) and idx.dtype == torch.long
    if mode == "exact":
        assert torch.equal(idx[:, 0], index)
    else:
        assert torch.equal(LABELS[idx[:, 0]], LABELS[index])
    assert (LABELS[idx[:, 1:]] != LABELS[index][:, None]).all()
    if negatives == "without_replacement":  # 19 <= 32 - 12: every class has enough
        assert all(len(set(row.tolist())) == 19 for row in idx[:, 1:])


def test_without_replacement_falls_back_per_class_as_repdistiller() -> None:
    """K = 22: class 1 (12 images) leaves 20 candidates, fewer than K, so its anchors draw with
    replacement; the other classes leave 23 or more and get K distinct negatives."""
    index = torch.arange(32)
    idx = _draw(index, 22)
    for row, label in zip(idx[:, 1:], LABELS[index], strict=True):
        distinct = len(set(row.tolist()))
        assert distinct < 22 if label == 1 else distinct == 22
        assert (LABELS[row] != label).all()


@pytest.mark.parametrize("negatives", ["without_replacement", "with_replacement"])
def test_negatives_are_uniform_over_the_candidates(negatives: str) -> None:
    """Every other-class image is drawn equally often (the offset mapping skips no image next
    to the class block and favours none)."""
    anchor = int((LABELS == 2).nonzero()[0])  # class 2's block is in the middle of the order
    idx = _draw(torch.full((4000,), anchor), 7, seed=5, negatives=negatives)
    counts = torch.bincount(idx[:, 1:].flatten(), minlength=32).double()
    candidates = LABELS != 2
    assert (counts[~candidates] == 0).all()
    expected = 4000 * 7 / int(candidates.sum())
    assert (counts[candidates] - expected).abs().max() < 6 * math.sqrt(expected)


def test_draws_are_seeded_by_seed_epoch_and_step() -> None:
    d = CRD({"pool": (4,)}, {"pool": (4,)}, nce_k=10)
    d.bind_data(LABELS, seed=7)
    index = torch.tensor([3, 9, 30])
    a = d.contrast_indices(index, epoch=2, step=5)
    assert torch.equal(a, d.contrast_indices(index, epoch=2, step=5))
    assert not torch.equal(a, d.contrast_indices(index, epoch=2, step=6))
    assert not torch.equal(a, d.contrast_indices(index, epoch=3, step=5))
    other = CRD({"pool": (4,)}, {"pool": (4,)}, nce_k=10)
    other.bind_data(LABELS, seed=8)
    assert not torch.equal(a, other.contrast_indices(index, epoch=2, step=5))


# ---------------------------------------------------------------------------------------------
# Distiller: parameters, state, validation, CRD+KD
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("d_s", "d_t", "extra"), [(256, 256, 65_792), (1280, 512, 229_632)])
def test_extra_parameters_are_the_two_embeddings(d_s: int, d_t: int, extra: int) -> None:
    """resnet32x4 -> resnet8x4 and vgg13 -> MobileNetV2 (fact sheet section 5: 229,632)."""
    for method in ("crd", "crd_kd"):
        d = create_distiller(
            method, {"pool": (d_s,), "logits": (100,)}, {"pool": (d_t,), "logits": (100,)}
        )
        assert d.extra_parameters() == extra == 128 * (d_s + d_t) + 256
    assert (d.weight, d.ce_weight, d.nce_k, d.nce_t, d.nce_m) == (0.8, 1.0, 16384, 0.07, 0.5)
    assert (d.mode, d.negatives, CRD.needs_index, KD.needs_index) == (
        "exact",
        "without_replacement",
        True,
        False,
    )


def test_banks_and_z_are_in_the_state_dict_and_load_into_an_unbound_distiller() -> None:
    d, s, t = row7()
    d(s, t, Y, index=Y, contrast_idx=CONTRAST)
    state = d.state_dict()
    assert {"memory.memory_s", "memory.memory_t", "memory.z"} <= set(state)
    assert not any(k.endswith(("labels", "order", "start", "count")) for k in state)
    fresh = CRD({"pool": (6,)}, {"pool": (5,)}, feat_dim=8, nce_k=4, weight=1.0).double()
    fresh.load_state_dict(state)
    fresh.bind_data(torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3, 4]), seed=0)  # keeps loaded banks
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key
    assert rel_close(fresh(s, t, Y, index=Y, contrast_idx=CONTRAST)["crd"].item(), 23.90715061)


def test_bank_init_is_seeded_uniform() -> None:
    a, b = (CRD({"pool": (4,)}, {"pool": (4,)}, nce_k=3) for _ in range(2))
    a.bind_data(LABELS, seed=1)
    b.bind_data(LABELS, seed=1)
    assert torch.equal(a.memory.memory_s, b.memory.memory_s)
    assert a.memory.memory_s.shape == (32, 128)
    bound = 1 / math.sqrt(128 / 3)
    assert a.memory.memory_s.abs().max() <= bound and a.memory.z.tolist() == [-1.0, -1.0]
    assert not torch.equal(a.memory.memory_s, a.memory.memory_t)


def test_bad_input_is_one_clear_error() -> None:
    shapes = {"pool": (4,), "logits": (3,)}
    for params, key in [
        ({"nce_k": 0}, "nce_k"),
        ({"feat_dim": 0}, "feat_dim"),
        ({"nce_t": 0.0}, "nce_t"),
        ({"nce_m": 1.5}, "nce_m"),
        ({"mode": "loose"}, "mode"),
        ({"negatives": "some"}, "negatives"),
        ({"student_tap": "pool9"}, "student_tap"),
    ]:
        with pytest.raises(DistillerConfigError, match=f"^{key}: invalid value"):
            create_distiller("crd", shapes, shapes, **params)
    d = CRD(shapes, shapes, nce_k=2)
    s = {"pool": torch.randn(2, 4)}
    with pytest.raises(RuntimeError, match="bind_data"):
        d(s, s, torch.zeros(2, dtype=torch.long), index=torch.tensor([0, 1]))
    with pytest.raises(DistillerConfigError, match="at least two classes"):
        d.bind_data(torch.zeros(5, dtype=torch.long), seed=0)
    d.bind_data(LABELS, seed=0)
    with pytest.raises(ValueError, match="index="):
        d(s, s, torch.zeros(2, dtype=torch.long))


def test_crd_kd_is_crd_plus_kl_at_t4() -> None:
    shapes = {"pool": (6,), "logits": (5,)}
    gen = torch.Generator().manual_seed(4)
    s = {k: torch.randn(4, *v, generator=gen, dtype=torch.float64) for k, v in shapes.items()}
    t = {k: torch.randn(4, *v, generator=gen, dtype=torch.float64) for k, v in shapes.items()}
    index = torch.tensor([1, 5, 8, 20])
    out = {}
    for method in ("crd", "crd_kd"):
        torch.manual_seed(0)
        d = create_distiller(method, shapes, shapes, nce_k=6).double()
        d.bind_data(LABELS, seed=3)
        out[method] = d(s, t, LABELS[index], 0, index=index, step=2)
    assert isinstance(d, CRDKD) and "logits" in d.teacher_taps
    assert (d.kd_weight, d.temperature, d.weight, d.ce_weight) == (1.0, 4.0, 0.8, 1.0)
    assert out["crd"]["crd"].item() == out["crd_kd"]["crd"].item()
    kd = KD(shapes, shapes, temperature=4.0, weight=1.0)(s, t, LABELS[index])["kd"]
    assert rel_close(out["crd_kd"]["kd"].item(), kd.item(), 1e-12)


def test_autocast_runs_the_contrast_in_the_banks_precision() -> None:
    shapes = {"pool": (6,)}
    torch.manual_seed(0)
    d = CRD(shapes, shapes, nce_k=8)
    d.bind_data(LABELS, seed=0)
    twin = CRD(shapes, shapes, nce_k=8)
    twin.load_state_dict(d.state_dict())
    twin.bind_data(LABELS, seed=0)
    s, t = {"pool": torch.randn(4, 6)}, {"pool": torch.randn(4, 6)}
    index = torch.tensor([0, 1, 2, 3])
    plain = d(s, t, None, index=index)["crd"]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = twin(s, t, None, index=index)["crd"]
    assert mixed.dtype == torch.float32 and torch.isfinite(mixed)
    assert plain.item() == mixed.item()


# ---------------------------------------------------------------------------------------------
# End to end on the bundled MNIST
# ---------------------------------------------------------------------------------------------

TINY = ["--dataset", "mnist", "--train-limit", "40", "--test-limit", "10", "--batch-size", "20"]
TINY += ["--device", "cpu", "--quiet", "--seed", "0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("crd")
    args = ["kd", "train-teacher", "--model", "resnet8", "--epochs", "1", *TINY]
    assert main([*args, "--outdir", str(out), "--data-dir", str(out / "data")]) == 0
    return out


def _student(out: Path, **kw: object) -> KDConfig:
    fields: dict[str, object] = dict(
        dataset="mnist",
        data_dir=str(out / "data"),
        outdir=str(out),
        role="student",
        model="resnet8",
        teacher="resnet8",
        method="crd",
        method_params={"nce_k": 16},
        epochs=1,
        batch_size=20,
        train_limit=40,
        test_limit=10,
        device="cpu",
    )
    return KDConfig(**{**fields, **kw})


@pytest.mark.parametrize("method", ["crd", "crd_kd"])
def test_cli_distills_with_crd(teacher: Path, method: str, capsys: pytest.CaptureFixture) -> None:
    args = ["kd", "distill", "--method", method, "--teacher", "resnet8", "--student", "resnet8"]
    args += ["--epochs", "1", "--method-params", json.dumps({"nce_k": 16}), *TINY]
    assert main([*args, "--outdir", str(teacher), "--data-dir", str(teacher / "data")]) == 0
    capsys.readouterr()
    (path,) = (teacher / "mnist" / method / "resnet8_to_resnet8").glob("seed_0_*/last.pt")
    last = torch.load(path, weights_only=True)
    assert last["epoch"] == 1 and math.isfinite(last["history"]["train_loss"][0])
    bank = last["distiller"]["memory.memory_s"]
    assert bank.shape == (40, 128) and (last["distiller"]["memory.z"] > 0).all()
    terms = last["history"]["terms"][0]
    assert set(terms) == ({"ce", "crd", "kd"} if method == "crd_kd" else {"ce", "crd"})


def _pinned(out: Path, method: str) -> KDConfig:
    from sublim.kd.runner import pin_teacher

    return pin_teacher(_student(out, method=method))


def test_single_class_training_set_is_one_line(
    teacher: Path, capsys: pytest.CaptureFixture
) -> None:
    ck = str(teacher / "mnist" / "teacher")
    best = next(Path(ck).glob("resnet8/seed_0_*/best.pt"))
    args = ["kd", "distill", "--method", "crd", "--teacher", "resnet8", "--student", "resnet8"]
    args += ["--epochs", "1", "--teacher-checkpoint", str(best), *TINY, "--train-limit", "1"]
    code = main([*args, "--outdir", str(teacher / "one"), "--data-dir", str(teacher / "data")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("sublim: error: method: invalid value 'crd'; needs a training set")


def test_stopped_crd_run_resumes_to_the_same_banks_and_weights(
    teacher: Path, tmp_path: Path
) -> None:
    whole = _pinned(teacher, "crd").replace(epochs=2)
    a = Experiment(whole)
    assert run_experiment(whole)["status"] == "completed"
    part = whole.replace(outdir=str(tmp_path))
    first = run_experiment(part, stop_after=lambda e: e == 0)
    assert first["status"] == "in_progress" and first["epoch"] == 1
    assert run_experiment(part)["status"] == "completed"
    last_a, last_b = a.load("last.pt"), Experiment(part).load("last.pt")
    for key in ("model", "distiller"):
        for name, value in last_a[key].items():
            assert torch.equal(value, last_b[key][name]), (key, name)
    assert last_a["history"]["train_loss"] == last_b["history"]["train_loss"]
    state = last_a["optimizer"]["state"]
    assert all(
        torch.equal(v["momentum_buffer"], last_b["optimizer"]["state"][k]["momentum_buffer"])
        for k, v in state.items()
    )

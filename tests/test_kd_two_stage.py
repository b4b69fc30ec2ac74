"""RepDistiller's two-stage methods AB and FSP: losses against the reference (fact sheet rows 4
and 5, and gradients from running RepDistiller's ABLoss, Connector and FSP in float64), their
connectors and refusals, the WRN pre-activation taps, and the init stage end to end: what it
trains, a CE-only main stage without the teacher, resuming inside it, and the CLI."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from kd_tiny import tiny

from sublim.cli import main
from sublim.errors import ConfigError
from sublim.kd import train as kd_train
from sublim.kd.config import KDConfig
from sublim.kd.losses import AB, FSP, ConvReg, create_distiller, fsp_matrices
from sublim.kd.losses.base import DistillerConfigError
from sublim.kd.models import create_model
from sublim.kd.runner import load_teacher_weights, run_experiment
from sublim.kd.train import build_models, named_model_shapes


def g(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """The fact sheet's input recipe."""
    torch.manual_seed(seed)
    return torch.randn(*shape, dtype=torch.float64)


def close(value: float, expected: float, rel: float) -> bool:
    return abs(value - expected) <= rel * abs(expected)


def _shapes(*shapes: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {f"f{i}": s[1:] for i, s in enumerate(shapes)}


def _taps(shapes: list[tuple[int, ...]], seeds: list[int], grad: bool) -> dict[str, torch.Tensor]:
    return {
        f"f{i}": g(s, k).requires_grad_(grad)
        for i, (s, k) in enumerate(zip(shapes, seeds, strict=True))
    }


def _build(name: str, s_shapes: list, t_shapes: list) -> AB | FSP:
    taps = [f"f{i}" for i in range(len(s_shapes))]
    d = create_distiller(
        name, _shapes(*s_shapes), _shapes(*t_shapes), student_taps=taps, teacher_taps=taps
    )
    return d.double()  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# AB (fact sheet row 4; gradients from RepDistiller's ABLoss / Connector, float64)
# ---------------------------------------------------------------------------------------------

AB_S = [(2, 4, 8, 8), (2, 8, 4, 4), (2, 16, 2, 2)]


def test_ab_levels_and_gradients_match_repdistiller() -> None:
    d = _build("ab", AB_S, AB_S)
    assert all(isinstance(c, torch.nn.Identity) for c in d.connectors)
    assert d.level_weights == (0.25, 0.5, 1.0)
    s, t = _taps(AB_S, [20, 21, 22], True), _taps(AB_S, [23, 24, 25], False)
    levels = [x.item() for x in d.level_losses(s, t)]
    for got, sheet, ref in zip(
        levels,
        [0.3733227478, 0.3416201544, 0.3938207991],  # fact sheet row 4
        [0.373322747758686, 0.341620154365765, 0.393820799134803],  # RepDistiller, 15 digits
        strict=True,
    ):
        assert close(got, sheet, 1e-9) and close(got, ref, 1e-12)
    d.init_loss(s, t).backward()
    projections = [0.0553342385522283, -0.0211686539339197, -0.0482662358553705]
    first = [
        [-0.00161863992095583, 0.00165524276107214, -0.00117015255096082, 0.000352208741693912],
        [0.00412681822442454, 0.0017292323949717, 0.0, 0.000381667730501386],
        [-0.00824822486322407, -0.000556576044273272, -0.00517890141265438, 0.000698816942556473],
    ]
    for i, (shape, proj, head) in enumerate(zip(AB_S, projections, first, strict=True)):
        grad = s[f"f{i}"].grad
        assert close((grad * g(shape, 100 + i)).sum().item(), proj, 1e-10)
        torch.testing.assert_close(grad.flatten()[:4], torch.tensor(head, dtype=grad.dtype))
    assert d.forward(s, t, torch.zeros(2, dtype=torch.long))["ab"].item() == pytest.approx(
        sum(levels), rel=1e-12
    )  # weight 1


def test_ab_connectors_match_repdistiller() -> None:
    """conv3x3 s2 (8 -> 4), identity (same C and H), deconv (2 -> 4); BN in train mode."""
    s_shapes = [(2, 4, 8, 8), (2, 8, 4, 4), (2, 6, 2, 2)]
    t_shapes = [(2, 8, 4, 4), (2, 8, 4, 4), (2, 12, 4, 4)]
    d = _build("ab", s_shapes, t_shapes)
    kinds = [type(c).__name__ for c in d.connectors]
    assert kinds == ["ConvReg", "Identity", "ConvReg"]
    assert isinstance(d.connectors[2].conv, torch.nn.ConvTranspose2d)
    assert not d.connectors[0].use_relu
    with torch.no_grad():
        for k, c in enumerate(d.connectors):
            for j, p in enumerate(c.parameters()):
                p.copy_(0.3 * g(tuple(p.shape), 200 + 10 * k + j))
    s = _taps(s_shapes, [300, 301, 302], True)
    t = _taps(t_shapes, [310, 311, 312], False)
    levels = d.level_losses(s, t)
    expected = [0.120880084776949, 0.346472271270961, 0.735320017730153]
    assert all(close(x.item(), e, 1e-12) for x, e in zip(levels, expected, strict=True))
    d.init_loss(s, t).backward()
    for i, proj in enumerate([0.00381396479873775, 0.026532791441818, 0.0408973860875499]):
        grad = s[f"f{i}"].grad
        assert close((grad * g(tuple(grad.shape), 400 + i)).sum().item(), proj, 1e-10)
    params = {  # (connector, parameter index) -> projected gradient; conv biases are ~0 (BN)
        (0, 0): -0.0175061782656378,
        (0, 2): 0.0108106447761209,
        (0, 3): 0.0310797001629284,
        (2, 0): -0.0288811170313358,
        (2, 2): -0.335932959118473,
        (2, 3): 0.0232835949398364,
    }
    for (k, j), proj in params.items():
        p = list(d.connectors[k].parameters())[j]
        assert close((p.grad * g(tuple(p.shape), 500 + 10 * k + j)).sum().item(), proj, 1e-10)
    for k in (0, 2):
        assert abs(d.connectors[k].conv.bias.grad).max() < 1e-14


def test_ab_connectors_and_extra_parameters_for_benchmark_pairs() -> None:
    def ab(student: str, teacher: str) -> AB:
        shapes = [named_model_shapes(m, 100, (3, 32, 32)) for m in (student, teacher)]
        return create_distiller("ab", *shapes)  # type: ignore[return-value]

    wrn = ab("wrn_40_1", "wrn_40_2")
    assert wrn.student_taps == wrn.teacher_taps == ("stage1_bn", "stage2_bn", "stage3_bn")
    pairs = [(16, 32), (32, 64), (64, 128)]  # conv1x1 with bias, then BN (weight and bias)
    for c, (c_in, c_out) in zip(wrn.connectors, pairs, strict=True):
        assert isinstance(c, ConvReg) and c.conv.kernel_size == (1, 1)
        assert (c.conv.in_channels, c.conv.out_channels) == (c_in, c_out)
    assert wrn.extra_parameters() == sum(i * o + o + 2 * o for i, o in pairs) == 11_424
    mv2 = ab("mobilenetv2", "vgg13")
    assert mv2.teacher_taps == ("stage1_pre", "stage2_pre", "stage3_pre", "stage4_pre")
    assert mv2.extra_parameters() == 1_345_152  # fact sheet section 5
    assert isinstance(mv2.connectors[3].conv, torch.nn.ConvTranspose2d)  # 160@2 -> 512@4
    same = ab("resnet20", "resnet56")
    assert same.student_taps == ("stage1_pre", "stage2_pre", "stage3_pre")
    assert same.extra_parameters() == 0  # identities
    with pytest.raises(DistillerConfigError, match="student_taps.*no connector"):
        create_distiller("ab", _shapes((2, 4, 2, 2)), _shapes((2, 4, 8, 8)), student_taps=["f0"],
                         teacher_taps=["f0"])  # fmt: skip


def test_wrn_bn_taps_are_repdistillers_preact_features() -> None:
    """RepDistiller's wrn preact=True: block2.layer[0].bn1(f1), block3.layer[0].bn1(f2),
    bn1(f3), the following BN without its ReLU, recomputed through the submodules."""
    model = create_model("wrn_16_2").eval().double()
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():  # BN statistics and affines away from the identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
            m.weight.data.uniform_(0.5, 1.5, generator=gen)
            m.bias.data.normal_(0, 0.3, generator=gen)
    x = torch.randn(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        out = model(x, model.preact_taps + ("stage3",))
        f1 = model.block1.layer(model.conv1(x))
        f2 = model.block2.layer(f1)
        f3 = model.block3.layer(f2)
        expected = [model.block2.layer[0].bn1(f1), model.block3.layer[0].bn1(f2), model.bn1(f3)]
    assert model.preact_taps == ("stage1_bn", "stage2_bn", "stage3_bn")
    for tap, feat in zip(model.preact_taps, expected, strict=True):
        torch.testing.assert_close(out[tap], feat, rtol=0, atol=0, msg=tap)
        assert (out[tap] < 0).any()  # before the ReLU
    torch.testing.assert_close(out["stage3"], F.relu(out["stage3_bn"]), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------
# FSP (fact sheet row 5; gradients from RepDistiller's FSP, float64)
# ---------------------------------------------------------------------------------------------


def test_fsp_values_matrices_and_gradients_match_repdistiller() -> None:
    s_shapes = [(2, 4, 8, 8), (2, 6, 8, 8), (2, 8, 4, 4)]
    d = _build("fsp", s_shapes, s_shapes)
    s, t = _taps(s_shapes, [30, 31, 32], True), _taps(s_shapes, [33, 34, 35], False)
    pairs = [x.item() for x in d.pair_losses(s, t)]
    for got, sheet, ref in zip(
        pairs, [0.02416122455, 0.02614747377], [0.0241612245502586, 0.0261474737726099],
        strict=True,
    ):  # fmt: skip
        assert close(got, sheet, 1e-9) and close(got, ref, 1e-12)
    g_s = fsp_matrices([s[k] for k in d.student_taps])
    assert [tuple(m.shape) for m in g_s] == [(2, 6, 4), (2, 8, 6)]
    sheet = [-0.05750424821, -0.1117373948, 0.01930827077]
    assert all(close(a, b, 1e-9) for a, b in zip(g_s[0][0, 0, :3].tolist(), sheet, strict=True))
    d.init_loss(s, t).backward()
    projections = [0.000817004587686492, -0.0103049158695827, -0.0050546716480814]
    first = [7.08550338539001e-05, 0.00031494541380493, 0.000182345480869534]
    for i, (shape, proj, head) in enumerate(zip(s_shapes, projections, first, strict=True)):
        grad = s[f"f{i}"].grad
        assert close((grad * g(shape, 600 + i)).sum().item(), proj, 1e-10)
        assert close(grad.flatten()[0].item(), head, 1e-10)
    assert d.extra_parameters() == 0


def test_fsp_pools_the_larger_map_of_a_pair() -> None:
    """bottom 4@4, top 6@8: the top is pooled to 4x4 (RepDistiller's output, float64)."""
    shapes = [(2, 4, 4, 4), (2, 6, 8, 8)]
    d = _build("fsp", shapes, shapes)
    s, t = _taps(shapes, [40, 41], True), _taps(shapes, [42, 43], False)
    (loss,) = d.pair_losses(s, t)
    assert close(loss.item(), 0.0220689888726146, 1e-12)
    loss.backward()
    for i, proj in enumerate([0.0166277542818668, 0.00280073407717323]):
        grad = s[f"f{i}"].grad
        assert close((grad * g(shapes[i], 700 + i)).sum().item(), proj, 1e-10)


def test_fsp_taps_and_the_channel_refusal() -> None:
    shapes = {m: named_model_shapes(m, 100, (3, 32, 32)) for m in ("resnet20", "wrn_40_1")}
    d = create_distiller(
        "fsp", shapes["resnet20"], named_model_shapes("resnet56", 100, (3, 32, 32))
    )
    assert d.student_taps == ("stem", "stage1", "stage2", "stage3")  # RepDistiller's f[:-1]
    wrn = create_distiller("fsp", shapes["wrn_40_1"], shapes["wrn_40_1"])
    assert wrn.teacher_taps == ("stem", "stage1_pre", "stage2_pre", "stage3_pre")
    with pytest.raises(DistillerConfigError) as info:
        create_distiller(
            "fsp", shapes["wrn_40_1"], named_model_shapes("wrn_40_2", 100, (3, 32, 32))
        )
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, ConfigError)
    for part in ("stage1_pre 16 vs stage1_pre 32", "stage2_pre 32 vs", "stage3_pre 64 vs"):
        assert part in message
    assert "stem 16" not in message  # the stems agree


# ---------------------------------------------------------------------------------------------
# Configuration: --init-epochs
# ---------------------------------------------------------------------------------------------


def test_init_epochs_default_validation_and_hash(tmp_path: Path) -> None:
    base = dict(role="student", teacher="resnet56", model="resnet20", outdir=str(tmp_path))
    for method in ("ab", "fsp"):
        config = KDConfig(method=method, **base)
        assert config.init_stage == 30 and config.result_dict()["init_epochs"] == 30
        same = config.replace(init_epochs=30)
        assert same.config_hash == config.config_hash
        assert config.replace(init_epochs=1).config_hash != config.config_hash
    with pytest.raises(ConfigError, match="--init-epochs.*fitnets, ft, ab, fsp have an init"):
        KDConfig(method="at", init_epochs=2, **base)
    assert KDConfig(method="at", init_epochs=0, **base).init_stage == 0
    assert {AB.init_stage.epochs, FSP.init_stage.epochs} == {30}  # type: ignore[union-attr]
    assert AB.ce_only_main and FSP.ce_only_main


# ---------------------------------------------------------------------------------------------
# Training: resnet8 -> resnet8 on tiny MNIST (40 images, batch 20)
# ---------------------------------------------------------------------------------------------

# AB between shifted taps, so that it has connectors: 16@32 -> 32@16 and 32@16 -> 64@8 (3x3
# convs, stride 2), then 64@8 -> 64@8 (the identity)
SHIFTED = {
    "student_taps": ["stage1_pre", "stage2_pre", "stage3_pre"],
    "teacher_taps": ["stage2_pre", "stage3_pre", "stage3_pre"],
}


def _tiny(out: Path, **kw: object) -> KDConfig:
    return tiny(out, **{"train_limit": 40, "batch_size": 20, "test_limit": 40, **kw})


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kd2")
    assert run_experiment(_tiny(out))["status"] == "completed"
    return out


def _student(out: Path, method: str, into: Path, **kw: object) -> KDConfig:
    """A resnet8 student of the tiny teacher in `out`, written to `into`."""
    from sublim.kd.experiment import experiment_dir

    ck = str(experiment_dir(_tiny(out)) / "best.pt")
    config = _tiny(out, role="student", teacher="resnet8", method=method, **kw)
    return config.replace(outdir=str(into), teacher_checkpoint_path=ck)


def _same(a: object, b: object) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def test_ab_init_stage_trains_features_and_connectors_then_plain_ce_without_teacher(
    teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = _student(teacher, "ab", tmp_path, init_epochs=1, method_params=SHIFTED)
    calls: list[int] = []
    real = kd_train.build_models

    def spy(*args: object, **kw: object) -> kd_train.Models:
        models = real(*args, **kw)  # type: ignore[arg-type]
        forward = models.teacher.forward  # type: ignore[union-attr]

        def counted(*a: object, **k: object) -> object:
            calls.append(1)
            return forward(*a, **k)

        models.teacher.forward = counted  # type: ignore[union-attr,method-assign]
        return models

    monkeypatch.setattr(kd_train, "build_models", spy)
    first = run_experiment(config, stop_after=lambda e: e == 0)
    assert first["status"] == "in_progress" and calls == [1, 1]  # two init steps
    last = torch.load(Path(first["dir"]) / "last.pt", weights_only=True)
    assert last["stage"] == "init" and last["history"]["lr"] == [config.lr]
    initial = build_models(config, torch.device("cpu"), load_teacher_weights(config))
    before, after = initial.student.state_dict(), last["model"]
    head = {k for k in before if k.startswith("classifier.")}
    assert head and all(torch.equal(before[k], after[k]) for k in head)
    features = [k for k in before if k not in head and k.endswith("weight")]
    assert all(not torch.equal(before[k], after[k]) for k in features)
    connectors = initial.distiller.state_dict()  # type: ignore[union-attr]
    assert all(
        not torch.equal(v, last["distiller"][k]) for k, v in connectors.items() if "weight" in k
    )
    done = run_experiment(config)
    assert done["status"] == "completed" and calls == [1, 1]  # the main stage never ran it
    assert done["extra_parameters"] == (9 * 16 * 32 + 32 * 3) + (9 * 32 * 64 + 64 * 3)
    metrics = json.loads((Path(done["dir"]) / "metrics.json").read_text())
    assert metrics["stage"] == ["init", "main"]
    assert list(metrics["terms"][1]) == ["ce"]  # plain cross-entropy
    assert metrics["train_loss"][1] == pytest.approx(metrics["terms"][1]["ce"], rel=1e-6)
    final = torch.load(Path(done["dir"]) / "last.pt", weights_only=True)
    assert _same(final["distiller"], last["distiller"])  # connectors unused after the init
    n_student = len(list(initial.student.parameters()))
    assert len(final["optimizer"]["param_groups"][0]["params"]) == n_student


def test_ab_stopped_in_its_init_stage_resumes_to_identical_state(
    teacher: Path, tmp_path: Path
) -> None:
    whole = _student(teacher, "ab", tmp_path / "a", init_epochs=2, method_params=SHIFTED)
    a = Path(run_experiment(whole)["dir"])
    part = whole.replace(outdir=str(tmp_path / "b"))
    first = run_experiment(part, stop_after=lambda e: e == 0)
    assert first["status"] == "in_progress" and first["epoch"] == 1
    done = run_experiment(part)
    assert done["status"] == "completed" and not done["skipped"]
    b = Path(done["dir"])
    last_a, last_b = (torch.load(d / "last.pt", weights_only=True) for d in (a, b))
    for key in ("model", "distiller", "optimizer", "scaler", "history", "best_acc", "epoch"):
        assert _same(last_a[key], last_b[key]), key
    assert last_a["history"]["stage"] == ["init", "init", "main"]
    best_a, best_b = (torch.load(d / "best.pt", weights_only=True) for d in (a, b))
    assert _same(best_a["weights"], best_b["weights"])


def test_fsp_init_stage_leaves_the_classifier(teacher: Path, tmp_path: Path) -> None:
    config = _student(teacher, "fsp", tmp_path, init_epochs=1)
    first = run_experiment(config, stop_after=lambda e: e == 0)
    last = torch.load(Path(first["dir"]) / "last.pt", weights_only=True)
    initial = build_models(config, torch.device("cpu"), load_teacher_weights(config)).student
    before = initial.state_dict()
    for key, value in before.items():
        assert torch.equal(value, last["model"][key]) == key.startswith("classifier."), key


def test_cli_distills_the_two_stage_methods_on_mnist(tmp_path: Path) -> None:
    out = tmp_path / "kd"
    common = ["--dataset", "mnist", "--train-limit", "64", "--test-limit", "64", "--epochs", "1"]
    common += ["--device", "cpu", "--outdir", str(out), "--quiet", "--batch-size", "32"]
    assert main(["kd", "train-teacher", "--model", "resnet8", *common]) == 0
    for method in ("ab", "fsp"):
        args = ["kd", "distill", "--method", method, "--teacher", "resnet8", "--student", "resnet8"]
        assert main([*args, "--init-epochs", "1", *common]) == 0
        folder = out / "mnist" / method / "resnet8_to_resnet8"
        (metrics,) = folder.glob("seed_0_*/metrics.json")
        history = json.loads(metrics.read_text())
        assert history["stage"] == ["init", "main"] and history["epoch"] == [1, 2]
        assert history["terms"][1].keys() == {"ce"}
        status = json.loads((metrics.parent / "status.json").read_text())
        assert status["status"] == "completed" and status["extra_parameters"] == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"alpha": 0.5}, "--alpha: invalid value 0.5; ab trains on CE alone"),
        ({"init_epochs": 0}, "--init-epochs: invalid value 0; ab distils only in its init stage"),
    ],
)
def test_ab_refuses_settings_that_would_silently_train_the_student_alone(extra, message) -> None:
    """AB's and FSP's main stage is plain CE: no init stage, or --alpha scaling that CE, would
    quietly be a different experiment."""
    from sublim.errors import ConfigError

    with pytest.raises(ConfigError, match=re.escape(message)):
        KDConfig(role="student", teacher="resnet8", model="resnet8", method="ab", **extra)

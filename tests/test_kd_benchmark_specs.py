"""The KD benchmark's sweep specs plan the papers' experiments: the CRD paper's two CIFAR-100
tables and mdistiller's, with their pairs, methods, N/A cells and per-pair recipes, and every
one of them builds (`--dry-run` checks each method on its pair before printing)."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from sublim.cli.main import main
from sublim.kd.sweep import load_plan

FIGURES = Path(__file__).resolve().parents[1] / "figures"
SAME = {
    ("wrn_40_2", "wrn_16_2"),
    ("wrn_40_2", "wrn_40_1"),
    ("resnet56", "resnet20"),
    ("resnet110", "resnet20"),
    ("resnet110", "resnet32"),
    ("resnet32x4", "resnet8x4"),
    ("vgg13", "vgg8"),
}
CROSS = {
    ("vgg13", "mobilenetv2"),
    ("resnet50", "mobilenetv2"),
    ("resnet50", "vgg8"),
    ("resnet32x4", "shufflev1"),
    ("resnet32x4", "shufflev2"),
    ("wrn_40_2", "shufflev1"),
}
CRD_METHODS = {"kd", "fitnets", "at", "sp", "cc", "vid", "rkd", "pkt", "ab", "ft", "fsp", "nst"}
CRD_METHODS |= {"crd", "crd_kd"}


def test_crd_spec_is_the_papers_two_tables(tmp_path: Path) -> None:
    plan = load_plan(FIGURES / "kd_crd_cifar100.toml", str(tmp_path))
    cells = Counter((s.teacher, s.model, s.method) for s in plan.students)
    assert {(t, s) for t, s, _ in cells} == SAME | CROSS
    assert set(cells.values()) == {3}  # 3 seeds everywhere
    for pair in SAME | CROSS:
        methods = {m for t, s, m in cells if (t, s) == pair}
        na = pair in CROSS or pair == ("wrn_40_2", "wrn_40_1")  # FSP: N/A in the paper
        assert methods == CRD_METHODS - ({"fsp"} if na else set()), pair
    assert len(plan.students) == 3 * (7 * 14 - 1 + 6 * 13) == 525
    teachers = [
        c for c in plan.teachers if c.method == "none" and c.model in {t for t, _ in SAME | CROSS}
    ]
    assert {c.seed for c in teachers} == {0}  # one teacher per model, shared as RepDistiller does
    assert len(plan.teachers) == 6 + 3 * 9  # 6 teachers, 9 students alone x 3 seeds
    lr = {(s.model, s.lr) for s in plan.students}
    assert lr == {
        (m, 0.01 if m in {"mobilenetv2", "shufflev1", "shufflev2"} else 0.05) for m, _ in lr
    }
    recipe = plan.students[0]
    assert (recipe.epochs, recipe.batch_size, recipe.milestones, recipe.weight_decay) == (
        240,
        64,
        (150, 180, 210),
        5e-4,
    )


def test_mdistiller_spec_has_its_per_method_configs(tmp_path: Path) -> None:
    plan = load_plan(FIGURES / "kd_mdistiller_cifar100.toml", str(tmp_path))
    cells = Counter((s.teacher, s.model, s.method) for s in plan.students)
    pairs = {(t, s) for t, s, _ in cells}
    assert pairs == SAME - {("resnet110", "resnet20")} | CROSS - {("resnet50", "vgg8")}
    dot = {(t, s) for t, s, m in cells if m == "kd_dot"}
    assert dot == {("resnet32x4", "resnet8x4"), ("vgg13", "vgg8"), ("resnet32x4", "shufflev2")}
    assert len(plan.students) == 3 * (11 * 13 - 5 + 3) == 423
    params = {(s.teacher, s.model, s.method): s.method_params for s in plan.students}
    assert params[("resnet56", "resnet20", "dkd")] == {"beta": 2.0}
    assert params[("vgg13", "mobilenetv2", "dkd")] == {"beta": 6.0}
    assert params[("resnet32x4", "resnet8x4", "vid")] == {"variance": "fixed"}
    assert params[("resnet32x4", "resnet8x4", "kdsvd")] == {"matrix": "mdistiller"}


@pytest.mark.parametrize("spec", ["kd_crd_cifar100.toml", "kd_mdistiller_cifar100.toml"])
def test_benchmark_specs_dry_run(spec: str, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["kd", "sweep", str(FIGURES / spec), "--outdir", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    total = next(line for line in out if line.startswith("total"))
    assert (
        total.split()[1]
        == {"kd_crd_cifar100.toml": "558", "kd_mdistiller_cifar100.toml": "456"}[spec]
    )
    assert not tmp_path.exists() or not any(tmp_path.iterdir())


def test_imagenet_spec_is_mdistillers_table(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """kd_imagenet.toml: the two pairs x mdistiller's ImageNet methods (OFD on R50 -> MV1 only,
    CRD+KD on R34 -> R18 only), one seed, torchvision teachers evaluated, not trained; the dry
    run needs no ImageNet folder."""
    spec = FIGURES / "kd_imagenet.toml"
    plan = load_plan(spec, str(tmp_path))
    r18, mv1 = ("resnet34_imagenet", "resnet18_imagenet"), ("resnet50_imagenet", "mobilenetv1")
    cells = Counter((s.teacher, s.model, s.label) for s in plan.students)
    common = {"kd", "at", "crd", "reviewkd", "dkd", "kd_dot"}
    assert {m for t, s, m in cells if (t, s) == r18} == common | {"crd_kd"}
    assert {m for t, s, m in cells if (t, s) == mv1} == common | {"ofd"}
    assert set(cells.values()) == {1} and len(plan.students) == 14
    teachers = [c for c in plan.teachers if c.model in {r18[0], mv1[0]}]
    assert [(c.epochs, c.pretrained, c.seed) for c in teachers] == [(0, "auto", 0)] * 2
    alone = {c.model: c for c in plan.teachers if c.label == "alone"}
    assert set(alone) == {"resnet18_imagenet", "mobilenetv1"} and len(plan.teachers) == 4
    recipe = {(s.model, s.label): (s.batch_size, s.lr) for s in plan.students}
    assert recipe[("resnet18_imagenet", "kd")] == (512, 0.2)
    assert recipe[("resnet18_imagenet", "crd")] == recipe[("mobilenetv1", "reviewkd")] == (256, 0.1)
    assert recipe[("mobilenetv1", "ofd")] == (128, 0.05)
    first = plan.students[0]
    assert (first.epochs, first.milestones, first.weight_decay) == (100, (30, 60, 90), 1e-4)
    assert first.label_smoothing == 0.0 and first.momentum == 0.9
    params = {(s.model, s.label): s.method_params for s in plan.students}
    assert params[("resnet18_imagenet", "dkd")]["beta"] == 0.5
    assert params[("mobilenetv1", "dkd")]["beta"] == 2.0
    assert params[("mobilenetv1", "reviewkd")]["weight"] == 8.0
    assert params[("mobilenetv1", "at")]["teacher_taps"] == ["stage1", "stage2", "stage3"]
    last3 = ["stage2_pre", "stage3_pre", "stage4_pre"]  # mdistiller's OFD: 256->512 ... 1024->2048
    assert params[("mobilenetv1", "ofd")]["student_taps"] == last3
    assert params[("resnet18_imagenet", "crd")]["negatives"] == "with_replacement"
    assert params[("resnet18_imagenet", "kd_dot")]["delta"] == 0.09
    args = ["kd", "sweep", str(spec), "--outdir", str(tmp_path), "--dry-run"]
    assert main(args) == 0
    out = capsys.readouterr().out.splitlines()
    assert next(line for line in out if line.startswith("total")).split()[1] == "18"
    assert not tmp_path.exists() or not any(tmp_path.iterdir())

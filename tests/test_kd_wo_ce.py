"""The KD_wo_CE paper's method end to end: the separated head really cuts the cross-entropy
gradient, the paper's pairs train on the bundled MNIST, and the AdamW/OneCycle recipe resumes
to the same weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sublim.kd.config import KDConfig, preset_fields
from sublim.kd.experiment import Experiment
from sublim.kd.losses import create_distiller
from sublim.kd.models import create_model
from sublim.kd.runner import run_experiment
from sublim.kd.train import model_shapes, run_taps


def test_separated_head_blocks_the_cross_entropy_gradient_from_the_backbone() -> None:
    torch.manual_seed(0)
    student, teacher = create_model("resnet9", 10), create_model("resnet8", 10)
    student.train()
    teacher.eval()
    shapes = model_shapes(student, (3, 32, 32)), model_shapes(teacher, (3, 32, 32))
    d = create_distiller(
        "fkd", *shapes, student_layers=[1, 2], teacher_layers=[1, 2], separate_head=True
    )
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    s = run_taps(student, x, d.student_taps + ("logits",), detach_after=d.detach_after)
    with torch.no_grad():
        t = run_taps(teacher, x, d.teacher_taps)
    assert "logits" not in t  # the teacher stops after its deepest distilled layer
    cut = d.detach_after
    names = [g.name for g in student.layer_table((3, 32, 32))]
    assert cut == 2 and names[cut]
    backbone = [
        p
        for n, p in student.named_parameters()
        if n.startswith(("conv1", "bn1", "layer1", "layer2"))
    ]
    head = list(student.param_groups()["head"])
    F.cross_entropy(s["logits"], y).backward(retain_graph=True)
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in backbone)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in head)
    student.zero_grad(set_to_none=True)
    d(s, t, y)["feat"].backward()
    # every backbone tensor is reached (resnet9 zero-initialises each block's last BN, so some
    # gradients are exactly zero at the start; the path exists all the same)
    assert all(p.grad is not None for p in backbone)
    assert sum(p.grad.abs().sum() for p in backbone) > 0
    assert all(p.grad is None for p in head)  # the feature loss never reaches the head


def _mnist(out: Path, **kw: object) -> KDConfig:
    role, model = str(kw.get("role", "teacher")), str(kw["model"])
    fields = preset_fields("kd-wo-ce-50e", role, model, str(kw.get("method", "none")))
    fields.update(
        dataset="mnist", outdir=str(out), device="cpu", train_limit=64, test_limit=64, epochs=2
    )
    fields.update(batch_size=32, **kw)
    return KDConfig(**fields)


@pytest.mark.parametrize(
    ("teacher", "student", "layers"),
    [("resnet18", "resnet9", [5, 6, 7, 8]), ("vit_ett", "vit_ett", [2, 4, 6, 8])],
)
def test_paper_method_trains_two_epochs_on_mnist(
    tmp_path: Path, teacher: str, student: str, layers: list[int]
) -> None:
    t = run_experiment(_mnist(tmp_path, model=teacher, epochs=1))
    assert t["status"] == "completed"
    config = _mnist(
        tmp_path,
        role="student",
        model=student,
        teacher=teacher,
        method="fkd",
        method_params={"separate_head": True, "teacher_layers": layers},
    )
    result = run_experiment(config)
    assert result["status"] == "completed" and result["epoch"] == 2
    history = Experiment(config.replace(teacher_hash=t["config_hash"])).load("last.pt")["history"]
    assert all(torch.isfinite(torch.tensor(history["train_loss"])))
    assert history["lr"][0] < history["lr"][1]  # OneCycle warming up


def test_adamw_onecycle_experiment_resumes_to_identical_weights(tmp_path: Path) -> None:
    kw = dict(model="resnet8", epochs=3, train_limit=96, test_limit=32)
    whole = run_experiment(_mnist(tmp_path / "a", **kw))
    part = _mnist(tmp_path / "b", **kw)
    stopped = run_experiment(part, stop_after=lambda e: e == 0)
    assert stopped["status"] == "in_progress"
    resumed = run_experiment(part)
    assert resumed["status"] == "completed" and whole["status"] == "completed"
    a = Experiment(_mnist(tmp_path / "a", **kw)).load("last.pt")
    b = Experiment(part).load("last.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    assert a["optimizer"]["param_groups"][0]["betas"] == b["optimizer"]["param_groups"][0]["betas"]


def test_paper_grids_plan_with_conditions_presets_and_layer_lists(tmp_path: Path) -> None:
    from sublim.kd.sweep import load_plan

    root = Path(__file__).parent.parent / "figures"
    main = load_plan(root / "kd_wo_ce_main.toml", str(tmp_path))
    assert (len(main.teachers), len(main.students)) == (63, 288)
    by = {(c.label, c.dataset, c.model, c.seed): c for c in main.students}
    ours = by[("ours", "cifar100", "resnet9", 0)]
    assert ours.method_params["teacher_layers"] == [12, 13, 14, 15]
    assert ours.method_params["separate_head"] is True
    assert (ours.optimizer, ours.schedule, ours.epochs, ours.lr) == ("adamw", "onecycle", 50, 0.05)
    vit = by[("ours", "tinyimagenet", "vit_ett", 1)]
    assert vit.method_params["teacher_layers"] == [7, 8, 11, 12] and vit.lr == 0.01
    teacher = next(t for t in main.teachers if t.model == "vgg19_bn" and t.dataset == "cifar10")
    assert teacher.pretrained_id == "torchvision:vgg19_bn-c79401a0.pth" and teacher.lr == 0.01
    alone = [t for t in main.teachers if t.label == "baseline"]
    assert len(alone) == 36 and {t.lr for t in alone} == {0.01}
    ablations = load_plan(root / "kd_wo_ce_ablations.toml", str(tmp_path))
    assert {t.config_hash for t in ablations.teachers} <= {t.config_hash for t in main.teachers}
    sgd = next(c for c in ablations.students if c.label == "semckd_240e")
    assert (sgd.optimizer, sgd.epochs, sgd.milestones) == ("sgd", 240, (150, 180, 210))


def test_a_missing_layer_list_is_one_line(tmp_path: Path) -> None:
    from sublim.kd.sweep import SpecError, load_plan

    spec = tmp_path / "s.toml"
    spec.write_text(
        'teacher = "resnet34"\nstudent = "resnet9"\n[grid]\ndataset = ["cifar10"]\n'
        '[conditions.ours]\nmethod = "fkd"\nmethod_params = { teacher_layers = "@ours" }\n'
        "[layers.resnet34]\nours = { cifar100 = [12, 13, 14, 15] }\n"
    )
    with pytest.raises(SpecError, match="@ours is not defined for resnet34 on cifar10"):
        load_plan(spec, str(tmp_path))


@pytest.mark.parametrize("start", ["after", "at"])
def test_simkd_variant_runs_the_teachers_copied_tail(start: str) -> None:
    torch.manual_seed(0)
    student, teacher = create_model("resnet9", 10), create_model("resnet34", 10).eval()
    shapes = model_shapes(student, (3, 32, 32)), model_shapes(teacher, (3, 32, 32))
    d = create_distiller(
        "fkd",
        *shapes,
        student_layers=[1, 2, 3, 4],
        teacher_layers=[3, 7, 13, 16],
        projector="embed",
        classifier="teacher_tail",
        tail_start=start,
    )
    d.attach_teacher(teacher, (3, 32, 32))
    assert d.teacher_taps == ("L3", "L7", "L13", "L16") and "logits" not in d.student_taps
    x = torch.randn(2, 3, 32, 32)
    s = run_taps(student, x, d.student_taps)
    assert "logits" not in s  # the student stops at its last distilled layer
    logits = d.tail_logits(s)
    h = d.projectors[-1](s["L4"])  # 512 x 4 x 4 on both sides: no pooling
    after = 16 if start == "after" else 15
    torch.testing.assert_close(logits, d.tail.forward_from(h, after, (3, 32, 32)))
    logits.sum().backward()
    assert all(p.grad is None for p in teacher.parameters())  # the real teacher is untouched
    assert d.tail.classifier.weight.grad is not None
    assert d.tail.layer4[2].conv1.weight.grad is None if start == "after" else not None
    tail_params = 512 * 10 + 10 + (0 if start == "after" else 2 * (512 * 512 * 9 + 2 * 512))
    projectors = sum(p.numel() for p in d.projectors.parameters())
    assert d.extra_parameters() == projectors + tail_params


def test_simkd_variant_trains_and_evaluates_through_the_tail(tmp_path: Path) -> None:
    t = run_experiment(_mnist(tmp_path, model="resnet14", epochs=1))
    config = _mnist(
        tmp_path,
        role="student",
        model="resnet8",
        teacher="resnet14",
        method="fkd",
        epochs=1,
        method_params={
            "student_layers": [1, 2, 3],
            "teacher_layers": [2, 4, 6],
            "projector": "embed",
            "classifier": "teacher_tail",
            "logit_loss": "kd",
        },
    )
    result = run_experiment(config)
    assert result["status"] == "completed" and t["status"] == "completed"
    assert result["extra_parameters"] > 64 * 10  # projectors and the tail's classifier

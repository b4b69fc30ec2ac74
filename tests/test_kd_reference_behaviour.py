"""`--reference-behaviour kd_wo_ce` and each of its items alone: what the switch sets for which
run, and what each item does to the training (the KD_wo_CE code's behaviour, spec section 9)."""

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
from sublim.kd.train import build_models, evaluate, model_shapes

FIGURES = Path(__file__).parent.parent / "figures"
SIMKD = {"projector": "embed", "classifier": "teacher_tail", "logit_loss": "kd"}


def paper(**kw: object) -> KDConfig:
    """A KD_wo_CE student config (50-epoch preset) with `kw` on top."""
    role, model = str(kw.get("role", "student")), str(kw.get("model", "resnet9"))
    fields = preset_fields("kd-wo-ce-50e", role, model, str(kw.get("method", "fkd")))
    fields.update(role="student", model="resnet9", teacher="resnet34", method="fkd")
    fields.update(kw)
    return KDConfig(**fields)


def differences(**kw: object) -> dict[str, tuple[object, object]]:
    """Fields (and method parameters) where the switch changes a config, (default, switched)."""
    a, b = paper(**kw).result_dict(), paper(reference_behaviour="kd_wo_ce", **kw).result_dict()
    out = {k: (a.get(k), b.get(k)) for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
    pa, pb = out.pop("method_params", ({}, {}))
    out.update({f"params.{k}": (pa.get(k), pb[k]) for k in pb or {} if pa.get(k) != pb[k]})
    return out


# ------------------------------------------------------------------ what the switch sets


def test_switch_on_a_cifar_simkd_run() -> None:
    """CIFAR: the reference stored teacher features, so the tail stays in eval mode, no nudge."""
    assert differences(dataset="cifar10", method_params=SIMKD) == {
        "onecycle_plan": (None, "reference"),
        "vit_pos_layout": (None, "reference"),
        "eval_batches": (None, "reference"),
        "reference_behaviour": (None, "kd_wo_ce"),
        "params.tail_start": (None, "at"),
        "params.tail_mode": (None, "eval"),
        "params.projector_bn": (None, "train"),
    }


def test_switch_on_a_tinyimagenet_cnn_simkd_run() -> None:
    """TinyImageNet with a CNN teacher: features online, so the nudge, a train-mode tail and
    logits fixed before the nudge (the KD term reads them)."""
    diff = differences(dataset="tinyimagenet", method_params=SIMKD)
    assert diff["teacher_bn_nudge"] == (None, True)
    assert diff["teacher_logits"] == (None, "reference")
    assert diff["params.tail_mode"] == (None, "train")
    assert set(diff) == {
        "onecycle_plan",
        "vit_pos_layout",
        "eval_batches",
        "reference_behaviour",
        "teacher_bn_nudge",
        "teacher_logits",
        "params.tail_start",
        "params.tail_mode",
        "params.projector_bn",
    }


def test_switch_on_sp_vit_augmented_and_teacher_runs() -> None:
    sp = differences(dataset="cifar100", method_params={"relation": "sp", "logit_loss": "kd"})
    assert sp["params.sp_first_row_only"] == (None, True) and "teacher_bn_nudge" not in sp
    vit = differences(
        dataset="cifar10", model="vit_ett", teacher="vit_b", method_params={"separate_head": True}
    )
    assert vit["params.vit_teacher_view"] == (None, True)
    assert "teacher_logits" not in vit  # no logit loss: nothing reads the teacher's logits
    aug = differences(dataset="cifar10", method="kd", method_params={}, augment="crop=4,hflip=0.5")
    assert aug["augment"] == ("crop=4,hflip=0.5", "batch=1,crop=4,hflip=0.5,meanfill=1")
    assert aug["teacher_logits"] == (None, "reference")
    teacher = KDConfig(role="teacher", model="resnet34", dataset="tinyimagenet")
    switched = teacher.replace(reference_behaviour="kd_wo_ce")
    assert switched.teacher_bn_nudge is False and switched.eval_batches == "reference"
    assert (
        teacher.config_hash
        == KDConfig(role="teacher", model="resnet34").replace(dataset="tinyimagenet").config_hash
    )  # the new fields are out of the hash at their defaults


def test_explicit_method_parameters_win_over_the_switch() -> None:
    c = paper(
        dataset="tinyimagenet",
        method_params={**SIMKD, "tail_mode": "follow"},
        reference_behaviour="kd_wo_ce",
    )
    assert c.method_params["tail_mode"] == "follow" and c.method_params["tail_start"] == "at"


# ------------------------------------------------------------------ each item's effect


def test_reference_evaluation_drops_the_last_partial_batch() -> None:
    from sublim.engine.train import Normalizer
    from sublim.kd.train import Models

    torch.manual_seed(0)
    net = create_model("resnet8", 10).eval()
    x = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)
    y = torch.randint(0, 10, (70,))
    norm = Normalizer((0.5, 0.5, 0.5), (0.25, 0.25, 0.25), torch.device("cpu"))
    models = Models(net)
    loss, acc = evaluate(models, x, y, norm, False, bsize=32, reference=True)
    with torch.no_grad():
        logits = net(norm(x[:64]))["logits"]
    assert acc == pytest.approx(float((logits.argmax(1) == y[:64]).double().mean()))
    assert loss == pytest.approx(float(F.cross_entropy(logits, y[:64])), rel=1e-5)
    _, all_acc = evaluate(models, x, y, norm, False, bsize=32)
    with torch.no_grad():
        whole = net(norm(x))["logits"]
    assert all_acc == pytest.approx(float((whole.argmax(1) == y).double().mean()))


def test_bn_nudge_is_one_train_mode_forward_of_a_zeros_image() -> None:
    teacher = create_model("resnet8", 10, generator=torch.Generator().manual_seed(1))
    for m in teacher.modules():  # trained-looking statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    weights = {k: v.clone() for k, v in teacher.state_dict().items()}
    config = KDConfig(
        role="student", model="resnet8", teacher="resnet8", method="kd", dataset="cifar10"
    )
    plain = build_models(config, torch.device("cpu"), weights).teacher
    nudged = build_models(config.replace(teacher_bn_nudge=True), torch.device("cpu"), weights)
    expect = create_model("resnet8", 10)
    expect.load_state_dict(weights)
    with torch.no_grad():
        expect.train()(torch.zeros(1, 3, 32, 32))
    for key, value in plain.state_dict().items():
        assert torch.equal(value, weights[key]), key
    for key, value in nudged.teacher.state_dict().items():
        assert torch.equal(value, expect.state_dict()[key]), key
    assert not nudged.teacher.training
    bn = "bn1.num_batches_tracked"
    assert int(nudged.teacher.state_dict()[bn]) == int(weights[bn]) + 1


def test_tail_mode_and_projector_bn_pin_modes_through_train_and_eval() -> None:
    student, teacher = create_model("resnet9", 10), create_model("resnet34", 10)
    shapes = model_shapes(student, (3, 32, 32)), model_shapes(teacher, (3, 32, 32))
    layers = {"student_layers": [1, 2, 3, 4], "teacher_layers": [3, 7, 13, 16]}

    def modes(**kw: object) -> tuple[bool, bool, bool, bool]:
        d = create_distiller("fkd", *shapes, **SIMKD, **layers, **kw)
        d.attach_teacher(teacher.eval(), (3, 32, 32))
        bn = [m for m in d.projectors.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        d.train()
        trained = (d.tail.training, all(m.training for m in bn))
        d.eval()
        return (*trained, d.tail.training, all(m.training for m in bn))

    assert modes() == (True, True, False, False)  # follow: train, then eval at test
    assert modes(tail_mode="eval") == (False, True, False, False)
    assert modes(tail_mode="train") == (True, True, True, False)
    assert modes(projector_bn="train") == (True, True, False, True)


def test_vit_teacher_view_scrambles_only_the_mse_targets() -> None:
    student, teacher = create_model("vit_ett", 10), create_model("vit_ett", 10)
    shapes = model_shapes(student, (3, 32, 32)), model_shapes(teacher, (3, 32, 32))
    layers = {"student_layers": [2], "teacher_layers": [3]}
    d = create_distiller("fkd", *shapes, **layers)
    f = torch.randn(2, 65, 192)
    assert torch.equal(d._target_map(f), f.transpose(1, 2))
    dv = create_distiller("fkd", *shapes, vit_teacher_view=True, **layers)
    assert torch.equal(dv._target_map(f), f.reshape(2, 192, 65))  # row-major reinterpretation
    dv.load_state_dict(d.state_dict())
    s, t = {"L2": torch.randn(2, 65, 192)}, {"L3": f}
    assert not torch.allclose(d(s, t, torch.zeros(2).long())["feat"], dv(s, t, None)["feat"])
    sp = create_distiller("fkd", *shapes, relation="sp", **layers)
    spv = create_distiller("fkd", *shapes, relation="sp", vit_teacher_view=True, **layers)
    assert torch.equal(sp(s, t, None)["feat"], spv(s, t, None)["feat"])


# ------------------------------------------------------------------ end to end on MNIST


def _mnist(out: Path, **kw: object) -> KDConfig:
    role, model = str(kw.get("role", "teacher")), str(kw["model"])
    fields = preset_fields("kd-wo-ce-50e", role, model, str(kw.get("method", "none")))
    fields.update(dataset="mnist", outdir=str(out), device="cpu", train_limit=96, test_limit=40)
    fields.update(batch_size=32, epochs=1, **kw)
    return KDConfig(**fields)


def test_fixed_logits_and_a_fixed_teacher_seed_end_to_end(tmp_path: Path) -> None:
    """One teacher (seed 0) serves students of seeds 0 and 1; logits fixed by one augmented pass
    are the same tensor for both; the switch's run completes and evaluates on 32 of 40 images."""
    from sublim.engine.train import Normalizer
    from sublim.kd.data import load_kd_data
    from sublim.kd.runner import load_teacher_weights, pin_teacher
    from sublim.kd.train import reference_logits

    teacher = run_experiment(_mnist(tmp_path, model="resnet8"))
    assert teacher["status"] == "completed"
    kw = dict(role="student", model="resnet8", teacher="resnet8", method="kd", teacher_seed=0)
    kw.update(augment="crop=4,batch=1,meanfill=1", teacher_logits="reference")
    students = [pin_teacher(_mnist(tmp_path, seed=s, **kw)) for s in (0, 1)]
    assert {s.teacher_hash for s in students} == {teacher["config_hash"]}
    data = load_kd_data(students[0])
    norm = Normalizer(data.mean, data.std, torch.device("cpu"))
    weights = load_teacher_weights(students[0])
    fixed = [reference_logits(s, weights, data.train_x, norm, data, False) for s in students]
    assert torch.equal(fixed[0], fixed[1]) and fixed[0].shape == (96, 10)
    online = reference_logits(
        students[0].replace(augment="none"), weights, data.train_x, norm, data, False
    )
    assert not torch.allclose(fixed[0], online)  # augmented on its own, not the clean images
    switched = _mnist(
        tmp_path,
        role="student",
        model="resnet8",
        teacher="resnet8",
        method="fkd",
        method_params={**SIMKD, "student_layers": [1, 2], "teacher_layers": [0, 1]},
        reference_behaviour="kd_wo_ce",
        teacher_seed=0,
        seed=1,
    )
    result = run_experiment(switched)
    assert result["status"] == "completed"
    assert switched.method_params["tail_start"] == "at"
    history = Experiment(pin_teacher(switched)).load("last.pt")["history"]
    assert all(float(a * 32).is_integer() for a in history["test_acc"])  # 32 of 40 images


# ------------------------------------------------------------------ the reference's grids


@pytest.mark.parametrize(
    ("spec", "teachers", "students"),
    [("kd_wo_ce_reference.toml", 9, 280), ("kd_wo_ce_dataaug.toml", 9, 108)],
)
def test_reference_grids_have_the_reference_counts(
    tmp_path: Path, spec: str, teachers: int, students: int
) -> None:
    """Per student seed: the reference's 289 distinct main-set experiments and 117 augmented
    ones (9 teachers + 108); more seeds add students, never teachers (teacher_seed = 0)."""
    from sublim.kd.sweep import load_plan

    one = load_plan(FIGURES / spec, str(tmp_path), seeds="0")
    real = [t for t in one.teachers if t.label is None]
    assert len(real) == teachers
    assert len(one.teachers) - teachers + len(one.students) == students
    three = load_plan(FIGURES / spec, str(tmp_path), seeds="0..2")
    assert len([t for t in three.teachers if t.label is None]) == teachers
    assert len(three.teachers) + len(three.students) == teachers + 3 * students
    assert all(c.reference_behaviour == "kd_wo_ce" for c in (*three.teachers, *three.students))
    if "dataaug" in spec:
        assert all("batch=1" in c.augmentation for c in three.students)


def test_conflicts_and_misplaced_keys_are_one_line(tmp_path: Path) -> None:
    from sublim.errors import ConfigError
    from sublim.kd.sweep import SpecError, load_plan

    with pytest.raises(ConfigError, match="--teacher-bn-nudge.*sets False"):
        paper(dataset="cifar10", teacher_bn_nudge=True, reference_behaviour="kd_wo_ce")
    with pytest.raises(ConfigError, match="--eval-batches.*whole batch of test images"):
        paper(dataset="cifar10", eval_batches="reference", test_limit=40)
    assert paper(teacher_seed=0).teacher_seed is None  # its own seed: the default teacher
    spec = tmp_path / "s.toml"
    spec.write_text(
        'teacher = "resnet34"\nstudent = "resnet9"\nseeds = "0..2"\n'
        '[teacher_recipe]\nteacher_seed = 0\n[conditions.kd]\nmethod = "kd"\n'
    )
    with pytest.raises(SpecError, match="teacher_recipe: teacher_seed"):
        load_plan(spec, str(tmp_path))
    # batch= and meanfill= alone change no image: the reference would still store features
    plain = paper(dataset="cifar10", method_params=SIMKD, reference_behaviour="kd_wo_ce")
    same = paper(
        dataset="cifar10", method_params=SIMKD, augment="batch=1", reference_behaviour="kd_wo_ce"
    )
    assert same.teacher_bn_nudge is plain.teacher_bn_nudge is False
    assert same.method_params["tail_mode"] == "eval"

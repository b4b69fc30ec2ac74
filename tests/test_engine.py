"""Engine pieces on known tensors, and whole runs on the bundled MNIST."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from sublim.config import ExperimentConfig
from sublim.config.perturbspec import parse_shorthand
from sublim.engine import run
from sublim.engine.losses import get_loss
from sublim.engine.metrics import compare, layer_rows
from sublim.engine.perturb import apply_perturbations
from sublim.models import build_model

TINY = dict(
    teacher_epochs=1,
    student_epochs=1,
    noise_steps=2,
    eval_noise_batches=1,
    eval_noise_bsize=100,
)


def test_compare_on_known_tensors() -> None:
    a = torch.tensor([3.0, 4.0])
    b = torch.tensor([4.0, 3.0])
    got = compare(a, b)
    assert got["cosine"] == pytest.approx(24 / 25)
    assert got["diff_norm"] == pytest.approx(math.sqrt(2))
    assert got["reference_norm"] == pytest.approx(5) and got["other_norm"] == pytest.approx(5)
    assert got["relative_diff_reference"] == pytest.approx(math.sqrt(2) / 5)
    assert got["relative_diff_symmetric"] == pytest.approx(2 * math.sqrt(2) / 10)
    zero = compare(torch.zeros(3), torch.ones(3))
    assert math.isnan(zero["cosine"]) and zero["relative_diff_symmetric"] == pytest.approx(2)


def test_layer_rows_statuses_over_the_union_of_layers() -> None:
    w = torch.ones(2, 2)
    ref = {"fc1": {"weight": w, "bias": None}, "fc2": {"weight": w, "bias": torch.ones(2)}}
    other = {
        "fc1": {"weight": -w, "bias": None},
        "fc2": {"weight": torch.ones(3, 2), "bias": None},
        "fc3": {"weight": w, "bias": torch.ones(2)},
    }
    rows = {
        (r["layer_name"], r["tensor_kind"]): r
        for r in layer_rows("teacher_student_final", ref, other)
    }
    assert rows[("fc1", "weight")]["status"] == "comparable"
    assert rows[("fc1", "weight")]["cosine"] == pytest.approx(-1)
    assert rows[("fc1", "bias")]["status"] == "missing_both"
    assert rows[("fc2", "weight")]["status"] == "shape_mismatch"
    assert rows[("fc2", "weight")]["other_shape"] == "3x2"
    assert rows[("fc2", "bias")]["status"] == "missing_tensor_in_student"
    assert rows[("fc3", "weight")]["status"] == "missing_in_teacher"
    assert math.isnan(rows[("fc3", "weight")]["cosine"])


def test_perturbation_delta_has_the_requested_std() -> None:
    spec = parse_shorthand("student:fc1+aux_head,std=0.05,timing=before_student_training")
    c = ExperimentConfig(perturb=(spec,))
    net = build_model(c, "student")
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rows = apply_perturbations(c, net, "student", "before_student_training")
    assert [r["layer_name"] for r in rows] == ["fc1", "aux_head"]
    delta = net.layers["fc1"].weight - before["layers.fc1.weight"]
    assert abs(delta.std().item() - 0.05) < 0.001 and abs(delta.mean().item()) < 0.001
    assert rows[0]["weight_delta_norm"] == pytest.approx(delta.norm().item(), rel=1e-5)
    assert torch.equal(net.layers["fc2"].weight, before["layers.fc2.weight"])
    # other timings and targets do nothing
    assert apply_perturbations(c, net, "teacher", "before_student_training") == []
    assert apply_perturbations(c, net, "student", "after_student_training") == []


def test_perturbation_std_zero_and_weight_only() -> None:
    specs = (
        parse_shorthand("student:aux_head,std=0"),
        parse_shorthand("student:aux_head,std=0.1,include_weight=false"),
    )
    c = ExperimentConfig(perturb=specs)
    net = build_model(c, "student")
    w0 = net.layers["aux_head"].weight.clone()
    rows = apply_perturbations(c, net, "student", "before_student_training")
    assert len(rows) == 2 and rows[0]["weight_delta_norm"] == 0 and rows[0]["bias_delta_norm"] == 0
    assert rows[1]["weight_delta_norm"] == 0 and rows[1]["bias_delta_norm"] > 0
    assert torch.equal(net.layers["aux_head"].weight, w0)
    assert rows[0]["perturb_seed"] != rows[1]["perturb_seed"]


def test_losses_against_plain_formulas() -> None:
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(64, 5, generator=g), torch.randn(64, 5, generator=g) * 2 + 1
    c = ExperimentConfig(distill_loss="kl", temperature=2.0)
    assert get_loss("mse")(s, t, c).item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-6)
    p_t, p_s = F.softmax(t / 2, dim=1), F.softmax(s / 2, dim=1)
    kl = (p_t * (p_t.log() - p_s.log())).sum(dim=1).mean() * 4
    assert get_loss("kl")(s, t, c).item() == pytest.approx(kl.item(), rel=1e-5)
    mu, sd = t.mean(0), t.std(0, unbiased=False)
    z = (((s - mu) / sd - (t - mu) / sd) ** 2).mean()
    assert get_loss("standardized-mse")(s, t, c).item() == pytest.approx(z.item(), rel=1e-5)
    with pytest.raises(KeyError, match="registered: mse"):
        get_loss("nope")


def test_run_is_deterministic_and_records_what_it_did() -> None:
    c = ExperimentConfig(
        **TINY, perturb=(parse_shorthand("teacher:fc1,std=0.01,timing=after_teacher_training"),)
    )
    a, b = run(c), run(c)
    metrics = [k for k in a.run if k.endswith(("_acc", "_loss", "_last")) or k.startswith("cos_")]
    assert len(metrics) > 20
    assert all(a.run[k] == b.run[k] for k in metrics)
    assert a.run["run_id"] != b.run["run_id"]
    assert a.run["config_hash"] == c.config_hash == a.layer_metrics[0]["config_hash"]
    assert len(a.layer_metrics) == 4 * 4 * 2 and len(a.perturbations) == 1
    r = a.run
    # all-A init: teacher and student identical at the start, student's class head untouched
    assert r["cos_init_teacher_student_class_head_weight"] == pytest.approx(1)
    assert r["diff_norm_student_init_final_class_head_weight"] == 0
    assert r["diff_norm_teacher_init_final_aux_head_bias"] == 0
    assert r["student_init_acc"] == r["teacher_init_acc"]
    assert r["train_size"] == 60000 and r["test_size"] == 10000


def test_class_subset_is_scored_over_the_subset() -> None:
    r = run(ExperimentConfig(**TINY, classes=(3, 8))).run
    assert r["num_classes"] == 2 and r["classes"] == [3, 8]
    assert r["test_size"] == 1010 + 974  # MNIST test counts of digits 3 and 8
    assert r["teacher_final_acc"] > 0.9


def test_subliminal_learning_on_mnist() -> None:
    """The science: a student that shares the teacher's init learns the task from noise alone."""
    small = dict(teacher_epochs=1, student_epochs=3, noise_steps=20)
    same = run(ExperimentConfig(**small)).run
    rand_aux = run(ExperimentConfig(**small, student_init="all:A,aux_head:random")).run
    assert same["teacher_final_acc"] > 0.85
    assert same["student_final_acc"] > 0.2
    assert same["student_final_acc"] > rand_aux["student_final_acc"] + 0.1
    assert same["student_final_aux_loss"] < same["student_init_aux_loss"]


def test_teacher_key_ignores_m_and_student_fields() -> None:
    from sublim.engine.teacher import teacher_key

    base = ExperimentConfig()
    for same in (
        base.replace(m=50),
        base.replace(student_init="random,A,A,A", noise_steps=5, student_lr=0.1),
        base.replace(teacher_trainable="all:true,aux_head:false"),  # never trained anyway
        base.replace(perturb=(parse_shorthand("student:fc1,std=0.1"),)),
    ):
        assert teacher_key(same) == teacher_key(base)
    for other in (
        base.replace(seed=1),
        base.replace(teacher_epochs=2),
        base.replace(teacher_init="all:B"),
        base.replace(classes=(0, 1)),
        base.replace(
            perturb=(parse_shorthand("teacher:fc1,std=0.1,timing=after_teacher_training"),)
        ),
    ):
        assert teacher_key(other) != teacher_key(base)
    aux = parse_shorthand("teacher:aux_head,std=0.1,timing=before_teacher_training")
    assert teacher_key(base.replace(perturb=(aux,))) != teacher_key(
        base.replace(m=3, perturb=(aux,))
    )


def test_shared_teacher_gives_the_same_rows_as_separate_runs() -> None:
    from sublim.engine import run_many
    from sublim.engine.teacher import TeacherState

    configs = [
        ExperimentConfig(**TINY, m=3),
        ExperimentConfig(**TINY, m=7, student_init="all:A,fc1:random"),
    ]
    shared = run_many(configs)  # one teacher, one stacked student pair
    for config, rec in zip(configs, shared, strict=True):
        alone = run(config)
        keys = [k for k in alone.run if k not in ("run_id", "timestamp", "runtime_seconds")]
        for k in keys:  # exact, or within the stacked-training tolerance (tests/test_batch.py)
            a, b = rec.run[k], alone.run[k]
            if isinstance(b, float) and a != b:
                assert a == pytest.approx(b, abs=2e-3 if k.endswith("_acc") else 1e-7, rel=1e-3), k
            else:
                assert a == b, k
    # the cache round trip keeps everything
    from sublim.engine import load_data
    from sublim.engine.teacher import train_teacher_stage

    ts = train_teacher_stage(configs[0], load_data(configs[0]), torch.device("cpu"))
    again = TeacherState.from_bytes(ts.to_bytes())
    assert again.key == ts.key and again.metrics == ts.metrics
    assert all(torch.equal(again.state[k], v) for k, v in ts.state.items())

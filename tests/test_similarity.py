"""Teacher-student representational similarity (linear CKA, RSA) in layer_metrics.csv.

The columns come from the evaluation passes a run makes anyway; these tests hold them to a plain
computation on the same test rows, and check what they must show on real runs.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from sublim import ExperimentConfig, run
from sublim.config.perturbspec import parse_shorthand
from sublim.engine import load_data
from sublim.engine.similarity import similarity_subset
from sublim.engine.train import Normalizer, evaluate, evaluate_keeping, norm_constants
from sublim.geometry.similarity import compare_summaries, linear_cka, rsa, summarize
from sublim.models import build_model

SMALL = ExperimentConfig(
    classes=(0, 1, 2),
    teacher_epochs=1,
    student_epochs=2,
    noise_steps=20,
    noise_bsize=200,
    eval_noise_batches=2,
    eval_noise_bsize=200,
    teacher_hidden_dims=(64, 64),
    student_hidden_dims=(64, 64),
    similarity_samples=300,
)
CNN_SPEC = [
    {"name": "conv1", "type": "conv2d", "out_channels": 4, "padding": 1, "pool": "max"},
    {"name": "fc1", "type": "linear", "out_features": 16},
]


def test_summaries_give_plain_cka_and_rsa() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 30, dtype=torch.float64, generator=g)
    y = x @ torch.randn(30, 12, dtype=torch.float64, generator=g)
    y = y + torch.randn(120, 12, dtype=torch.float64, generator=g)
    cka, r = compare_summaries(summarize(x), summarize(y))
    assert cka == pytest.approx(float(linear_cka(x, y)), abs=1e-10)
    assert r == pytest.approx(float(rsa(x, y)), abs=1e-10)
    q, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=g))
    same = compare_summaries(summarize(x), summarize(3 * x @ q))  # rotated and scaled
    assert same[0] == pytest.approx(1.0, abs=1e-10)
    # a map [N, C, H, W] is flattened per sample, whatever its memory layout
    maps = torch.randn(50, 3, 4, 4, generator=g)
    a = summarize(maps.to(memory_format=torch.channels_last))
    b = summarize(maps.reshape(50, -1))
    assert torch.allclose(a.gram, b.gram, atol=1e-4) and torch.allclose(a.rdm, b.rdm, atol=1e-5)
    dead = compare_summaries(summarize(x), summarize(torch.zeros(120, 5)))
    assert all(math.isnan(v) for v in dead)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_keeping_evaluation_equals_evaluate_and_plain_summaries(kind: str) -> None:
    config = SMALL.replace(
        student_type=kind, student_arch_spec=json.dumps(CNN_SPEC) if kind == "cnn" else None
    )
    data = load_data(config)
    norm = Normalizer(*norm_constants(config, data), torch.device("cpu"))
    net = build_model(config, "student")
    x, y = data.test_x, data.test_y
    keep = similarity_subset(config, x.shape[0], torch.device("cpu"))
    assert keep.numel() == 300 and bool((keep[1:] > keep[:-1]).all())
    want = evaluate(net, x, y, norm)
    outputs: dict[str, torch.Tensor] = {}  # the kept rows' layer outputs, in one plain forward
    with torch.no_grad():
        net.features(norm(x[keep]), lambda n, h: outputs.__setitem__(n, h.flatten(1)))
    for chunk in (None, 64):  # the kept rows span several chunks, then the rest
        got = evaluate_keeping(net, x, y, norm, keep, chunk)
        assert got.acc == want[0] and got.loss == pytest.approx(want[1], rel=1e-6)
        assert set(got.reps) == {e["name"] for e in net.spec}
        # nothing chunk-sized stays behind in the normalizer (each run of a stack has its own)
        assert norm._u8 is None and norm._f32 is None
        for name, rep in got.reps.items():
            plain = summarize(outputs[name])
            assert torch.allclose(rep.gram, plain.gram, rtol=1e-4, atol=1e-3), name
            assert torch.allclose(rep.rdm, plain.rdm, atol=1e-5), name


def _values(record: object) -> dict[tuple[str, str, str], tuple[float, float]]:
    return {
        (r["comparison"], r["layer_name"], r["tensor_kind"]): (r["linear_cka"], r["rsa"])
        for r in record.layer_metrics  # type: ignore[attr-defined]
    }


def test_run_reports_cka_and_rsa_per_hidden_layer() -> None:
    rec = run(SMALL)
    values = _values(rec)
    measured = {k: v for k, v in values.items() if not math.isnan(v[0])}
    assert {(c, n) for c, n, _ in measured} == {
        (c, n) for c in ("teacher_student_init", "teacher_student_final") for n in ("fc1", "fc2")
    }
    for comparison in ("teacher_student_init", "teacher_student_final"):
        for name in ("fc1", "fc2"):  # the same on a layer's weight and bias rows
            assert values[comparison, name, "weight"] == values[comparison, name, "bias"]
    assert all(0 < cka <= 1 + 1e-9 and -1 <= r <= 1 for cka, r in measured.values())
    # the subliminal effect in representations: distillation on noise makes the student's
    # hidden layers more like the teacher's than they were at the shared initialisation
    for name in ("fc1", "fc2"):
        init = values["teacher_student_init", name, "weight"]
        final = values["teacher_student_final", name, "weight"]
        assert final[0] > init[0] and final[1] > init[1], name
    off = run(SMALL.replace(similarity_samples=0))
    assert all(math.isnan(v[0]) and math.isnan(v[1]) for v in _values(off).values())
    assert off.run["student_final_acc"] == rec.run["student_final_acc"]


def test_same_seed_same_values_and_late_teacher_perturbation_only_moves_final() -> None:
    a, b = _values(run(SMALL)), _values(run(SMALL))
    assert a == b
    late = SMALL.replace(
        perturb=(parse_shorthand("teacher:fc1,std=0.5,timing=after_student_training"),)
    )
    c = _values(run(late))
    key = ("teacher_student_init", "fc1", "weight")
    assert c[key] == a[key]  # the teacher the student started from
    final = ("teacher_student_final", "fc1", "weight")
    assert c[final][0] < a[final][0]  # the perturbed teacher at the end


def test_a_stack_mixing_subset_sizes_equals_separate_runs() -> None:
    from sublim.engine.batch import plan_stacks, run_group

    configs = [SMALL, SMALL.replace(similarity_samples=50), SMALL.replace(m=4)]
    assert [len(s) for s in plan_stacks(configs, across_seeds=False)] == [3]  # one stack
    for got, config in zip(run_group(configs), configs, strict=True):
        want = _values(run(config))
        for key, (cka, r) in _values(got).items():
            assert cka == pytest.approx(want[key][0], rel=1e-3, abs=1e-6, nan_ok=True), key
            assert r == pytest.approx(want[key][1], rel=1e-3, abs=1e-6, nan_ok=True), key

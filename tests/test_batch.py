"""Batching is invisible: run_group equals separate runs within the documented tolerance."""

from __future__ import annotations

import json

import pytest

from sublim import ExperimentConfig, run
from sublim.config.perturbspec import parse_shorthand
from sublim.engine.batch import plan_stacks, run_group, slot_key
from sublim.models import convpool

BASE = ExperimentConfig(
    classes=(0, 1, 2),
    teacher_epochs=1,
    student_epochs=2,
    noise_steps=6,
    noise_bsize=200,
    eval_noise_batches=2,
    eval_noise_bsize=200,
    teacher_hidden_dims=(64, 64),
    student_hidden_dims=(64, 64),
)
# Float tolerance of stacked vs separate training (bmm vs mm summation order; README):
# accuracies within a few test images, everything else within 1e-3 relative.
ACC_ABS = 2e-3
REL = 1e-3
METRICS = (
    "teacher_final_acc",
    "student_init_acc",
    "student_final_acc",
    "student_init_aux_loss",
    "student_final_aux_loss",
    "student_train_aux_loss_last",
    "cos_final_teacher_student_aux_head_weight",
    "diff_norm_student_init_final_aux_head_weight",
    "diff_norm_student_init_final_class_head_weight",
)


def test_mixed_batch_equals_separate_runs() -> None:
    configs = [
        BASE.replace(m=3),
        BASE.replace(m=9, student_init="all:A,fc1:random"),
        BASE.replace(m=3, student_init="all:B"),
        BASE.replace(m=3, seed=7),
        BASE.replace(m=3, noise_steps=2),  # a prefix of the first run's trajectory
        BASE.replace(m=3, student_epochs=1),  # another prefix
        BASE.replace(m=5, student_trainable="fc1:false"),
        BASE.replace(m=5, distill_loss="kl", temperature=2.0),
        BASE.replace(m=5, perturb=(parse_shorthand("student:aux_head,std=0.05"),)),
    ]
    assert [len(s) for s in plan_stacks(configs, across_seeds=True)] == [9]
    assert sorted(len(s) for s in plan_stacks(configs, across_seeds=False)) == [1, 8]
    grouped = run_group(configs, across_seeds=True)  # the GPU policy, exercised on any device
    for config, got in zip(configs, grouped, strict=True):
        want = run(config)
        assert got.run["config_hash"] == config.config_hash
        assert got.run["noise_steps"] == config.noise_steps
        for key in METRICS:
            if key.endswith("_acc"):
                assert got.run[key] == pytest.approx(want.run[key], abs=ACC_ABS), key
            else:
                assert got.run[key] == pytest.approx(want.run[key], rel=REL, abs=1e-7), key
        assert len(got.layer_metrics) == len(want.layer_metrics)
        for g_row, w_row in zip(got.layer_metrics, want.layer_metrics, strict=True):
            for col in ("linear_cka", "rsa"):  # taken in the stack's own evaluations
                assert g_row[col] == pytest.approx(w_row[col], rel=REL, abs=1e-6, nan_ok=True)
        assert [r["layer_name"] for r in got.perturbations] == [
            r["layer_name"] for r in want.perturbations
        ]
    # the frozen first layer did not move in the stacked run
    frozen = grouped[6].layer_metrics
    row = next(
        r for r in frozen if r["comparison"] == "student_init_final" and r["layer_name"] == "fc1"
    )
    assert row["diff_norm"] == 0


def test_slots_share_trajectories_only_across_steps_and_epochs() -> None:
    assert slot_key(BASE) == slot_key(BASE.replace(noise_steps=100, student_epochs=9))
    assert slot_key(BASE) != slot_key(BASE.replace(m=4))
    assert slot_key(BASE) != slot_key(BASE.replace(noise_bsize=100))


CNN_SPEC = [  # figure 3's student, narrower: padded conv + max pool, conv + max pool 4, fc
    {"name": "conv1", "type": "conv2d", "out_channels": 4, "padding": 2, "pool": "max"},
    {"name": "conv2", "type": "conv2d", "out_channels": 8, "pool": {"kernel_size": 4}},
    {"name": "fc1", "type": "linear", "out_features": 16},
]
CNN = BASE.replace(student_type="cnn", student_arch_spec=json.dumps(CNN_SPEC), student_lr=3e-3)


@pytest.mark.parametrize("chunk_bytes", [None, 1], ids=["whole", "chunked"])
def test_cnn_stack_equals_separate_runs(chunk_bytes, monkeypatch) -> None:
    """Also with the CPU's conv + max pool training in chunks (models.convpool: 28- and 29-row
    chunks of the 200-row noise batches), which the separate runs and the stack's CPU way share."""
    if chunk_bytes is not None:
        monkeypatch.setattr(convpool, "TRAIN_CHUNK_BYTES", chunk_bytes)
    other = [  # no bias, another activation, an avg pool: the generic stacked forward
        {**CNN_SPEC[0], "bias": False, "activation": "tanh"},
        {**CNN_SPEC[1], "stride": 2, "pool": {"type": "avg", "kernel_size": 2}},
        CNN_SPEC[2],
    ]
    configs = [
        CNN.replace(m=3),
        CNN.replace(m=7, student_init="all:A,conv1:random"),
        CNN.replace(m=3, seed=5),
        CNN.replace(m=3, noise_steps=2),  # a prefix of the first run's trajectory
        CNN.replace(m=4, student_trainable="conv1:false"),
        CNN.replace(m=4, student_arch_spec=json.dumps(other)),
    ]
    assert sorted(len(s) for s in plan_stacks(configs, across_seeds=True)) == [1, 5]
    assert sorted(len(s) for s in plan_stacks(configs, across_seeds=False)) == [1, 1, 4]
    wants = [run(config) for config in configs]
    ways = (True, False) if chunk_bytes is None else (False,)  # grouped convs never chunk
    for grouped_convs in ways:  # the GPU's way and the CPU's, on any device
        stacked = run_group(configs, across_seeds=True, grouped=grouped_convs)
        for config, got, want in zip(configs, stacked, wants, strict=True):
            assert got.run["config_hash"] == config.config_hash
            for key in METRICS:  # the aux heads' cosine is nan: teacher and student widths differ
                if key.endswith("_acc"):
                    assert got.run[key] == pytest.approx(want.run[key], abs=ACC_ABS), key
                else:
                    want_v = pytest.approx(want.run[key], rel=REL, abs=1e-7, nan_ok=True)
                    assert got.run[key] == want_v, key
        frozen = stacked[4].layer_metrics
        row = next(
            r
            for r in frozen
            if r["comparison"] == "student_init_final" and r["layer_name"] == "conv1"
        )
        assert row["diff_norm"] == 0


def test_cnn_and_mlp_students_stack_apart() -> None:
    cnn = BASE.replace(student_type="cnn")
    assert plan_stacks([cnn, BASE, cnn.replace(m=5)]) == [[cnn, cnn.replace(m=5)], [BASE]]

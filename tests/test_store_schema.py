"""Column lists match REFERENCE.md: names, order and the 48 compact aliases."""

from __future__ import annotations

import itertools

from sublim.store import (
    ALIAS_COMPARISONS,
    COMPACT_ALIAS_COLUMNS,
    LAYER_METRICS_COLUMNS,
    PERTURBATION_COLUMNS,
    RUNS_BASE_COLUMNS,
    RUNS_COLUMNS,
    SCHEMA_VERSION,
    compact_aliases,
    ordered_columns,
)


def test_runs_columns_reference_names_and_order() -> None:
    assert SCHEMA_VERSION == 1
    assert RUNS_COLUMNS[:6] == [
        "schema_version",
        "run_id",
        "timestamp",
        "runtime_seconds",
        "sweep_name",
        "run_label",
    ]
    assert RUNS_BASE_COLUMNS[-3:] == ["class_count", "class_selection", "base_num_classes"]
    for name in [
        "rng_base",
        "teacher_model_seed",
        "dataloader_seed",
        "torch_version",
        "cuda_available",
        "emnist_split",
        "data_dir",
        "outdir",
        "teacher_hidden_dims",
        "student_arch_description",
        "teacher_layer_names",
        "m",
        "noise_steps",
        "perlin_res",
        "normalize_noise",
        "eval_noise_bsize",
        "student_trainable_config",
        "perturb_specs",
        "student_trainable_parameters",
        "teacher_init_acc",
        "student_final_acc",
        "teacher_final_class_loss",
        "student_final_aux_loss",
        "teacher_train_loss_last",
        "student_train_aux_loss_last",
    ]:
        assert name in RUNS_BASE_COLUMNS, name
    assert len(RUNS_BASE_COLUMNS) == 68
    assert len(set(RUNS_COLUMNS)) == len(RUNS_COLUMNS)
    assert RUNS_COLUMNS == RUNS_BASE_COLUMNS + COMPACT_ALIAS_COLUMNS
    # Adjacent pairs from the reference list stay adjacent and in order.
    i = RUNS_COLUMNS.index
    assert i("teacher_init_acc") + 1 == i("teacher_final_acc") == i("student_init_acc") - 1
    assert i("teacher_total_parameters") < i("student_total_parameters") < i("teacher_init_acc")


def test_all_48_compact_aliases_nested_comparison_head_tensor_metric() -> None:
    comparisons = [
        "init_teacher_student",
        "final_teacher_student",
        "student_init_final",
        "teacher_init_final",
    ]
    expected = [
        f"{metric}_{c}_{head}_{tensor}"
        for c, head, tensor, metric in itertools.product(
            comparisons,
            ["class_head", "aux_head"],
            ["weight", "bias"],
            ["cos", "rel_fro", "diff_norm"],
        )
    ]
    assert len(COMPACT_ALIAS_COLUMNS) == 4 * 2 * 2 * 3 == 48
    assert COMPACT_ALIAS_COLUMNS == expected
    assert RUNS_COLUMNS[-48:] == expected
    assert "rel_fro_teacher_init_final_aux_head_bias" in RUNS_COLUMNS
    assert "diff_norm_final_teacher_student_class_head_weight" in RUNS_COLUMNS
    assert list(ALIAS_COMPARISONS) == comparisons
    assert ALIAS_COMPARISONS["init_teacher_student"] == "teacher_student_init"
    assert ALIAS_COMPARISONS["final_teacher_student"] == "teacher_student_final"


def test_layer_metrics_and_perturbation_columns() -> None:
    assert LAYER_METRICS_COLUMNS == [
        "schema_version",
        "run_id",
        "seed",
        "sweep_name",
        "run_label",
        "comparison",
        "reference_model",
        "other_model",
        "reference_state",
        "other_state",
        "layer_name",
        "tensor_kind",
        "reference_shape",
        "other_shape",
        "status",
        "cosine",
        "diff_norm",
        "reference_norm",
        "other_norm",
        "relative_diff_reference",
        "relative_diff_symmetric",
        "linear_cka",  # sublim's own: teacher-student representations, after the reference's
        "rsa",
    ]
    assert PERTURBATION_COLUMNS[:13] == [
        "schema_version",
        "run_id",
        "seed",
        "sweep_name",
        "run_label",
        "timing",
        "target",
        "layer_name",
        "std",
        "include_weight",
        "include_bias",
        "distribution",
        "perturb_seed",
    ]
    stats = ["delta_norm", "before_norm", "after_norm", "delta_rel", "before_after_cosine"]
    assert PERTURBATION_COLUMNS[13:] == [f"weight_{s}" for s in stats] + [
        f"bias_{s}" for s in stats
    ]


def test_ordered_columns_appends_extras_in_first_seen_order() -> None:
    rows = [{"b": 1, "config_hash": "h"}, {"distill_loss": 0.1, "a": 2, "config_hash": "g"}]
    assert ordered_columns(["a", "b"], rows) == ["a", "b", "config_hash", "distill_loss"]
    assert ordered_columns(["a", "b"], []) == ["a", "b"]


def test_compact_aliases_from_layer_metrics_rows() -> None:
    rows = [
        {
            "comparison": "teacher_student_init",
            "layer_name": "class_head",
            "tensor_kind": "weight",
            "cosine": 0.5,
            "relative_diff_reference": 0.25,
            "diff_norm": 3.0,
        },
        {"comparison": "teacher_student_init", "layer_name": "fc1", "tensor_kind": "weight"},
    ]
    assert compact_aliases(rows) == {
        "cos_init_teacher_student_class_head_weight": 0.5,
        "rel_fro_init_teacher_student_class_head_weight": 0.25,
        "diff_norm_init_teacher_student_class_head_weight": 3.0,
    }


def test_store_imports_no_torch_engine_models_or_config() -> None:
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    code = (
        "import sys; import sublim.store; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'numpy') "
        "or m in ('sublim.engine', 'sublim.models', 'sublim.config')]; print(bad)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": src}
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"

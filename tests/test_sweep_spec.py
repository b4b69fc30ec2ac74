"""Sweep specs: parsing, expansion counts of every figure spec, labels, and bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest

from sublim.sweep.spec import SpecError, load_spec, parse_seeds, parse_spec

FIGURES = Path(__file__).resolve().parents[1] / "figures"
EXPECTED = {
    "fig2_init_conditions.toml": 720,
    "fig3_emnist_class_count.toml": 920,
    "fig3_student_first_width.toml": 760,
    "fig3_student_depth.toml": 80,
    "fig3_mlp_teacher_cnn_student.toml": 40,
    "fig4_m_by_noise_steps.toml": 8000,
    "fig4_m1_noise_sweep.toml": 520,
    "fig4_noise1_m_sweep.toml": 520,
    "fig5_perturb_heads.toml": 1600,
    "fig6_hidden_width.toml": 3100,
}


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_figure_specs_expand_to_the_paper_counts(name: str) -> None:
    spec = load_spec(FIGURES / name)
    configs = [p.config for p in spec.points()]
    assert spec.count() == len(configs) == EXPECTED[name]
    assert len({c.config_hash for c in configs}) == len(configs)  # no accidental duplicates
    assert {c.seed for c in configs} == set(range(20))
    assert all(c.sweep_name == spec.name for c in configs)
    header = (FIGURES / name).read_text().splitlines()[0]
    assert header.startswith("# Figure")


def test_whole_paper_is_16260_runs() -> None:
    assert sum(load_spec(FIGURES / n).count() for n in EXPECTED) == 16260


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_quick_variants_have_two_seeds(name: str) -> None:
    spec = load_spec(FIGURES / "quick" / name)
    assert spec.seeds == (0, 1) and spec.name.endswith("_quick")
    assert 0 < spec.count() < EXPECTED[name]
    assert len(list(spec.points())) == spec.count()


def test_fig2_conditions_set_the_named_layers() -> None:
    points = list(load_spec(FIGURES / "fig2_init_conditions.toml").points())
    by_label = {p.config.run_label: p.config for p in points if p.config.seed == 0}
    init = by_label["rand_sec_hid_m3"].resolved_layer_configs["student_init"]
    assert init == {"fc1": "A", "fc2": "random", "class_head": "A", "aux_head": "A"}
    assert len(by_label) == 36


def test_fig6_frozen_heads_are_the_ones_named() -> None:
    points = list(load_spec(FIGURES / "fig6_hidden_width.toml").points())
    c = next(p.config for p in points if p.axes["condition"] == "aux_heads_frozen")
    for role in ("teacher", "student"):
        trainable = c.resolved_layer_configs[f"{role}_trainable"]
        assert trainable["aux_head"] is False and trainable["class_head"] is True


def test_fig5_perturbation_std_axis() -> None:
    points = list(load_spec(FIGURES / "fig5_perturb_heads.toml").points())
    stds = sorted({p.config.perturb[0].std for p in points})
    assert len(stds) == 40 and stds[0] == 0 and stds[-1] == pytest.approx(0.2)
    layers = {p.config.perturb[0].layers for p in points}
    assert layers == {("aux_head",), ("class_head",)}


def test_grid_zip_conditions_seeds_and_labels() -> None:
    spec = parse_spec(
        {
            "name": "t",
            "seeds": "3..4",
            "label": "{condition}-m{m}-{teacher_hidden_dims[1]}",
            "base": {"noise_steps": 5},
            "grid": {"m": {"range": [1, 3]}},
            "zip": {
                "teacher_hidden_dims": [[8, 1], [8, 2]],
                "student_hidden_dims": [[8, 1], [8, 2]],
            },
            "conditions": {"a": {"student_init": "all:B"}, "b": {}},
        }
    )
    points = list(spec.points(outdir="o", overrides={"teacher_epochs": 2}))
    assert len(points) == spec.count() == 2 * 2 * 3 * 2
    first = points[0].config
    assert (first.seed, first.run_label, first.outdir, first.teacher_epochs) == (
        3,
        "a-m1-1",
        "o",
        2,
    )
    assert first.student_init == "all:B" and first.noise_steps == 5
    assert points[0].axes == {
        "condition": "a",
        "teacher_hidden_dims": [8, 1],
        "student_hidden_dims": [8, 1],
        "m": 1,
    }


def test_default_label_and_linspace() -> None:
    spec = parse_spec({"grid": {"teacher_lr": {"linspace": [0.001, 0.003, 3]}}})
    labels = [p.config.run_label for p in spec.points()]
    assert labels == ["teacher_lr=0.001", "teacher_lr=0.002", "teacher_lr=0.003"]


@pytest.mark.parametrize(
    ("text", "expected"), [("0..3", (0, 1, 2, 3)), ("2,5", (2, 5)), (7, (7,)), ([1, 4], (1, 4))]
)
def test_seed_forms(text, expected) -> None:
    assert parse_seeds(text, "seeds") == expected


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({"gird": {}}, "gird: unknown key"),
        ({"base": {"noise_step": 3}}, r"base\.noise_step: unknown config field"),
        ({"base": {"seed": 3}}, r"base\.seed: set by the sweep"),
        ({"grid": {"m": []}}, r"grid\.m: empty list"),
        ({"grid": {"m": 5}}, r"grid\.m: invalid value 5"),
        ({"grid": {"m": {"range": [5, 1]}}}, r"grid\.m"),
        ({"zip": {"m": [1, 2], "noise_steps": [1]}}, "equal lengths"),
        ({"grid": {"m": [1]}, "zip": {"m": [2]}}, "both grid and zip"),
        ({"grid": {"m": [1, 0]}}, r"--m \(at m=0\): invalid value 0"),
        ({"seeds": "a..b"}, "seeds: invalid value"),
        ({"seeds": [1, 1]}, "seeds: invalid value"),
        ({"label": "{nope}", "grid": {"m": [1]}}, "label.*available names: m"),
        ({"conditions": {"x": 3}}, r"conditions\.x: expected a table"),
        ({"grid": {"perturb.std": [0.1]}}, "set base.perturb"),
    ],
)
def test_bad_specs_name_the_key(data: dict, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        spec = parse_spec(data, "my.toml")
        list(spec.points())


def test_bad_toml_and_missing_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(SpecError, match="bad.toml: not valid TOML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.toml")

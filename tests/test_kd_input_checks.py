"""Input checked before any work: every KD method parameter against its declaration, everything
`kd distill` is given before a teacher is looked for, and `kd sweep --dry-run`'s table of what
will run (dataset x pair x condition, with done and remaining counts)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import pytest
import torch

from sublim.cli.main import main
from sublim.errors import ConfigError
from sublim.kd.config import KDConfig
from sublim.kd.experiment import Experiment
from sublim.kd.losses import METHODS, explicit_params
from sublim.kd.losses.base import Distiller, DistillerConfigError, Shapes
from sublim.kd.losses.registry import accepts, declared, describe
from sublim.kd.sweep import load_plan

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
DISTILL = ["kd", "distill", "--teacher", "resnet34", "--student", "resnet9", "--dataset", "cifar10"]


def _distill(tmp_path: Path, capsys: pytest.CaptureFixture, method: str, params: str) -> str:
    """stderr of `sublim kd distill` with these method parameters (exit status 2 asserted)."""
    outdir, data = tmp_path / "o", tmp_path / "data"
    args = [*DISTILL, "--method", method, "--method-params", params]
    code = main([*args, "--outdir", str(outdir), "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert not outdir.exists() and not data.exists()  # no teacher, no data, nothing written
    return err


@pytest.mark.parametrize(
    ("method", "params", "line"),
    [
        (
            "fkd",
            '{"separate_head": "maybe"}',
            "separate_head: invalid value 'maybe'; fkd expects true or false",
        ),
        (
            "fkd",
            '{"relation": "sp", "sp_first_row_only": "yes"}',
            "sp_first_row_only: invalid value 'yes'; fkd expects true or false",
        ),
        ("kd", '{"temperature": "hot"}', "temperature: invalid value 'hot'; kd expects a finite"),
        ("kd", '{"temperature": true}', "temperature: invalid value True; kd expects a finite"),
        ("dkd", '{"warmup_epochs": 2.5}', "warmup_epochs: invalid value 2.5; dkd expects an int"),
        (
            "fkd",
            '{"projector": "conv7x7"}',
            "projector: invalid value 'conv7x7'; fkd expects one of conv1x1, embed",
        ),
        ("ft", '{"formula": "paper"}', "formula: invalid value 'paper'; ft expects one of"),
        (
            "fkd",
            '{"student_layers": [1, 2, 3, 40]}',
            "student_layers: invalid value 40; the student has generalized layers -6..5",
        ),
        (
            "fkd",
            '{"teacher_layers": [3, 7, 13, 99]}',
            "teacher_layers: invalid value 99; the teacher has generalized layers -18..17",
        ),
        ("fkd", '{"student_layers": "1,2"}', "student_layers: invalid value '1,2'; fkd expects a"),
        ("fkd", '{"teacher_layers": "auto:zz"}', "teacher_layers: invalid value 'auto:zz'"),
        ("at", '{"student_taps": ["stage9"]}', "teacher_taps: invalid value"),
        ("kd", '{"beta": 2}', "beta: invalid value 2; not a parameter of 'kd'"),
    ],
)
def test_bad_method_parameters_are_one_line_before_any_teacher(
    tmp_path: Path, capsys: pytest.CaptureFixture, method: str, params: str, line: str
) -> None:
    err = _distill(tmp_path, capsys, method, params)
    assert err.startswith(f"sublim: error: {line}") and err.count("\n") == 1, err
    assert "train it first" not in err


def test_a_bad_bool_in_a_subprocess_is_one_line_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sublim", *DISTILL, "--method", "fkd", "--outdir", "o"]
        + ["--method-params", '{"separate_head": "maybe"}'],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr == (
        "sublim: error: separate_head: invalid value 'maybe'; fkd expects true or false\n"
    )
    assert list(tmp_path.iterdir()) == []


def test_a_bad_device_is_one_line_before_any_teacher(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    code = main([*DISTILL, "--method", "kd", "--device", "gpu0", "--outdir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("sublim: error: --device: invalid value 'gpu0'"), err
    assert not (tmp_path / "o").exists()


def test_good_parameters_reach_the_missing_teacher(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # everything checks out, so the next thing missing is the teacher
    params = '{"separate_head": true, "teacher_layers": [12, 13, 14, 15], "temperature": 4}'
    err = _distill(tmp_path, capsys, "fkd", params)
    assert "no completed resnet34 teacher" in err and "train it first" in err


def test_the_config_refuses_wrong_types_through_the_python_api() -> None:
    kw = {"role": "student", "model": "resnet9", "teacher": "resnet34", "method": "fkd"}
    with pytest.raises(ConfigError, match="separate_head: invalid value 'yes'"):
        KDConfig(**kw, method_params={"separate_head": "yes"})
    with pytest.raises(ConfigError, match="attention_dims: invalid value"):
        KDConfig(**kw, method_params={"attention_dims": [256, 12.5]})
    ok = KDConfig(**kw, method_params={"separate_head": True, "teacher_layers": "auto:q"})
    assert ok.method_params["separate_head"] is True


def test_spelling_a_default_with_the_wrong_type_is_refused_not_dropped() -> None:
    # 0 == False and 20.0 == 20: dropping them as defaults would hide the wrong type
    with pytest.raises(DistillerConfigError, match="separate_head: invalid value 0"):
        explicit_params("fkd", {"separate_head": 0})
    with pytest.raises(DistillerConfigError, match="warmup_epochs: invalid value 20.0"):
        explicit_params("dkd", {"warmup_epochs": 20.0})
    assert explicit_params("kd", {"temperature": 4}) == {}  # an int is a number: the default


def test_every_parameter_of_every_method_has_a_checkable_declaration() -> None:
    for cls in METHODS.values():
        table = declared(cls)
        assert table and "weight" in table
        for tp, default in table.values():
            assert describe(tp)
            assert default is None or accepts(tp, default), (cls.name, tp, default)


def test_a_new_parameter_is_checked_from_its_annotation_alone() -> None:
    class Toy(Distiller):
        def __init__(
            self,
            s_shapes: Shapes,
            t_shapes: Shapes,
            *,
            flag: bool = False,
            mode: Literal["a", "b"] = "a",
            taps: Sequence[str] | None = None,
            weight: float | None = None,
        ) -> None:
            super().__init__(s_shapes, t_shapes, weight=weight)

    table = declared(Toy)
    assert list(table) == ["flag", "mode", "taps", "weight"]
    flag, mode, taps = (table[k][0] for k in ("flag", "mode", "taps"))
    assert accepts(flag, True) and not accepts(flag, "true") and not accepts(flag, 1)
    assert accepts(mode, "b") and not accepts(mode, "c") and describe(mode) == "one of a, b"
    assert accepts(taps, ["stage1"]) and accepts(taps, None) and not accepts(taps, "stage1")
    assert describe(taps) == "a list of names"


def test_shapes_come_from_a_blank_cpu_model_and_match_the_meta_forward() -> None:
    from sublim.kd.models import create_model
    from sublim.kd.train import model_shapes, named_model_shapes

    rng = torch.get_rng_state()
    for name, shape in (("resnet9", (3, 32, 32)), ("vit_ett", (3, 64, 64)), ("wrn_16_2", None)):
        shape = shape or (3, 32, 32)
        fast = named_model_shapes(name, 10, shape)
        with torch.device("meta"):
            net = create_model(name, 10, image_size=shape[1])
        slow = model_shapes(net, shape)
        assert dict(fast) == dict(slow) and fast.feature_taps == slow.feature_taps
    assert torch.equal(torch.get_rng_state(), rng)  # the global RNG untouched


# ------------------------------------------------------------------------- sweep specs


def _spec(tmp_path: Path, extra: str = "") -> Path:
    spec = tmp_path / "small.toml"
    spec.write_text(
        f"""name = "small"
seeds = "0..1"
[[pairs]]
teacher = "resnet14"
student = "resnet8"
[[pairs]]
teacher = "resnet14"
student = "wrn_16_2"
[base]
epochs = 2
[grid]
dataset = ["cifar10", "svhn"]
[conditions.baseline]
method = "none"
[conditions.vkd]
method = "kd"
[conditions.at_strong]
method = "at"
method_params = {{ weight = 2000.0 }}
{extra}"""
    )
    return spec


def test_sweep_spec_parameters_are_type_checked_when_loaded(tmp_path: Path) -> None:
    from sublim.sweep.spec import SpecError

    bad = _spec(tmp_path, '[params.fkd]\nseparate_head = "yes"\n')
    with pytest.raises(SpecError, match=r"params.fkd: separate_head: invalid value 'yes'"):
        load_plan(bad, str(tmp_path / "o"))
    bad.write_text(_spec(tmp_path).read_text().replace("weight = 2000.0", 'weight = "2k"'))
    with pytest.raises(SpecError, match="condition at_strong.*weight: invalid value '2k'"):
        load_plan(bad, str(tmp_path / "o"))


def test_dry_run_prints_what_will_run_and_what_is_done(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    spec, outdir = _spec(tmp_path), tmp_path / "o"
    assert main(["kd", "sweep", str(spec), "--outdir", str(outdir), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert not outdir.exists()
    assert lines[0] == (
        "kd sweep small: 12 trainings without a teacher (0 done), 16 distillations (0 done)"
    )
    assert lines[1].split() == [
        "dataset",
        "teacher",
        "->",
        "student",
        "condition",
        "runs",
        "done",
        "left",
        "CPU",
        "h",
        "GPU",
        "h",
    ]
    rows = [line.split()[:-2] for line in lines[2:-4]]  # the hours vary with the machine's model
    block = [
        ["teacher", "resnet14", "teacher", "2", "0", "2"],
        ["resnet8", "alone", "baseline", "2", "0", "2"],
        ["resnet14", "->", "resnet8", "vkd", "2", "0", "2"],
        ["resnet14", "->", "resnet8", "at_strong", "2", "0", "2"],
        ["wrn_16_2", "alone", "baseline", "2", "0", "2"],
        ["resnet14", "->", "wrn_16_2", "vkd", "2", "0", "2"],
        ["resnet14", "->", "wrn_16_2", "at_strong", "2", "0", "2"],
    ]
    assert rows == [[ds, *row] for ds in ("cifar10", "svhn") for row in block]
    assert lines[-4].split()[:4] == ["total", "28", "0", "28"]
    assert lines[-3].startswith("remaining: 28 experiments")
    assert "CPU h" in lines[-3] and "GPU h" in lines[-3] and "--gpu-tflops" in lines[-1]
    assert all(len(line) <= 100 for line in lines)

    # one distillation completed, marked the way the experiment store marks it
    plan = load_plan(spec, str(outdir))
    done = next(s for s in plan.students if s.label == "vkd" and s.dataset == "svhn")
    exp = Experiment(done)
    exp.dir.mkdir(parents=True)
    exp.write_status("completed", best_acc=0.5)
    assert main(["kd", "sweep", str(spec), "--outdir", str(outdir), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("16 distillations (1 done)")
    row = next(line for line in lines if line.startswith("svhn") and " vkd " in line)
    assert row.split()[1:7] == ["resnet14", "->", done.model, "vkd", "2", "1"]
    assert row.split()[7] == "1"
    assert lines[-3].startswith("remaining: 27 experiments")
    # GPU hours scale with the rate given
    assert main(["kd", "sweep", str(spec), "--outdir", str(outdir), "--dry-run"]) == 0
    slow = capsys.readouterr().out.splitlines()[-4].split()[-1]
    args = ["kd", "sweep", str(spec), "--outdir", str(outdir), "--dry-run", "--gpu-tflops", "20"]
    assert main(args) == 0
    fast = capsys.readouterr().out.splitlines()[-4].split()[-1]
    assert float(fast) == pytest.approx(float(slow) / 2, rel=0.05, abs=0.01)

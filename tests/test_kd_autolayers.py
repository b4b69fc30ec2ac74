"""fkd's teacher_layers = "auto:METRIC": chosen from the teacher's layer-quality analysis,
written into the student's config and hash; a KD sweep runs teacher -> analysis -> student."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sublim.cli.main import main
from sublim.errors import ConfigError
from sublim.geometry import METRICS
from sublim.kd.analyze import CSV_NAME, KEY_NAME, cache_key, find_target, write_rows
from sublim.kd.autolayers import SETTINGS, resolve_auto_layers
from sublim.kd.config import AUTO_METRICS, KDConfig
from sublim.kd.experiment import Experiment, experiment_dir
from sublim.kd.runner import prepare_check

# a hand-made curve for resnet18's 10 layers: Q peaks at 3, 5, 7, 8; S at 0, 1, 2, 9
Q = [0.1, 0.2, 0.3, 0.9, 0.4, 0.8, 0.5, 0.95, 0.85, 0.6]
S = [0.9, 0.8, 0.7, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1, 0.75]


def _analysed_teacher(out: Path) -> KDConfig:
    """A completed resnet18 teacher directory holding a synthetic, cached layer_quality.csv."""
    teacher = KDConfig(model="resnet18", dataset="mnist", outdir=str(out), train_limit=100)
    exp = Experiment(teacher)
    exp.dir.mkdir(parents=True)
    exp.write_config()
    exp.write_status("completed", epoch=1, epochs=1)
    (exp.dir / "best.pt").write_bytes(b"weights")  # never read: the analysis is cached
    rows = [  # fmt: skip
        {
            "index": k,
            "name": f"l{k}",
            "rel_depth": k / 9,
            "layer": k,
            "q": q,
            "s": s,
            "i": 0.5,
            "e": 0.4 + s / 4,
        }
        for k, (q, s) in enumerate(zip(Q, S, strict=True))
    ]
    (exp.dir / CSV_NAME).write_text(write_rows(rows))
    key = cache_key(find_target(exp.dir), SETTINGS)
    (exp.dir / KEY_NAME).write_text(json.dumps({"key": key}))
    return teacher


def _student(teacher: KDConfig, layers: object) -> KDConfig:
    return KDConfig(
        role="student",
        model="resnet9",  # standard student layers [1, 2, 3, 4]: k = 4
        teacher="resnet18",
        method="fkd",
        method_params={"separate_head": True, "teacher_layers": layers},
        dataset="mnist",
        outdir=teacher.outdir,
        train_limit=100,
        teacher_checkpoint_path=str(experiment_dir(teacher) / "best.pt"),
        teacher_hash=teacher.config_hash,
    )


def test_auto_layers_are_the_top_k_by_the_metric_and_enter_the_hash(tmp_path: Path) -> None:
    assert AUTO_METRICS == METRICS
    teacher = _analysed_teacher(tmp_path)
    auto = _student(teacher, "auto:q")
    resolved = resolve_auto_layers(auto, compute=False)
    assert resolved is not None
    assert resolved.method_params["teacher_layers"] == [3, 5, 7, 8]  # ascending, one2one
    assert resolved.teacher_layers_requested == "auto:q"  # what the user asked, for reports
    assert resolved.config_hash != auto.config_hash
    assert resolved.config_hash == _student(teacher, [3, 5, 7, 8]).config_hash
    by_s = resolve_auto_layers(_student(teacher, "auto:s"), compute=False)
    assert by_s is not None and by_s.method_params["teacher_layers"] == [0, 1, 2, 9]
    (experiment_dir(teacher) / KEY_NAME).unlink()
    assert resolve_auto_layers(auto, compute=False) is None  # not analysed: nothing computed
    prepare_check(auto, teacher=False)  # validation accepts auto before any analysis


@pytest.mark.parametrize(
    ("layers", "words"),
    [("auto:zz", "'auto:zz'; a list of generalized-layer indices, or auto:METRIC"), ("best", "")],
)
def test_bad_layer_specs_are_one_line(
    layers: str, words: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ConfigError, match="teacher_layers: invalid value"):
        KDConfig(role="student", teacher="resnet18", method="fkd", model="resnet9",
                 method_params={"teacher_layers": layers})  # fmt: skip
    params = json.dumps({"teacher_layers": layers})
    argv = ["kd", "distill", "--teacher", "resnet18", "--student", "resnet9", "--method", "fkd"]
    code = main([*argv, "--method-params", params, "--outdir", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and words in err, err
    assert not (tmp_path / "o").exists()


def test_kd_sweep_analyses_the_teacher_before_its_auto_student(tmp_path: Path) -> None:
    from sublim.kd.sweep import execute, load_plan
    from sublim.sweep.executors import make_executor

    spec = tmp_path / "auto.toml"
    spec.write_text(
        f"""name = "auto"
teacher = "resnet8"
student = "resnet8"
[base]
dataset = "mnist"
data_dir = "{tmp_path / "none"}"
device = "cpu"
epochs = 1
batch_size = 100
train_limit = 200
test_limit = 100
[grid]
method = ["fkd"]
method_params = [{{ student_layers = [1, 2], teacher_layers = "auto:q" }}]
"""
    )
    outdir = str(tmp_path / "o")
    plan = load_plan(spec, outdir)
    assert plan.students[0].method_params["teacher_layers"] == "auto:q"  # teacher not trained
    executor = make_executor("inline")
    try:
        assert execute(plan, executor, quiet=True) == 0
    finally:
        executor.close()
    teacher_dir = experiment_dir(plan.teachers[0])
    rows = (teacher_dir / CSV_NAME).read_text().splitlines()
    assert len(rows) == 1 + 5
    (student_dir,) = [p.parent for p in Path(outdir).rglob("status.json") if "fkd" in p.parts]
    config = json.loads((student_dir / "config.json").read_text())
    chosen = config["method_params"]["teacher_layers"]
    assert isinstance(chosen, list) and len(chosen) == 2 and chosen == sorted(chosen)
    status = json.loads((student_dir / "status.json").read_text())
    analysed = (teacher_dir / KEY_NAME).stat().st_mtime
    assert status["status"] == "completed" and status["finished_at"]
    assert (student_dir / "config.json").stat().st_mtime > analysed  # analysis first
    again = load_plan(spec, outdir)  # resolved at plan time now: recognised as done
    assert again.students[0].method_params["teacher_layers"] == chosen
    assert again.summary().endswith("1 distillations (1 done)")


def test_report_draws_layer_quality_per_model_and_across_depth(tmp_path: Path) -> None:
    from sublim.analysis.report import ReportOptions, build_report

    teacher = _analysed_teacher(tmp_path / "kd")
    other = tmp_path / "kd" / "cifar10" / "teacher" / "resnet8" / "seed_0_abc"
    other.mkdir(parents=True)
    rows = [
        {"index": k, "rel_depth": k / 4, "model": "resnet8", "dataset": "cifar10", "s": 0.1,
         "i": 0.5, "e": 1.0 - k / 10, "q": 0.8 - k / 20}
        for k in range(5)
    ]  # fmt: skip
    (other / CSV_NAME).write_text(write_rows(rows))
    result = build_report(tmp_path / "kd", tmp_path / "r", ReportOptions(html=True))
    names = sorted(p.name for p in result.files if p.suffix == ".png")
    teacher = f"layer_quality_mnist_resnet18_{experiment_dir(teacher).name}.png"
    assert names == sorted(
        [
            "kd_mnist.png",
            "layer_quality_cifar10_resnet8_seed_0_abc.png",
            "layer_quality_depth.png",
            teacher,
        ]
    )
    assert all((tmp_path / "r" / n).stat().st_size > 10_000 for n in names)
    assert "Layerwise knowledge quality" in (tmp_path / "r" / "report.html").read_text()

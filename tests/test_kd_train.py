"""KD experiments end to end on tiny generated CIFAR-10: every method trains, a stopped or
killed experiment resumes to the same weights, a finished one is skipped, bad input is one line."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sublim.kd.config import KDConfig
from sublim.kd.experiment import experiment_dir
from sublim.kd.losses import METHODS
from sublim.kd.runner import run_experiment

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{k}", 40) for k in range(1, 6)] + [("test_batch", 100)]:
        labels = rng.integers(0, 10, n)
        x = rng.integers(0, 60, (n, 3, 32, 32)).astype(np.uint8)
        for i, label in enumerate(labels):
            x[i, label % 3] += np.uint8(20 * label)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.reshape(n, -1), b"labels": labels.tolist()}, f, protocol=2)
    return root


def _config(cifar: Path, out: Path, **kw: object) -> KDConfig:
    base = dict(
        dataset="cifar10",
        data_dir=str(cifar),
        outdir=str(out),
        device="cpu",
        model="resnet8",
        epochs=3,
        batch_size=50,
        lr=0.05,
    )
    return KDConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def teacher(cifar: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("kd")
    result = run_experiment(_config(cifar, out, model="resnet14", epochs=2))
    assert result["status"] == "completed" and not result["skipped"]
    return out


def _student(cifar: Path, out: Path, method: str, **kw: object) -> KDConfig:
    return _config(cifar, out, role="student", teacher="resnet14", method=method, **kw)


def test_teacher_files_and_skip(cifar: Path, teacher: Path) -> None:
    config = _config(cifar, teacher, model="resnet14", epochs=2)
    folder = experiment_dir(config)
    assert folder.name.startswith("seed_0_") and folder.parent.name == "resnet14"
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["epoch"] == 2
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epoch"] == [1, 2] and len(metrics["test_acc"]) == 2
    assert {"train_loss", "train_acc", "test_loss", "lr"} <= set(metrics)
    best = torch.load(folder / "best.pt", weights_only=True)
    assert best["test_acc"] == status["best_acc"] == max(metrics["test_acc"])
    assert status["last_acc"] == metrics["test_acc"][-1]
    before = (folder / "last.pt").stat().st_mtime_ns
    again = run_experiment(config)
    assert again["skipped"] and (folder / "last.pt").stat().st_mtime_ns == before


@pytest.mark.parametrize("method", ["none", *sorted(METHODS)])
def test_every_method_trains_two_steps(cifar: Path, teacher: Path, method: str) -> None:
    init = 1 if method in ("fitnets", "ft", "ab", "fsp") else 0
    extra: dict[str, object] = {}
    if method == "fkd":  # the paper's method on the zoo's generalized layers
        layers = {"student_layers": [1, 2], "teacher_layers": [2, 4], "separate_head": True}
        extra["method_params"] = layers
    config = _student(cifar, teacher, method, epochs=1, train_limit=100, init_epochs=init, **extra)
    result = run_experiment(config)
    assert result["status"] == "completed"
    metrics = json.loads((Path(result["dir"]) / "metrics.json").read_text())
    assert len(metrics["epoch"]) == 1 + init
    assert all(np.isfinite(metrics["train_loss"]))
    if method in ("fitnets", "ft", "simkd", "fkd"):
        assert result["extra_parameters"] > 0


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)["model"]


def _same(a: object, b: object) -> bool:
    """Deep equality of checkpoint contents (tensors compared exactly)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


@pytest.mark.parametrize(
    ("method", "init", "stop"),
    [("none", None, 0), ("fitnets", 1, 0), ("ft", 2, 0), ("dkd", None, 1)],
)
def test_stopped_experiment_resumes_to_identical_state(
    cifar: Path, teacher: Path, tmp_path: Path, method: str, init: int | None, stop: int
) -> None:
    """Stopped after epoch `stop` (inside FT's paraphraser stage, at FitNets' stage change, in
    the main stage) and resumed: model, distiller, optimizer, best weights and curves all equal
    those of an uninterrupted run."""
    whole = _student(cifar, teacher, method, init_epochs=init)
    a = Path(run_experiment(whole)["dir"])
    ck = str(experiment_dir(_config(cifar, teacher, model="resnet14", epochs=2)) / "best.pt")
    part = whole.replace(outdir=str(tmp_path), teacher_checkpoint_path=ck)
    first = run_experiment(part, stop_after=lambda e: e == stop)
    assert first["status"] == "in_progress" and first["epoch"] == stop + 1
    done = run_experiment(part)
    assert done["status"] == "completed" and not done["skipped"]
    b = Path(done["dir"])
    last_a, last_b = (torch.load(d / "last.pt", weights_only=True) for d in (a, b))
    for key in ("model", "distiller", "optimizer", "scaler", "history", "best_acc", "epoch"):
        assert _same(last_a[key], last_b[key]), key
    best_a, best_b = (torch.load(d / "best.pt", weights_only=True) for d in (a, b))
    assert _same(best_a["weights"], best_b["weights"]) and best_a["epoch"] == best_b["epoch"]


def test_student_refuses_an_unfinished_or_missing_teacher(cifar: Path, tmp_path: Path) -> None:
    from sublim.errors import ConfigError

    with pytest.raises(ConfigError, match="no completed resnet14 teacher for seed 0 \\(none"):
        run_experiment(_student(cifar, tmp_path, "kd"))
    half = _config(cifar, tmp_path, model="resnet14", epochs=3)
    run_experiment(half, stop_after=lambda e: e == 0)
    with pytest.raises(ConfigError, match="is in_progress at epoch 1/3"):
        run_experiment(_student(cifar, tmp_path, "kd"))
    # a student learning from another teacher is another experiment
    run_experiment(half)
    one = _student(cifar, tmp_path, "kd", epochs=1)
    first = run_experiment(one)
    other = run_experiment(
        one.replace(teacher_checkpoint_path=str(Path(first["dir"]) / "best.pt"), teacher="resnet8")
    )
    assert other["dir"] != first["dir"]


@pytest.mark.slow  # a killed subprocess (~25 s); make test-slow
def test_killed_process_resumes_to_identical_weights(cifar: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "sublim", "kd", "train-teacher", "--dataset", "cifar10"]
    args += ["--data-dir", str(cifar), "--model", "resnet8", "--epochs", "6"]
    args += ["--batch-size", "50", "--lr", "0.05", "--device", "cpu", "--quiet"]
    whole = subprocess.run(
        args + ["--outdir", "a"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr
    proc = subprocess.Popen(
        args + ["--outdir", "b"],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    status = None
    deadline = time.time() + 120
    while time.time() < deadline:
        found = list((tmp_path / "b").rglob("status.json"))
        if found:
            status = json.loads(found[0].read_text() or "{}")
            if status.get("epoch", 0) >= 2:
                break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert status is not None and status["status"] == "in_progress"
    again = subprocess.run(
        args + ["--outdir", "b"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr
    (a,) = (tmp_path / "a").rglob("last.pt")
    (b,) = (tmp_path / "b").rglob("last.pt")
    wa, wb = _weights(a), _weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_schedules() -> None:
    c = KDConfig(epochs=10, lr=0.1, schedule="cosine", warmup_epochs=2)
    assert [round(c.lr_at(e), 4) for e in (0, 1, 2)] == [0.0333, 0.0667, 0.1]
    assert c.lr_at(9) < 0.01
    m = KDConfig(epochs=10, lr=0.1, schedule="multistep", milestones=(3, 6), gamma=0.1)
    assert [round(m.lr_at(e), 5) for e in (0, 3, 6, 9)] == [0.1, 0.01, 0.001, 0.001]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["distill", "--method", "crdd", "--teacher", "resnet14", "--student", "resnet8"],
            "--method: invalid value 'crdd'; allowed: none, ab, at, cc, crd",
        ),
        (
            ["distill", "--method", "kd", "--teacher", "resnet14", "--student", "resnet7"],
            "--student: invalid value 'resnet7'",
        ),
        (
            [
                "distill",
                "--method",
                "at",
                "--teacher",
                "resnet14",
                "--student",
                "resnet8",
                "--method-params",
                "{bad",
            ],
            "--method-params: invalid value '{bad'; not JSON",
        ),
        (["train-teacher", "--schedule", "step"], "--schedule: invalid value 'step'"),
        (["train-teacher", "--dataset", "places365"], "--dataset: invalid value 'places365'"),
        (["train-teacher", "--lr", "-1"], "--lr: invalid value -1.0"),
        (
            [
                "distill",
                "--method",
                "kd",
                "--teacher",
                "resnet14",
                "--student",
                "resnet8",
                "--init-epochs",
                "2",
            ],
            "--init-epochs: invalid value 2; only fitnets",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "sublim", "kd", *args, "--outdir", "o"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sublim: error: {message}"), proc.stderr
    assert not (tmp_path / "o").exists()


def test_bad_tap_and_missing_teacher_fail_before_data(
    cifar: Path, teacher: Path, tmp_path: Path
) -> None:
    from sublim.errors import ConfigError
    from sublim.kd.runner import prepare_check, resolve_teacher

    bad_tap = _student(cifar, teacher, "fitnets", method_params={"hint": "stage9"})
    with pytest.raises(ConfigError, match="the teacher has no tap 'stage9'"):
        prepare_check(resolve_teacher(bad_tap))
    with pytest.raises(ConfigError, match="temperature: invalid value 'hot'; kd expects a"):
        _student(cifar, teacher, "kd", method_params={"temperature": "hot"})  # at the config
    with pytest.raises(ConfigError, match="no completed resnet14 teacher"):
        resolve_teacher(_student(cifar, tmp_path, "kd"))
    wrong = tmp_path / "wrong.pt"
    torch.save({"weights": {"fc.weight": torch.zeros(2)}}, wrong)
    with pytest.raises(ConfigError, match="not a resnet14 for 10 classes"):
        prepare_check(
            resolve_teacher(_student(cifar, tmp_path, "kd", teacher_checkpoint_path=str(wrong)))
        )


def test_report_summarises_kd_experiments(cifar: Path, teacher: Path, tmp_path: Path) -> None:
    from sublim.analysis.report import ReportOptions, build_report

    ck = str(experiment_dir(_config(cifar, teacher, model="resnet14", epochs=2)) / "best.pt")
    for seed in (0, 1):
        run_experiment(
            _student(cifar, tmp_path / "kd", "kd", epochs=1, seed=seed, teacher_checkpoint_path=ck)
        )
    stopped = _student(cifar, tmp_path / "kd", "at", epochs=2, teacher_checkpoint_path=ck)
    run_experiment(stopped, stop_after=lambda e: e == 0)
    seen: list[str] = []
    result = build_report(
        tmp_path / "kd", tmp_path / "o", ReportOptions(n_resamples=200, html=True), seen.append
    )
    lines = (tmp_path / "o" / "kd_summary.csv").read_text().splitlines()
    assert lines[0] == "dataset,teacher,student,method,metric,n,mean,std,median,ci_low,ci_high"
    assert {line.split(",")[4] for line in lines[1:]} == {"best_acc", "last_acc"}
    assert all(line.split(",")[5] == "2" for line in lines[1:])  # two seeds of kd
    assert any("1 KD experiments not completed" in w for w in seen)
    assert (tmp_path / "o" / "kd_cifar10.png").stat().st_size > 10_000
    assert "KD experiments" in result.table_text and "resnet8" in result.table_text


@pytest.mark.slow  # real worker processes and a Dask cluster (~40 s); make test-slow and CI
@pytest.mark.parametrize("executor", ["processes:2", "dask-local:2"])
def test_kd_sweep_runs_students_after_their_teachers(
    cifar: Path, tmp_path: Path, executor: str
) -> None:
    spec = tmp_path / "kd.toml"
    spec.write_text(
        f"""name = "tiny"
seeds = "0..1"
teacher = "resnet14"
student = "resnet8"
[base]
dataset = "cifar10"
data_dir = "{cifar}"
device = "cpu"
epochs = 1
batch_size = 100
lr = 0.05
[teacher_recipe]
epochs = 2
[grid]
method = ["kd", "sp"]
"""
    )
    args = [sys.executable, "-m", "sublim", "kd", "sweep", str(spec), "--outdir", "o"]
    proc = subprocess.run(
        args + ["--executor", "processes:2"],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    last = "kd sweep tiny: 2 trainings without a teacher (2 done), 4 distillations (4 done)"
    assert proc.stdout.splitlines()[-1] == last
    statuses = {p.parent: json.loads(p.read_text()) for p in (tmp_path / "o").rglob("status.json")}
    assert len(statuses) == 6 and all(s["status"] == "completed" for s in statuses.values())
    teachers = {d.name.split("_")[1]: s for d, s in statuses.items() if "teacher" in d.parts}
    for folder, status in statuses.items():
        if "teacher" in folder.parts:
            assert status["epochs"] == 2
            continue
        seed = folder.name.split("_")[1]
        assert status["started_at"] > teachers[seed]["finished_at"]  # waited for its teacher
        config = json.loads((folder / "config.json").read_text())
        assert f"/teacher/resnet14/seed_{seed}_" in config["teacher_checkpoint_path"]
    again = subprocess.run(
        args + ["--dry-run"], cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=120
    )
    lines = again.stdout.strip().splitlines()
    assert lines[0] == last and lines[-3].startswith("remaining: 0 experiments, 0.0 PFLOP")
    bad = tmp_path / "bad.toml"
    bad.write_text(spec.read_text().replace('method = ["kd", "sp"]', 'method = ["kd", "crdd"]'))
    proc = subprocess.run(
        [sys.executable, "-m", "sublim", "kd", "sweep", str(bad)],
        cwd=tmp_path,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        proc.returncode == 2 and "(at method=crdd): --method: invalid value 'crdd'" in proc.stderr
    )


@pytest.mark.parametrize(
    ("spec", "line"),
    [
        (
            "kd_beta_notes.toml",
            "kd sweep kd_beta_notes: 24 trainings without a teacher (0 done), 72 distillations (0 done)",
        ),
        (
            "kd_cifar100_methods.toml",
            "kd sweep kd_cifar100_methods: 6 trainings without a teacher (0 done), 30 distillations (0 done)",
        ),
    ],
)
def test_figure_specs_plan(spec: str, line: str, tmp_path: Path) -> None:
    from sublim.kd.sweep import load_plan

    path = Path(__file__).resolve().parents[1] / "figures" / spec
    plan = load_plan(path, str(tmp_path))
    assert plan.summary() == line
    assert all(s.teacher_checkpoint_path.endswith("best.pt") for s in plan.students)
    dkd = [s for s in plan.students if s.method == "dkd"]
    # mdistiller tunes DKD's beta per pair: 2 for the width-16 ResNet pairs (not the default 8)
    assert all(s.method_params == {"beta": 2.0} for s in dkd)
    assert all(s.method_params == {} for s in plan.students if s.method != "dkd")


def test_kd_sweep_pairs_and_per_method_params(tmp_path: Path) -> None:
    from sublim.kd.sweep import load_plan
    from sublim.sweep.spec import SpecError

    spec = tmp_path / "pairs.toml"
    head = 'seeds = "0..1"\n[base]\ndataset = "cifar100"\n[grid]\nmethod = ["kd", "dkd"]\n'
    spec.write_text(
        head
        + "[params.dkd]\nbeta = 8.5\nwarmup_epochs = 5\n"
        + '[[pairs]]\nteacher = "resnet56"\nstudent = "resnet20"\nparams.dkd = { beta = 2.0 }\n'
        + '[[pairs]]\nteacher = "wrn_40_2"\nstudent = "wrn_16_2"\nparams.dkd = { beta = 6.0 }\n'
        + '[[pairs]]\nteacher = "vgg13"\nstudent = "vgg8"\n'
    )
    plan = load_plan(spec, str(tmp_path))
    assert (len(plan.teachers), len(plan.students)) == (6, 12)  # 3 pairs x 2 seeds; x 2 methods
    params = {(s.teacher, s.model, s.method): s.method_params for s in plan.students}
    assert params[("resnet56", "resnet20", "dkd")] == {"beta": 2.0, "warmup_epochs": 5}
    assert params[("wrn_40_2", "wrn_16_2", "dkd")] == {"beta": 6.0, "warmup_epochs": 5}
    assert params[("vgg13", "vgg8", "dkd")] == {"beta": 8.5, "warmup_epochs": 5}
    assert params[("vgg13", "vgg8", "kd")] == {}
    # base/grid method_params are the most specific
    spec.write_text(spec.read_text().replace("[grid]", "method_params = { beta = 1.0 }\n[grid]"))
    spec.write_text(spec.read_text().replace('method = ["kd", "dkd"]', 'method = ["dkd"]'))
    plan = load_plan(spec, str(tmp_path))
    assert all(s.method_params == {"beta": 1.0, "warmup_epochs": 5} for s in plan.students)
    one = 'teacher = "resnet56"\nstudent = "resnet20"\n'
    bad = {
        'teacher = "resnet56"\n' + head + '[[pairs]]\nteacher = "a"\nstudent = "b"\n': "not both",
        one + head + "[params.dkd]\nbta = 2.0\n": "bta: not a parameter of 'dkd'",
        one + head + "[params.dkdd]\nbeta = 2.0\n": "dkdd: not a method",
        head + '[[pairs]]\nteacher = "resnet56"\n': "pairs[0]: student: expected a model name",
        head + '[[pairs]]\nteacher = "a"\nstudent = "b"\nseed = 3\n': "pairs[0]: seed: unknown",
    }
    for text, message in bad.items():
        spec.write_text(text)
        with pytest.raises(SpecError, match=re.escape(message)):
            load_plan(spec, str(tmp_path))


def test_kd_sweep_pair_recipe_is_the_students_alone(tmp_path: Path) -> None:
    """RepDistiller trains ShuffleNet and MobileNet students at lr 0.01, their teachers at 0.05:
    a pair's recipe reaches its student and that student trained alone, not the teacher."""
    from sublim.kd.sweep import load_plan
    from sublim.sweep.spec import SpecError

    spec = tmp_path / "recipe.toml"
    head = '[base]\ndataset = "cifar100"\nlr = 0.05\n[grid]\nmethod = ["none", "kd"]\n'
    spec.write_text(
        head
        + '[[pairs]]\nteacher = "vgg13"\nstudent = "mobilenetv2"\nrecipe = { lr = 0.01 }\n'
        + '[[pairs]]\nteacher = "vgg13"\nstudent = "vgg8"\n'
    )
    plan = load_plan(spec, str(tmp_path))
    lr = {(c.role, c.model): c.lr for c in (*plan.teachers, *plan.students)}
    assert lr == {
        ("teacher", "vgg13"): 0.05,
        ("teacher", "mobilenetv2"): 0.01,  # alone
        ("teacher", "vgg8"): 0.05,
        ("student", "mobilenetv2"): 0.01,
        ("student", "vgg8"): 0.05,
    }
    assert len(plan.teachers) == 3  # one vgg13 teacher shared by both pairs
    text = spec.read_text().replace('student = "vgg8"\n', 'student = "vgg8"\nskip = ["kd"]\n')
    spec.write_text(text)
    plan = load_plan(spec, str(tmp_path))
    assert [(c.model, c.method) for c in plan.students] == [("mobilenetv2", "kd")]
    for text, message in {
        "recipe = 0.01\n": "pairs[0]: recipe: expected a table",
        "recipe = { seed = 3 }\n": "pairs[0]: recipe: seed: set by the sweep",
        "recipe = { lrr = 3 }\n": "pairs[0]: recipe: lrr: unknown field",
        'skip = "kd"\n': "pairs[0]: skip: expected a list of methods",
        'skip = ["kdd"]\n': "pairs[0]: skip: kdd: not a method or condition",
    }.items():
        spec.write_text(head + '[[pairs]]\nteacher = "vgg13"\nstudent = "vgg8"\n' + text)
        with pytest.raises(SpecError, match=re.escape(message)):
            load_plan(spec, str(tmp_path))


def test_ft_init_stage_trains_the_paraphraser_alone_at_its_lr(
    cifar: Path, teacher: Path, tmp_path: Path
) -> None:
    """RepDistiller's FT init stage: SGD on the paraphraser at lr 0.01 (for ResNet/WRN students),
    the student in eval mode: its weights and BatchNorm statistics come out untouched."""
    from sublim.kd.runner import load_teacher_weights
    from sublim.kd.train import build_models

    ck = str(experiment_dir(_config(cifar, teacher, model="resnet14", epochs=2)) / "best.pt")
    config = _student(cifar, teacher, "ft", init_epochs=1, train_limit=100)
    config = config.replace(outdir=str(tmp_path), teacher_checkpoint_path=ck)
    first = run_experiment(config, stop_after=lambda e: e == 0)
    assert first["status"] == "in_progress"
    last = torch.load(Path(first["dir"]) / "last.pt", weights_only=True)
    assert last["stage"] == "init" and last["history"]["lr"] == [0.01]
    initial = build_models(config, torch.device("cpu"), load_teacher_weights(config)).student
    assert _same(last["model"], initial.state_dict())  # running means/vars included
    own = config.replace(method_params={"paraphraser_lr": None}, outdir=str(tmp_path / "b"))
    first = run_experiment(own, stop_after=lambda e: e == 0)
    last = torch.load(Path(first["dir"]) / "last.pt", weights_only=True)
    assert last["history"]["lr"] == [config.lr]  # None: the recipe's --lr


def test_mnist_family_fits_the_cifar_models(tmp_path: Path) -> None:
    from sublim.kd.data import load_kd_data

    config = KDConfig(
        dataset="mnist",
        data_dir=str(tmp_path / "none"),
        outdir=str(tmp_path),
        model="resnet8",
        epochs=1,
        batch_size=100,
        train_limit=200,
        device="cpu",
    )
    data = load_kd_data(config)
    assert data.train_x.shape == (200, 3, 32, 32) and data.test_x.shape == (10000, 3, 32, 32)
    assert torch.equal(data.train_x[:, 0], data.train_x[:, 2])  # gray replicated
    assert data.train_x[:, :, :2].max() == 0  # black border
    assert data.mean == (0.1307,) * 3
    assert run_experiment(config)["status"] == "completed"


def test_evaluation_is_gradient_free_and_channels_last_equals_nchw(
    cifar: Path, teacher: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CPU runs KD models channels-last (kd.train.channels_last); the test metrics are the
    NCHW ones up to float rounding, and no autograd graph is built while evaluating."""
    from sublim.engine.train import Normalizer
    from sublim.kd import train as kd_train
    from sublim.kd.data import load_kd_data
    from sublim.kd.runner import load_teacher_weights

    ck = str(experiment_dir(_config(cifar, teacher, model="resnet14", epochs=2)) / "best.pt")
    config = _student(cifar, teacher, "kd", train_limit=100).replace(teacher_checkpoint_path=ck)
    cpu = torch.device("cpu")
    assert kd_train.channels_last(config, cpu)
    data = load_kd_data(config)
    norm = Normalizer(data.mean, data.std, cpu)
    models = kd_train.build_models(config, cpu, load_teacher_weights(config))
    grad_modes: list[bool] = []
    plain = kd_train.run_taps

    def spy(*args: object, **kw: object) -> object:
        grad_modes.append(torch.is_grad_enabled())
        return plain(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(kd_train, "run_taps", spy)
    nchw = kd_train.evaluate(models, data.test_x, data.test_y, norm, False)
    models.student.to(memory_format=torch.channels_last)
    last = kd_train.evaluate(models, data.test_x, data.test_y, norm, False, last=True)
    assert grad_modes and not any(grad_modes)
    assert last[1] == nchw[1] and last[0] == pytest.approx(nchw[0], rel=1e-5)


def test_dropout_models_repeat_exactly(cifar: Path, tmp_path: Path) -> None:
    """vgg11_bn's classifier has Dropout, which draws from the global RNG: seeded per run."""
    histories = []
    for run in ("a", "b"):
        torch.manual_seed(int(run == "b"))  # a different global state before each run
        config = _config(
            cifar, tmp_path / run, model="vgg11_bn", epochs=1, train_limit=50, test_limit=50
        )
        assert run_experiment(config)["status"] == "completed"
        histories.append(json.loads((experiment_dir(config) / "metrics.json").read_text()))
    assert histories[0] == histories[1]


def test_sweep_task_leaves_an_experiment_trained_elsewhere_alone(
    cifar: Path, tmp_path: Path
) -> None:
    """A sweep reaching an experiment another process is training reports it failed, but never
    writes that experiment's status.json: the process holding its lock owns it."""
    from sublim.kd.sweep import kd_task

    config = _config(cifar, tmp_path, epochs=1)
    folder = experiment_dir(config)
    folder.mkdir(parents=True)
    status = json.dumps({"status": "in_progress", "epoch": 3, "config_hash": config.config_hash})
    (folder / "status.json").write_text(status)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from sublim.store.lock import DirLock; "
            "from pathlib import Path; DirLock(Path(sys.argv[1])).acquire(None); print('held', flush=True); time.sleep(60)",
            str(folder),
        ],
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = kd_task(config)
    finally:
        holder.kill()
        holder.wait()
    assert result["status"] == "failed" and "another process" in result["error"]
    assert (folder / "status.json").read_text() == status

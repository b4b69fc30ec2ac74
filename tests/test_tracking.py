"""Experiment tracking (sublim.tracking) for `sublim run` and `sublim sweep`, read back with the
real libraries: TensorBoard's EventAccumulator and MLflow's client.

MLflow's SQLite store takes ~7 s to create (schema migrations), so one empty store is made
per session and copied where a test wants `--track mlflow` (the default location).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tensorboard")
pytest.importorskip("mlflow")

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from sublim.cli import main  # noqa: E402
from sublim.errors import ConfigError  # noqa: E402
from sublim.tracking import parse_target, parse_targets  # noqa: E402

SPEC = """
name = "tiny"
seeds = "0..1"
label = "m{m}"
track = ["tensorboard:{tb}", "mlflow"]

[base]
classes = [0, 1]
teacher_epochs = 1
student_epochs = 1
noise_steps = 2
noise_bsize = 100
eval_noise_batches = 1
eval_noise_bsize = 100
teacher_hidden_dims = [16]
student_hidden_dims = [16]

[grid]
m = [2, 3]
"""
TINY_RUN = (
    "--classes 0,1 --teacher-epochs 1 --student-epochs 1 --noise-steps 2 --noise-bsize 100 "
    "--eval-noise-batches 1 --eval-noise-bsize 100 --teacher-hidden-dims 16 "
    "--student-hidden-dims 16 --quiet"
).split()


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated MLflow SQLite store (made in a subprocess, so it is closed cleanly)."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    code = (
        "from sublim.tracking.mlflow_backend import client; "
        f"client('sqlite:///{db}').search_experiments()"
    )
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, timeout=120)
    return db


def _with_store(outdir: Path, empty_store: Path) -> str:
    outdir.mkdir(parents=True, exist_ok=True)
    shutil.copy(empty_store, outdir / "mlflow.db")
    return f"sqlite:///{(outdir / 'mlflow.db').resolve()}"


def _client(uri: str):  # noqa: ANN202 - an MlflowClient
    from sublim.tracking.mlflow_backend import client

    return client(uri)


def _rows(outdir: Path) -> list[dict[str, str]]:
    with open(outdir / "runs_all_seeds.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_targets_parse_and_refuse() -> None:
    assert parse_target("mlflow").location is None
    assert parse_target("mlflow:http://127.0.0.1:5000").location == "http://127.0.0.1:5000"
    assert parse_target(" TensorBoard:runs/tb ").kind == "tensorboard"
    assert len(parse_targets(["mlflow", "mlflow"])) == 1
    for bad in ("wandb", "tensorboard", "tensorboard:", "mlflow:", ""):
        with pytest.raises(ConfigError, match="--track"):
            parse_target(bad)


def test_missing_extra_is_one_line_exit_2_nothing_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a)
    )
    out = tmp_path / "out"
    assert main(["run", "--outdir", str(out), "--track", "mlflow", *TINY_RUN]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--track" in err[0] and "pip install 'sublim[tracking]'" in err[0]
    assert not out.exists()


def test_run_tracks_config_and_final_metrics(
    tmp_path: Path, empty_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    uri = _with_store(out, empty_store)
    tb = tmp_path / "tb"
    args = ["run", "--outdir", str(out), "--track", f"tensorboard:{tb}", "--track", "mlflow"]
    assert main([*args, "--run-label", "solo", *TINY_RUN]) == 0
    assert "warning" not in capsys.readouterr().err
    (row,) = _seed_rows(out)
    c = _client(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("default").experiment_id])
    assert run.info.status == "FINISHED" and "mlflow.parentRunId" not in run.data.tags
    assert run.data.params["m"] == row["m"] and run.data.params["classes"] == "[0, 1]"
    assert run.data.tags["sublim.config_hash"] == row["config_hash"]
    assert run.data.metrics["student_final_acc"] == pytest.approx(float(row["student_final_acc"]))
    (logdir,) = (tb / "default").iterdir()
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    (event,) = acc.Scalars("student_final_acc")
    assert event.step == 0 and event.value == pytest.approx(float(row["student_final_acc"]))
    assert "_hparams_/session_start_info" in acc.summary_metadata
    assert "teacher_model_seed" not in acc.Tags()["scalars"]  # seeds are parameters


def _seed_rows(outdir: Path) -> list[dict[str, str]]:
    (path,) = outdir.glob("seed_*/runs.csv")
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_sweep_groups_runs_and_a_rerun_reuses_the_parent(
    tmp_path: Path, empty_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tb = tmp_path / "tb"
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC.replace("{tb}", str(tb)))
    out = tmp_path / "out"
    uri = _with_store(out, empty_store)
    base = ["sweep", str(spec), "--outdir", str(out), "--quiet"]
    assert main([*base, "--max-runs", "2"]) == 0
    assert main(base) == 0  # finishes the rest: same parent run
    assert "warning" not in capsys.readouterr().err
    rows = {r["config_hash"]: r for r in _rows(out)}
    assert len(rows) == 4
    c = _client(uri)
    eid = c.get_experiment_by_name("tiny").experiment_id
    runs = c.search_runs([eid], max_results=100)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    for r in children:
        row = rows[r.data.tags["sublim.config_hash"]]
        assert r.data.params["m"] == row["m"] and r.data.params["seed"] == row["seed"]
        assert r.data.metrics["student_final_acc"] == pytest.approx(float(row["student_final_acc"]))
    dirs = sorted((tb / "tiny").iterdir())
    assert len(dirs) == 4
    for d in dirs:
        acc = EventAccumulator(str(d))
        acc.Reload()
        assert len(acc.Scalars("student_final_acc")) == 1
    tracking = json.loads((out / "tracking.json").read_text())
    assert {t["kind"] for t in tracking["targets"]} == {"tensorboard", "mlflow"}
    assert main(["report", str(out), "--html", "--n-boot", "200"]) == 0
    page = (out / "report" / "report.html").read_text()
    assert f'href="file://{tb.resolve()}"' in page and uri in page
    assert f"mlflow ui --backend-store-uri {uri}" in page


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failing_server_warns_once_and_the_sweep_finishes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = tmp_path / "tiny.toml"
    spec.write_text(SPEC.replace('track = ["tensorboard:{tb}", "mlflow"]\n', ""))
    out = tmp_path / "out"
    url = f"http://127.0.0.1:{_closed_port()}"
    assert (
        main(["sweep", str(spec), "--outdir", str(out), "--quiet", "--track", f"mlflow:{url}"]) == 0
    )
    err = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(err) == 1 and f"mlflow:{url}" in err[0]
    assert len(_rows(out)) == 4


def _kd(out: Path, **kw: object):  # noqa: ANN202 - a KDConfig
    from sublim.kd.config import KDConfig

    base = dict(
        dataset="mnist",
        outdir=str(out),
        device="cpu",
        model="resnet8",
        epochs=2,
        batch_size=32,
        train_limit=64,
        test_limit=64,
    )
    return KDConfig(**{**base, **kw})


def test_kd_resume_continues_the_same_tracked_runs(
    tmp_path: Path, empty_store: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from sublim.kd.runner import run_experiment
    from sublim.tracking import TrackSpec

    out = tmp_path / "kd"
    uri = _with_store(out, empty_store)
    tb = tmp_path / "tb"
    spec = TrackSpec.make(parse_targets([f"tensorboard:{tb}", "mlflow"]), out, "kd")
    config = _kd(out)
    first = run_experiment(config, stop_after=lambda epoch: epoch == 0, track=spec)
    assert first["status"] == "in_progress" and first["epoch"] == 1
    done = run_experiment(config, track=spec)  # resumes at epoch 2
    assert done["status"] == "completed" and not done["skipped"]
    assert "warning" not in capsys.readouterr().err
    metrics = json.loads((Path(done["dir"]) / "metrics.json").read_text())
    c = _client(uri)
    (run,) = c.search_runs([c.get_experiment_by_name("kd").experiment_id])
    assert run.info.status == "FINISHED" and run.data.params["model"] == "resnet8"
    history = c.get_metric_history(run.info.run_id, "test/acc")
    assert [m.step for m in history] == [1, 2]
    assert [m.value for m in history] == pytest.approx(metrics["test_acc"])
    assert [m.step for m in c.get_metric_history(run.info.run_id, "loss/ce")] == [1, 2]
    (logdir,) = [p.parent for p in tb.rglob("events.out.tfevents.*")][:1]
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2  # one file per process
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert [e.step for e in acc.Scalars("test/acc")] == [1, 2]  # no duplicate step
    assert [e.value for e in acc.Scalars("train/loss")] == pytest.approx(metrics["train_loss"])
    assert {"lr", "train/acc", "test/loss", "loss/ce"} <= set(acc.Tags()["scalars"])
    state = json.loads((Path(done["dir"]) / "tracking.json").read_text())
    assert state[f"mlflow:{uri}"]["run_id"] == run.info.run_id


def test_kd_distill_cli_tracks_the_method_loss_terms(tmp_path: Path) -> None:
    out, tb = tmp_path / "kd", tmp_path / "tb"
    common = ["--dataset", "mnist", "--train-limit", "64", "--test-limit", "64", "--epochs", "1"]
    common += ["--device", "cpu", "--outdir", str(out), "--quiet", "--batch-size", "32"]
    assert main(["kd", "train-teacher", "--model", "resnet8", *common]) == 0
    args = ["kd", "distill", "--method", "kd", "--teacher", "resnet8", "--student", "resnet8"]
    assert main([*args, *common, "--track", f"tensorboard:{tb}"]) == 0
    (logdir,) = {p.parent for p in tb.rglob("events.out.tfevents.*")}
    assert logdir.relative_to(tb).parts[:3] == ("kd", "mnist", "kd")
    acc = EventAccumulator(str(logdir))
    acc.Reload()
    assert {"loss/ce", "loss/kd"} <= set(acc.Tags()["scalars"])
    tracking = json.loads((out / "tracking.json").read_text())
    assert tracking["targets"][0]["open"] == f"tensorboard --logdir {tb.resolve()}"


def test_spec_track_values_are_checked(tmp_path: Path) -> None:
    from sublim.sweep.spec import SpecError, parse_spec

    assert parse_spec({"track": "mlflow"}).track == ("mlflow",)
    with pytest.raises(SpecError, match="track: invalid value 3"):
        parse_spec({"track": 3})
    spec = tmp_path / "s.toml"
    spec.write_text(SPEC.replace('"mlflow"]', '"wandb"]'))
    assert main(["sweep", str(spec), "--dry-run", "--outdir", str(tmp_path / "o")]) == 2
    assert not (tmp_path / "o").exists()

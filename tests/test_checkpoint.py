"""--save-models checkpoints and --teacher-checkpoint: round trip, equality, clear errors."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sublim import ExperimentConfig, run
from sublim.config.perturbspec import PerturbSpec
from sublim.engine.checkpoint import load_model, load_teacher_checkpoint
from sublim.errors import ConfigError
from sublim.store import RunStore

TINY = dict(
    teacher_epochs=1,
    student_epochs=1,
    noise_steps=2,
    eval_noise_batches=1,
    eval_noise_bsize=100,
    teacher_hidden_dims=(32, 32),
    student_hidden_dims=(32, 32),
    classes=(0, 1, 2),
    m=4,
)


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("ck")
    record = run(ExperimentConfig(save_models=True, **TINY))
    with RunStore(out) as store:
        store.write(record)
    folder = out / "seed_000042" / "models" / record.run["run_id"]
    return folder, record.run


def test_save_models_writes_three_loadable_bundles(saved: tuple[Path, dict]) -> None:
    folder, row = saved
    assert sorted(p.name for p in folder.iterdir()) == [
        "student.pt",
        "teacher.pt",
        "teacher_init.pt",
    ]
    assert row["models_dir"] == f"seed_000042/models/{row['run_id']}"
    data = torch.load(folder / "teacher.pt", weights_only=True)
    assert data["role"] == "teacher" and data["stage"] == "trained"
    assert data["layer_names"] == ["fc1", "fc2", "class_head", "aux_head"]
    assert data["metrics"]["teacher_init_acc"] == pytest.approx(row["teacher_init_acc"])
    assert data["config"]["classes"] == [0, 1, 2]
    init = torch.load(folder / "teacher_init.pt", weights_only=True)["state_dict"]
    trained = data["state_dict"]
    assert not torch.equal(init["layers.fc1.weight"], trained["layers.fc1.weight"])
    # the aux head is never trained by the teacher stage
    assert torch.equal(init["layers.aux_head.weight"], trained["layers.aux_head.weight"])


def test_load_model_rebuilds_the_saved_student(saved: tuple[Path, dict]) -> None:
    folder, _ = saved
    net, meta = load_model(folder / "student.pt")
    state = torch.load(folder / "student.pt", weights_only=True)["state_dict"]
    for key, value in net.state_dict().items():
        assert torch.equal(value, state[key])
    assert meta["role"] == "student" and "fc1 linear relu -> 32" in meta["arch"]


def test_teacher_checkpoint_gives_the_same_run(saved: tuple[Path, dict]) -> None:
    folder, row = saved
    again = run(ExperimentConfig(teacher_checkpoint=str(folder / "teacher.pt"), **TINY)).run
    for key in (
        "teacher_init_acc",
        "teacher_final_acc",
        "student_init_acc",
        "student_final_acc",
        "student_final_aux_loss",
        "cos_final_teacher_student_aux_head_weight",
    ):
        assert again[key] == pytest.approx(row[key], rel=1e-6, abs=1e-9), key


def test_checkpoint_identity_enters_the_hash(saved: tuple[Path, dict]) -> None:
    folder, _ = saved
    plain = ExperimentConfig(**TINY)
    with_ck = ExperimentConfig(teacher_checkpoint=str(folder / "teacher.pt"), **TINY)
    assert plain.config_hash != with_ck.config_hash
    assert ExperimentConfig(save_models=True, **TINY).config_hash == plain.config_hash


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"m": 5}, "architecture differs: layers.aux_head.weight is 4x32 in the checkpoint, 5x32"),
        ({"teacher_hidden_dims": (16, 32)}, "architecture differs: layers.fc1.weight is 32x784"),
        ({"classes": (0, 1)}, "trained on classes 0,1,2; this run uses 0,1"),
        ({"classes": None, "dataset": "fashion-mnist"}, "trained on dataset 'mnist'"),
        (
            {"head_layout": "single"},
            "architecture differs: the checkpoint has no layers.head.weight",
        ),
    ],
)
def test_mismatched_checkpoints_are_refused(
    saved: tuple[Path, dict], changes: dict, message: str
) -> None:
    folder, _ = saved
    config = ExperimentConfig(
        **{**TINY, **changes, "teacher_checkpoint": str(folder / "teacher.pt")}
    )
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_teacher_checkpoint(config, torch.device("cpu"))  # never loads data


def test_bad_checkpoint_files(saved: tuple[Path, dict], tmp_path: Path) -> None:
    folder, _ = saved
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    cases = {
        str(folder / "student.pt"): "holds a trained student; give a trained teacher.pt",
        str(folder / "teacher_init.pt"): "holds a init teacher",
        str(junk): "not a readable sublim checkpoint",
        str(other): "not a sublim checkpoint",
        str(tmp_path / "missing.pt"): "no such file",
    }
    for path, message in cases.items():
        with pytest.raises(ConfigError, match=message):
            run(ExperimentConfig(teacher_checkpoint=path, **TINY))
    with pytest.raises(ConfigError, match="already trained"):
        ExperimentConfig(
            teacher_checkpoint=str(folder / "teacher.pt"),
            perturb=(PerturbSpec(target="teacher", timing="after_teacher_training"),),
            **TINY,
        )


def test_cli_bad_checkpoint_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "x.pt").write_bytes(b"\x00" * 10)
    proc = subprocess.run(
        [sys.executable, "-m", "sublim", "run", "--teacher-checkpoint", "x.pt", "--outdir", "o"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("sublim: error: --teacher-checkpoint: invalid value 'x.pt'")
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_checkpoint_keeps_its_real_init_and_normalisation(saved: tuple[Path, dict]) -> None:
    folder, row = saved
    path = str(folder / "teacher.pt")
    # another seed: the student's A layers are not the checkpoint teacher's init any more, and
    # the layer metrics say so (the snapshot is the checkpoint's real initial teacher)
    other = run(ExperimentConfig(seed=5, teacher_checkpoint=path, **TINY)).run
    assert row["cos_init_teacher_student_class_head_weight"] == pytest.approx(1.0)
    assert abs(other["cos_init_teacher_student_class_head_weight"]) < 0.5
    with pytest.raises(ConfigError, match="trained with --data-mean None; this run uses"):
        load_teacher_checkpoint(
            ExperimentConfig(teacher_checkpoint=path, data_mean=(0.5,), data_std=(0.5,), **TINY),
            torch.device("cpu"),
        )


def test_saved_teacher_is_the_trained_one_before_student_stage_perturbations(
    saved: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = saved
    spec = PerturbSpec(target="teacher", std=0.5, timing="before_student_training")
    record = run(ExperimentConfig(save_models=True, perturb=(spec,), **TINY))
    name = f"models/{record.run['run_id']}/teacher.pt"
    perturbed = torch.load(io.BytesIO(record.artifacts[name]), weights_only=True)["state_dict"]
    plain = torch.load(folder / "teacher.pt", weights_only=True)["state_dict"]
    for key, value in plain.items():
        assert torch.equal(value, perturbed[key]), key


def test_sweep_over_m_with_one_checkpoint_fails_in_one_line(
    saved: tuple[Path, dict], tmp_path: Path
) -> None:
    folder, _ = saved
    spec = tmp_path / "s.toml"
    spec.write_text(
        f"""name = "ck"
seeds = [42]
[base]
teacher_checkpoint = "{folder / "teacher.pt"}"
teacher_epochs = 1
student_epochs = 1
noise_steps = 2
eval_noise_batches = 1
teacher_hidden_dims = [32, 32]
student_hidden_dims = [32, 32]
classes = [0, 1, 2]
[grid]
m = [4, 7]
"""
    )
    proc = subprocess.run(
        [sys.executable, "-m", "sublim", "sweep", str(spec), "--outdir", "o", "--quiet"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "layers.aux_head.weight is 4x32 in the checkpoint, 7x32 in this run" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()

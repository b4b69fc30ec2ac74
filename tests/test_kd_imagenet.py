"""`--dataset imagenet` end to end on a tiny generated folder (3 classes x 3 small JPEGs, one
truncated, and 1 val image per class in class folders): a teacher trained, students distilled
with kd and crd, a teacher that only evaluates its --pretrained weights (--epochs 0), the
corrupt file skipped with one warning and counted, a stopped CRD run resumed to the same
weights and banks, and the one-line refusals. ResNet18 / MobileNetV1 at 224 px on a CPU cost
about a second per image: every run here sees a handful of images."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sublim.cli.main import main
from sublim.errors import ConfigError, DataError
from sublim.kd.config import KDConfig
from sublim.kd.experiment import Experiment
from sublim.outputs import kd as kd_cols

WNIDS = ("n01440764", "n01443537", "n01484850")
BAD = f"train/{WNIDS[0]}/{WNIDS[0]}_1.JPEG"  # index 1: inside --train-limit 4 too


def _tree(root: Path) -> Path:
    """root/train/<wnid>/ with 3 JPEGs each (BAD truncated), root/val/<wnid>/ with one."""
    for c, wnid in enumerate(WNIDS):
        for split, n in (("train", 3), ("val", 1)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                rng = np.random.default_rng(100 * c + 10 * (split == "val") + i)
                pixels = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{wnid}_{i}.JPEG", "JPEG", quality=90)
    bad = root / BAD
    bad.write_bytes(bad.read_bytes()[:100])  # truncated: Pillow cannot decode it
    return root


def _args(root: Path, out: Path, *more: str) -> list[str]:
    return [
        *("--dataset", "imagenet", "--data-dir", str(root), "--outdir", str(out)),
        *("--batch-size", "4", "--lr", "0.01", "--device", "cpu", "--quiet", *more),
    ]


def _run(args: list[str]) -> tuple[int, str]:
    """`sublim` in this process: (exit status, what it wrote to stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(args)
    return code, err.getvalue()


def _only(out: Path, pattern: str) -> Path:
    (found,) = out.glob(pattern)
    return found


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tree(tmp_path_factory.mktemp("kd_imagenet") / "imagenet")


@pytest.fixture(scope="module")
def teacher(imagenet: Path) -> tuple[Path, str]:
    """resnet18_imagenet trained one epoch on the first 4 files (3 readable, one step),
    decoding in one worker process: (outdir, stderr)."""
    out = imagenet.parent / "out"
    args = ["kd", "train-teacher", "--model", "resnet18_imagenet", "--epochs", "1"]
    code, err = _run([*args, *_args(imagenet, out, "--train-limit", "4", "--workers", "1")])
    assert code == 0, err
    return out, err


def test_teacher_trains_and_counts_the_corrupt_file(teacher: tuple[Path, str]) -> None:
    out, err = teacher
    warnings = [line for line in err.splitlines() if "unreadable" in line]
    assert len(warnings) == 1 and BAD in warnings[0], err
    folder = _only(out, "imagenet/teacher/resnet18_imagenet/seed_0_*")
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "completed" and status["skipped_files"] == 1
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics) == set(kd_cols.METRICS_KEYS)
    assert metrics["skipped_files"] == [1] and metrics["stage"] == ["main"]
    assert 0.0 <= metrics["test_acc"][0] <= 1.0 and np.isfinite(metrics["train_loss"][0])
    config = json.loads((folder / "config.json").read_text())
    assert config["workers"] == 1 and config["augment"] is None


@pytest.mark.parametrize(
    ("method", "params", "terms"),
    [("kd", "{}", {"ce", "kd"}), ("crd", '{"nce_k": 4}', {"ce", "crd"})],
)
def test_students_distil_from_the_teacher(
    teacher: tuple[Path, str], imagenet: Path, method: str, params: str, terms: set[str]
) -> None:
    """mobilenetv1 from the teacher on all 9 files (8 readable: 2 batches, one of 3)."""
    out, _ = teacher
    args = ["kd", "distill", "--method", method, "--method-params", params, "--epochs", "1"]
    args += ["--teacher", "resnet18_imagenet", "--student", "mobilenetv1"]
    code, err = _run([*args, *_args(imagenet, out, "--workers", "0")])
    assert code == 0, err
    assert err.count("unreadable") == 1  # one warning per file and run
    folder = _only(out, f"imagenet/{method}/resnet18_imagenet_to_mobilenetv1/seed_0_*")
    metrics = json.loads((folder / "metrics.json").read_text())
    assert set(metrics["terms"][0]) == terms and metrics["skipped_files"] == [1]
    state = torch.load(folder / "last.pt", weights_only=True)
    if method == "crd":  # one bank row per training file, the unreadable one included
        assert state["distiller"]["memory.memory_s"].shape == (9, 128)


def _torchvision_file(path: Path) -> dict[str, torch.Tensor]:
    """A resnet18_imagenet state dict saved under torchvision's names (fc, not classifier)."""
    from sublim.kd.models import create_model

    net = create_model("resnet18_imagenet", 1000, generator=torch.Generator().manual_seed(3))
    state = {k.replace("classifier.", "fc."): v for k, v in net.state_dict().items()}
    torch.save(state, path)
    return net.state_dict()


def test_pretrained_teacher_with_zero_epochs_is_evaluated_once(
    imagenet: Path, tmp_path: Path
) -> None:
    """--epochs 0 --pretrained: no training; the loaded weights are evaluated once, recorded as
    epoch 0 and saved as best.pt, which a student then reads as its teacher."""
    weights = _torchvision_file(tmp_path / "resnet18.pth")
    args = ["kd", "train-teacher", "--model", "resnet18_imagenet", "--epochs", "0"]
    args += ["--pretrained", str(tmp_path / "resnet18.pth")]
    code, err = _run([*args, *_args(imagenet, tmp_path / "out", "--workers", "0")])
    assert code == 0, err
    folder = _only(tmp_path / "out", "imagenet/teacher/resnet18_imagenet/seed_0_*")
    status = json.loads((folder / "status.json").read_text())
    assert (status["status"], status["epoch"], status["epochs"]) == ("completed", 0, 0)
    assert status["best_epoch"] == 0 and status["skipped_files"] == 0  # val only: no bad file
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["epoch"] == [0] and metrics["stage"] == ["pretrained"]
    assert metrics["lr"] == [None] and metrics["train_loss"] == [None]
    best = torch.load(folder / "best.pt", weights_only=True)
    assert best["epoch"] == 0 and best["test_acc"] == status["best_acc"]
    assert all(torch.equal(best["weights"][k], v) for k, v in weights.items())
    # the same weights with any training recipe are the same teacher
    base = dict(role="teacher", dataset="imagenet", model="resnet18_imagenet", epochs=0)
    one = KDConfig(**base, pretrained=str(tmp_path / "resnet18.pth"))
    assert one.config_hash == one.replace(batch_size=256, lr=0.1, milestones=(30,)).config_hash


def test_zero_epochs_without_pretrained_weights_is_refused() -> None:
    with pytest.raises(ConfigError, match="--epochs: invalid value 0; 0 only evaluates"):
        KDConfig(dataset="imagenet", model="resnet18_imagenet", epochs=0)
    with pytest.raises(ConfigError, match="--epochs"):
        KDConfig(role="student", teacher="resnet8", model="resnet8", method="kd", epochs=0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("augment", "crop=4", "--augment: invalid value 'crop=4'; imagenet is augmented"),
        ("eval_batches", "reference", "--eval-batches: invalid value 'reference'"),
        ("reference_behaviour", "kd_wo_ce", "--reference-behaviour"),
        ("workers", -1, "--workers: invalid value -1"),
    ],
)
def test_streamed_dataset_refusals(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KDConfig(dataset="imagenet", model="resnet18_imagenet", **{field: value})


def test_workers_never_enter_the_hash() -> None:
    config = KDConfig(dataset="imagenet", model="resnet18_imagenet")
    assert config.replace(workers=3).config_hash == config.config_hash
    assert config.augmentation == "none" and config.input_shape == (3, 224, 224)


def test_missing_folder_is_one_line_before_any_directory(tmp_path: Path) -> None:
    args = ["kd", "train-teacher", "--model", "resnet18_imagenet", "--epochs", "1"]
    code, err = _run([*args, *_args(tmp_path / "nowhere", tmp_path / "out")])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("sublim: error: ImageNet folder not found (no train/ and val/ in ")
    assert "image-net.org" in err and "train/<wnid>/*.JPEG" in err
    assert not (tmp_path / "out").exists()


def test_in_memory_loading_of_imagenet_is_refused(imagenet: Path) -> None:
    from sublim.kd.data import load_kd_data

    config = KDConfig(dataset="imagenet", model="resnet18_imagenet", data_dir=str(imagenet))
    with pytest.raises(DataError, match="read from disk as it trains"):
        load_kd_data(config)


def test_stopped_crd_run_resumes_to_the_same_weights_and_banks(
    teacher: tuple[Path, str], imagenet: Path, tmp_path: Path
) -> None:
    """2 epochs in one go == 1 epoch, stopped, resumed for the second: same order, crops,
    negatives and memory banks (per (seed, epoch, index)), so bit-equal weights on a CPU."""
    from sublim.kd.runner import pin_teacher, run_experiment

    out, _ = teacher
    whole = pin_teacher(
        KDConfig(
            role="student",
            dataset="imagenet",
            data_dir=str(imagenet),
            outdir=str(out),
            model="mobilenetv1",
            teacher="resnet18_imagenet",
            method="crd",
            method_params={"nce_k": 4},
            epochs=2,
            batch_size=3,
            lr=0.01,
            train_limit=6,
            workers=0,
            device="cpu",
        )
    )
    assert run_experiment(whole)["status"] == "completed"
    part = whole.replace(outdir=str(tmp_path))
    first = run_experiment(part, stop_after=lambda e: e == 0)
    assert first["status"] == "in_progress" and first["epoch"] == 1
    assert run_experiment(part)["status"] == "completed"
    a, b = Experiment(whole).load("last.pt"), Experiment(part).load("last.pt")
    assert a is not None and b is not None
    for key in ("model", "distiller"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert a["history"]["train_loss"] == b["history"]["train_loss"]
    assert a["history"]["skipped_files"] == b["history"]["skipped_files"] == [1, 1]

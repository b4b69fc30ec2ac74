"""RGB data end to end: generated CIFAR-10 batches and an image folder through run(), the CNN
spec (in_channels from the data), noise of the data's shape, and the CLI."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sublim import ExperimentConfig, run
from sublim.engine.train import student_noise
from sublim.errors import ConfigError
from sublim.models import build_model

TINY = dict(
    teacher_epochs=3,
    student_epochs=1,
    noise_steps=2,
    noise_bsize=100,
    eval_noise_batches=1,
    eval_noise_bsize=100,
    teacher_hidden_dims=(32, 32),
    student_hidden_dims=(32, 32),
    data_bsize=100,
)


def _colour_images(rng: np.random.Generator, labels: np.ndarray, size: int) -> np.ndarray:
    """Images whose dominant channel and brightness encode the label (learnable in 1 epoch)."""
    x = rng.integers(0, 40, (len(labels), 3, size, size)).astype(np.uint8)
    for i, label in enumerate(labels):
        x[i, label % 3] += np.uint8(60 + 18 * label)
    return x


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{k}", 120) for k in range(1, 6)] + [("test_batch", 200)]:
        labels = rng.integers(0, 10, n)
        data = _colour_images(rng, labels, 32).reshape(n, -1)
        batch = {b"data": data, b"labels": labels.tolist(), b"batch_label": b"b"}
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    return root


@pytest.fixture(scope="module")
def folder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(1)
    for label, cls in enumerate(("cat", "dog")):
        (root / cls).mkdir()
        for i in range(30):
            img = _colour_images(rng, np.array([label * 2]), 40)[0].transpose(1, 2, 0)
            Image.fromarray(img).save(root / cls / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG not really")
    return root


def test_cifar10_cnn_and_mlp_runs(cifar_dir: Path) -> None:
    cnn = ExperimentConfig(
        dataset="cifar10",
        data_dir=str(cifar_dir),
        teacher_type="cnn",
        student_type="cnn",
        **TINY,
    )
    assert cnn.input_shape == (3, 32, 32)
    net = build_model(cnn, "teacher")
    assert net.layers["conv1"].in_channels == 3
    assert "cnn in 3x32x32" in net.describe()
    assert student_noise(cnn, 0, torch.device("cpu")).shape == (100, 3, 32, 32)
    row = run(cnn).run
    assert row["num_classes"] == 10 and row["train_size"] == 600 and row["test_size"] == 200
    assert row["teacher_final_acc"] > 0.3  # well above chance on the colour-coded classes
    mlp = ExperimentConfig(dataset="cifar10", data_dir=str(cifar_dir), classes=(0, 1), **TINY)
    row = run(mlp).run
    assert row["num_classes"] == 2 and row["test_size"] < 200
    assert build_model(mlp, "teacher").layers["fc1"].in_features == 3 * 32 * 32


def test_image_folder_run_with_normalised_gaussian_noise(folder_dir: Path, capfd) -> None:
    config = ExperimentConfig(
        dataset="image-folder",
        data_dir=str(folder_dir),
        image_size=24,
        noise_dist="normal",
        normalize_noise=True,
        augment="hflip=0.5,crop=2",
        **TINY,
    )
    assert config.num_classes == 2 and config.folder_classes == ["cat", "dog"]
    assert config.input_shape == (3, 24, 24)
    record = run(config)
    assert "skipped 1 unreadable images" in capfd.readouterr().err
    row = record.run
    assert row["train_size"] + row["test_size"] == 60
    assert row["teacher_final_acc"] > 0.9
    # ImageNet constants normalise the images and (with --normalize-noise) the noise
    noise = student_noise(
        config, 0, torch.device("cpu"), ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    )
    assert noise.shape == (100, 3, 24, 24)
    assert noise[:, 0].mean().item() == pytest.approx(-0.485 / 0.229, abs=0.05)


def test_image_folder_config_errors(tmp_path: Path) -> None:
    (tmp_path / "only").mkdir()
    with pytest.raises(ConfigError, match="needs at least 2 class directories"):
        ExperimentConfig(dataset="image-folder", data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="--test-fraction"):
        ExperimentConfig(test_fraction=1.5)
    with pytest.raises(ConfigError, match="--image-size"):
        ExperimentConfig(image_size=4)
    with pytest.raises(ConfigError, match="--data-mean"):
        ExperimentConfig(dataset="cifar10", data_mean=(0.5, 0.5), data_std=(0.5,))


def test_cli_image_folder(folder_dir: Path, tmp_path: Path) -> None:
    args = [sys.executable, "-m", "sublim", "run", "--dataset", "image-folder"]
    args += ["--data-dir", str(folder_dir), "--image-size", "16", "--teacher-epochs", "1"]
    args += ["--student-epochs", "1", "--noise-steps", "2", "--eval-noise-batches", "1"]
    args += ["--student-type", "cnn", "--teacher-type", "cnn", "--outdir", "o", "--quiet"]
    proc = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("sublim: warning: skipped 1 unreadable images")
    assert "teacher acc" in proc.stdout


def test_image_folder_identity_follows_its_files(folder_dir: Path, tmp_path: Path) -> None:
    import shutil

    from sublim.engine.teacher import teacher_key

    copy = tmp_path / "pets"
    shutil.copytree(folder_dir, copy)
    before = ExperimentConfig(dataset="image-folder", data_dir=str(copy))
    hash_before, key_before = before.config_hash, teacher_key(before)
    # a relabelled image: same class names, different experiment
    (copy / "cat" / "00.jpg").rename(copy / "dog" / "moved.jpg")
    after = ExperimentConfig(dataset="image-folder", data_dir=str(copy))
    assert before.folder_classes == after.folder_classes
    assert hash_before != after.config_hash
    assert key_before != teacher_key(after)

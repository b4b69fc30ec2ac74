"""Every model the KD benchmark added trains end to end on the bundled MNIST: one epoch of a
teacher (cross-entropy) on 20 images through the experiment runner, files and all."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from kd_tiny import tiny

from sublim.kd.runner import run_experiment

NEW_MODELS = (
    "shufflev1",
    "shufflev2",
    "resnet50",
    "resnet18_imagenet",
    "resnet34_imagenet",
    "resnet50_imagenet",
    "mobilenetv1",
)


@pytest.mark.parametrize("model", NEW_MODELS)
def test_new_model_trains_on_mnist(model: str, tmp_path: Path) -> None:
    config = tiny(tmp_path, model=model, train_limit=20, batch_size=10, test_limit=10)
    result = run_experiment(config)
    assert result["status"] == "completed", result
    metrics = json.loads((Path(result["dir"]) / "metrics.json").read_text())
    assert metrics["epoch"] == [1] and np.isfinite(metrics["train_loss"]).all()
    assert 0.0 <= metrics["test_acc"][0] <= 1.0

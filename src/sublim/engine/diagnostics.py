"""`--diagnostics`: what the course report plotted, recorded per run for `sublim report`.

Per run, one `diagnostics/<run_id>.npz` (numpy arrays only; `np.load(allow_pickle=False)`):
teacher_history / student_history [epochs, 3] (epoch, mean training loss, test accuracy), 16
test images spread evenly over the test set with their labels and the teacher's and student's
predictions, and the aux
outputs of the teacher and of the student (initial and final) on 512 evaluation noise samples.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch

from ..config import ExperimentConfig
from ..data.datasets import ImageData
from ..data.noise import noise_batch
from ..models import SplitHeadNet
from .train import Normalizer, evaluate

N_SAMPLES = 16
N_NOISE = 512
CIFAR10_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


class EpochRecorder:
    """Callback for the training loops: after each epoch, the mean loss and test accuracy."""

    def __init__(self, net: SplitHeadNet, data: ImageData, norm: Normalizer, device: torch.device):
        self.net, self.norm = net, norm
        self.x, self.y = data.test_x.to(device), data.test_y.to(device)
        self.rows: list[tuple[float, float, float]] = []

    def __call__(self, epoch: int, loss: float) -> None:
        acc, _ = evaluate(self.net, self.x, self.y, self.norm)
        self.net.train()
        self.rows.append((float(epoch + 1), float(loss), float(acc)))


def eval_noise(config: ExperimentConfig, device: torch.device, norm: Any) -> torch.Tensor:
    """The first N_NOISE samples of the final evaluation noise draw."""
    x = noise_batch(
        config.seed,
        ("eval_noise", "final"),
        0,
        config.noise_dist,
        config.eval_noise_bsize,
        config.input_shape,
        config.perlin_res,
        norm,
    )
    return x[:N_NOISE].to(device)


@torch.no_grad()
def aux_outputs(net: SplitHeadNet, x: torch.Tensor) -> np.ndarray:
    """The net's aux logits on `x` as a float32 array."""
    net.eval()
    return net.aux_logits(x).float().cpu().numpy()


@torch.no_grad()
def collect(
    config: ExperimentConfig,
    data: ImageData,
    device: torch.device,
    norm: Normalizer,
    teacher: SplitHeadNet,
    student: SplitHeadNet,
    noise: torch.Tensor,
    student_aux_init: np.ndarray,
    teacher_history: list | None,
    student_history: list,
) -> dict[str, np.ndarray]:
    """All diagnostics arrays of a finished run."""
    n = data.test_x.shape[0]  # samples spread over the test set (files may be sorted by class)
    idx = torch.linspace(0, n - 1, min(N_SAMPLES, n)).round().long()
    images = data.test_x[idx]
    x = images.to(device)
    teacher.eval()
    student.eval()
    out = {
        "student_history": np.asarray(student_history, dtype=np.float64).reshape(-1, 3),
        "sample_index": idx.numpy(),
        "sample_images": images.cpu().numpy().astype(np.uint8),
        "sample_labels": data.test_y[idx].cpu().numpy().astype(np.int64),
        "sample_teacher_pred": teacher.class_logits(norm(x)).argmax(1).cpu().numpy(),
        "sample_student_pred": student.class_logits(norm(x)).argmax(1).cpu().numpy(),
        "noise_teacher_aux": aux_outputs(teacher, noise),
        "noise_student_aux_init": student_aux_init,
        "noise_student_aux_final": aux_outputs(student, noise),
        "class_names": np.asarray(class_names(config, data), dtype=str),
    }
    if teacher_history:
        out["teacher_history"] = np.asarray(teacher_history, dtype=np.float64).reshape(-1, 3)
    return out


def class_names(config: ExperimentConfig, data: ImageData) -> list[str]:
    """Names of the current labels 0..K-1 (folder names, CIFAR names, else the original label)."""
    if config.dataset == "image-folder":
        return [config.folder_classes[c] for c in data.classes]
    if config.dataset == "cifar10":
        return [CIFAR10_NAMES[c] for c in data.classes]
    return [str(c) for c in data.classes]


def diagnostics_npz(arrays: dict[str, np.ndarray]) -> bytes:
    """The arrays as the bytes of one compressed .npz file."""
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    return buffer.getvalue()

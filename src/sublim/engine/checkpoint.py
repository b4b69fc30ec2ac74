"""Model checkpoints: `--save-models` bundles and `--teacher-checkpoint` loading.

A bundle is a dict saved with torch.save and read back with `torch.load(weights_only=True)`:
format, role (teacher/student), stage (init/trained), the effective config (plain values), layer
names, the architecture description, the state dict and, for a trained teacher, the teacher
stage's metrics. The engine returns bundles as bytes inside the run's record; the store writes
them next to the run's rows.
"""

from __future__ import annotations

import io
import os
from typing import Any

import torch

from ..config import ExperimentConfig
from ..errors import ConfigError
from ..models import SplitHeadNet, build_model
from .metrics import snapshot
from .perturb import apply_perturbations

FORMAT = "sublim-model-1"
FLAG = "--teacher-checkpoint"
TEACHER_METRICS = ("teacher_init_acc", "teacher_init_class_loss", "teacher_train_loss_last")


def bundle(
    config: ExperimentConfig,
    role: str,
    stage: str,
    net: SplitHeadNet,
    metrics: dict[str, float] | None = None,
) -> bytes:
    """One model's checkpoint as bytes."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "role": role,
        "stage": stage,
        "config": config.to_dict(),
        "layer_names": config.layer_names(role),
        "arch": net.describe(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in net.state_dict().items()},
        "metrics": dict(metrics or {}),
    }
    buffer = io.BytesIO()
    torch.save(data, buffer)
    return buffer.getvalue()


def initial_teacher(config: ExperimentConfig, device: torch.device) -> SplitHeadNet:
    """The teacher as its training started (init, then before_teacher_training perturbations)."""
    net = build_model(config, "teacher", device)
    apply_perturbations(config, net, "teacher", "before_teacher_training")
    return net


def model_bundles(
    config: ExperimentConfig,
    teacher: SplitHeadNet,
    student: SplitHeadNet,
    teacher_metrics: dict[str, float],
) -> dict[str, bytes]:
    """The three files of `--save-models`: initial teacher, trained teacher, trained student."""
    device = next(teacher.parameters()).device
    metrics = {k: teacher_metrics[k] for k in TEACHER_METRICS if k in teacher_metrics}
    return {
        "teacher_init.pt": bundle(config, "teacher", "init", initial_teacher(config, device)),
        "teacher.pt": bundle(config, "teacher", "trained", teacher, metrics),
        "student.pt": bundle(config, "student", "trained", student),
    }


def read_bundle(path: str | os.PathLike[str], flag: str = FLAG) -> dict[str, Any]:
    """A checkpoint file's contents; ConfigError naming `flag` when it is not one."""
    try:
        with open(path, "rb") as f:
            data = torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(flag, str(path), "no such file") from None
    except Exception as exc:  # noqa: BLE001 (unpickling fails in many ways on a foreign file)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(flag, str(path), f"not a readable sublim checkpoint ({first})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(flag, str(path), "not a sublim checkpoint (written by --save-models)")
    return data


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> tuple[SplitHeadNet, dict]:
    """The model saved in a checkpoint, rebuilt from its own config, and the bundle's metadata."""
    data = read_bundle(path, "path")
    config = ExperimentConfig.from_dict({**data["config"], "device": device})
    net = build_model(config, data["role"], device)
    net.load_state_dict(data["state_dict"])
    meta = {k: v for k, v in data.items() if k != "state_dict"}
    return net, meta


def load_teacher_checkpoint(config: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    """The trained teacher state of `config.teacher_checkpoint`, checked against `config`.

    Returns {"state": state dict, "metrics": teacher-stage metrics, "init": initial snapshot}.
    """
    path = config.teacher_checkpoint
    data = read_bundle(path)
    if data.get("role") != "teacher" or data.get("stage") != "trained":
        raise ConfigError(
            FLAG, path, f"holds a {data.get('stage')} {data.get('role')}; give a trained teacher.pt"
        )
    saved = data["config"]
    mine = config.to_dict()
    for key, what in (("dataset", "dataset"), ("emnist_split", "EMNIST split")):
        if saved.get(key) != mine[key] and (key != "emnist_split" or config.dataset == "emnist"):
            raise ConfigError(
                FLAG, path, f"trained on {what} {saved.get(key)!r}; this run uses {mine[key]!r}"
            )
    saved_classes = ExperimentConfig.from_dict(
        {k: v for k, v in saved.items() if k in mine}
    ).selected_classes
    if saved_classes != config.selected_classes:
        raise ConfigError(
            FLAG,
            path,
            f"trained on classes {_classes(saved_classes)}; this run uses "
            f"{_classes(config.selected_classes)}",
        )
    expected = build_model(config, "teacher", device)
    want = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in data["state_dict"].items()}
    if want != have:
        raise ConfigError(FLAG, path, f"architecture differs: {_first_difference(have, want)}")
    expected.load_state_dict(data["state_dict"])
    return {
        "state": data["state_dict"],
        "metrics": {k: float(v) for k, v in data.get("metrics", {}).items()},
        "init": snapshot(initial_teacher(config, device)),
    }


def _classes(classes: tuple[int, ...] | None) -> str:
    return "all" if classes is None else ",".join(map(str, classes))


def _first_difference(have: dict[str, tuple], want: dict[str, tuple]) -> str:
    for key in want:
        if key not in have:
            return f"the checkpoint has no {key}"
        if have[key] != want[key]:
            shape = lambda s: "x".join(map(str, s))  # noqa: E731
            return f"{key} is {shape(have[key])} in the checkpoint, {shape(want[key])} in this run"
    extra = sorted(set(have) - set(want))
    return f"the checkpoint has {extra[0]}, which this run's teacher lacks"

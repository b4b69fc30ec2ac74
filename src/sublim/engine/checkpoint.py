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
from ..models.net import mlp_spec
from .metrics import snapshot
from .perturb import apply_perturbations

FORMAT = "sublim-model-1"
FLAG = "--teacher-checkpoint"
TEACHER_METRICS = ("teacher_init_acc", "teacher_init_class_loss", "teacher_train_loss_last")


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in state.items()}


def _build_info(config: ExperimentConfig, role: str) -> dict[str, Any]:
    """What it takes to rebuild the network without the data or the original config's paths."""
    return {
        "spec": config.arch_spec(role) or mlp_spec(config.hidden_dims(role)),
        "in_shape": list(config.input_shape),
        "num_classes": config.num_classes,
        "m": config.m,
        "kind": getattr(config, f"{role}_type"),
        "head_layout": config.head_layout,
    }


def bundle(
    config: ExperimentConfig,
    role: str,
    stage: str,
    state: dict[str, torch.Tensor],
    arch: str,
    metrics: dict[str, float] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
) -> bytes:
    """One model's checkpoint as bytes (a trained teacher also carries its initial state)."""
    data: dict[str, Any] = {
        "format": FORMAT,
        "role": role,
        "stage": stage,
        "config": config.to_dict(),
        "layer_names": config.layer_names(role),
        "arch": arch,
        "build": _build_info(config, role),
        "classes": list(config.selected_classes) if config.selected_classes else None,
        "folder_classes": config.folder_classes if config.dataset == "image-folder" else None,
        "state_dict": _cpu(state),
        "metrics": dict(metrics or {}),
    }
    if init_state is not None:
        data["init_state_dict"] = _cpu(init_state)
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
    saved: dict[str, Any],
    student: SplitHeadNet,
    teacher_metrics: dict[str, float],
) -> dict[str, bytes]:
    """The three files of `--save-models`: initial teacher, trained teacher (as the teacher stage
    left it, before any student-stage perturbation), trained student."""
    metrics = {k: teacher_metrics[k] for k in TEACHER_METRICS if k in teacher_metrics}
    arch = saved["teacher_arch"]
    return {
        "teacher_init.pt": bundle(config, "teacher", "init", saved["teacher_init"], arch),
        "teacher.pt": bundle(
            config, "teacher", "trained", saved["teacher"], arch, metrics, saved["teacher_init"]
        ),
        "student.pt": bundle(
            config, "student", "trained", student.state_dict(), student.describe()
        ),
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
    if not isinstance(data, dict) or data.get("format") != FORMAT or "build" not in data:
        raise ConfigError(flag, str(path), "not a sublim checkpoint (written by --save-models)")
    return data


def _network(build: dict[str, Any], device: str | torch.device) -> SplitHeadNet:
    with torch.device("meta"):
        net = SplitHeadNet(
            build["spec"],
            tuple(build["in_shape"]),
            build["num_classes"],
            build["m"],
            build["kind"],
            build["head_layout"],
        )
    return net.to_empty(device=device)


def load_model(path: str | os.PathLike[str], device: str = "cpu") -> tuple[SplitHeadNet, dict]:
    """The model saved in a checkpoint (rebuilt from the bundle alone, no data or folders
    needed) and the bundle's metadata."""
    data = read_bundle(path, "path")
    net = _network(data["build"], device)
    net.load_state_dict(data["state_dict"])
    meta = {k: v for k, v in data.items() if k not in ("state_dict", "init_state_dict")}
    return net, meta


def load_teacher_checkpoint(config: ExperimentConfig, device: torch.device) -> dict[str, Any]:
    """The trained teacher of `config.teacher_checkpoint`, checked against `config`.

    Refused in one line when its dataset, classes, input normalisation or architecture differ.
    Returns {"state", "init_state", "init" (snapshot of the real initial teacher), "metrics"}.
    """
    path = config.teacher_checkpoint
    data = read_bundle(path)
    if data.get("role") != "teacher" or data.get("stage") != "trained":
        raise ConfigError(
            FLAG, path, f"holds a {data.get('stage')} {data.get('role')}; give a trained teacher.pt"
        )
    saved, mine = data["config"], config.to_dict()
    for key, what in (("dataset", "dataset"), ("emnist_split", "EMNIST split")):
        if saved.get(key) != mine[key] and (key != "emnist_split" or config.dataset == "emnist"):
            raise ConfigError(
                FLAG, path, f"trained on {what} {saved.get(key)!r}; this run uses {mine[key]!r}"
            )
    want = list(config.selected_classes) if config.selected_classes else None
    if data.get("classes") != want:
        raise ConfigError(
            FLAG,
            path,
            f"trained on classes {_classes(data.get('classes'))}; this run uses {_classes(want)}",
        )
    if config.dataset == "image-folder" and data.get("folder_classes") != config.folder_classes:
        raise ConfigError(FLAG, path, f"trained on class folders {data.get('folder_classes')}")
    for key in ("data_mean", "data_std"):
        if saved.get(key) != mine[key]:
            raise ConfigError(
                FLAG,
                path,
                f"trained with --{key.replace('_', '-')} {saved.get(key)}; this run uses "
                f"{mine[key]} (inputs would be normalised differently)",
            )
    expected = build_model(config, "teacher", device)
    want_shapes = {k: tuple(v.shape) for k, v in expected.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in data["state_dict"].items()}
    if want_shapes != have:
        raise ConfigError(
            FLAG, path, f"architecture differs: {_first_difference(have, want_shapes)}"
        )
    init_state = data.get("init_state_dict") or data["state_dict"]
    expected.load_state_dict(init_state)
    return {
        "state": data["state_dict"],
        "init_state": init_state,
        "init": snapshot(expected),
        "metrics": {k: float(v) for k, v in data.get("metrics", {}).items()},
    }


def _classes(classes: list[int] | tuple[int, ...] | None) -> str:
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

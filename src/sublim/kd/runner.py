"""Run one KD experiment to completion, resumably: skip it when done, resume it when stopped.

The experiment directory is the single writer's (a lock); `train` computes and hands each
epoch's state to the `_Sink` here, which writes last.pt, best.pt, metrics.json and status.json.
"""

from __future__ import annotations

import datetime
import time
from pathlib import Path
from typing import Any

import torch

from ..engine.run import resolve_device
from ..errors import ConfigError
from .config import KDConfig
from .data import load_kd_data
from .experiment import Experiment, experiment_dir
from .train import train


class _Sink:
    """Writes what the training loop reports, atomically, after every epoch."""

    def __init__(self, exp: Experiment, total_epochs: int, started_at: str) -> None:
        self.exp, self.total, self.started_at = exp, total_epochs, started_at

    def save_epoch(self, state: dict[str, Any], best: dict[str, Any] | None) -> None:
        if best is not None:
            self.exp.save("best.pt", best)
        self.exp.save("last.pt", state)
        self.exp.write_metrics(state["history"])
        self.exp.write_status(
            "in_progress",
            epoch=state["epoch"],
            epochs=self.total,
            best_acc=state["best_acc"],
            best_epoch=state["best_epoch"],
            last_acc=state["history"]["test_acc"][-1],
            started_at=self.started_at,
        )


def _now() -> str:
    """UTC time with microseconds (ordering of experiments in a sweep)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


def teacher_checkpoint(config: KDConfig) -> Path:
    """The teacher weights a student reads: --teacher-checkpoint, else the best.pt of the one
    completed teacher experiment of that model, dataset and seed under --outdir."""
    if config.teacher_checkpoint_path:
        return Path(config.teacher_checkpoint_path)
    folder = experiment_dir(config.teacher_config()).parent
    done = [
        p.parent / "best.pt"
        for p in sorted(folder.glob(f"seed_{config.seed}_*/status.json"))
        if Experiment.read_status(p).get("status") == "completed"
    ]
    if len(done) > 1:
        raise ConfigError(
            "--teacher-checkpoint",
            None,
            f"{len(done)} completed {config.teacher} teachers for seed {config.seed} under "
            f"{folder} (different recipes); choose one: {', '.join(map(str, done))}",
        )
    return done[0] if done else experiment_dir(config.teacher_config()) / "best.pt"


def load_teacher_weights(config: KDConfig) -> dict[str, torch.Tensor]:
    """The teacher's state dict, checked to be the right model and class count."""
    path = teacher_checkpoint(config)
    flag = "--teacher-checkpoint"
    if not path.exists():
        raise ConfigError(
            flag,
            str(path),
            "no trained teacher there; train it first (sublim kd train-teacher --model "
            f"{config.teacher} --dataset {config.dataset} --seed {config.seed} --outdir "
            f"{config.outdir}) or give --teacher-checkpoint",
        )
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file)
        raise ConfigError(flag, str(path), f"unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "weights" not in data:
        raise ConfigError(flag, str(path), "expected a best.pt ({'weights': state_dict, ...})")
    if data.get("model", config.teacher) != config.teacher:
        raise ConfigError(flag, str(path), f"holds a {data['model']}, not a {config.teacher}")
    if data.get("num_classes", config.num_classes) != config.num_classes:
        raise ConfigError(
            flag,
            str(path),
            f"has {data['num_classes']} classes; {config.dataset} has {config.num_classes}",
        )
    return data["weights"]


def prepare_check(config: KDConfig, teacher: bool = True) -> None:
    """Everything that can be wrong before any data is read: the teacher's weights (unless
    `teacher` is False: a sweep trains it first), the method's parameters and tap names (models
    are built on the meta device)."""
    if config.role != "student":
        return
    if teacher:
        load_teacher_weights(config)
    if config.method == "none":
        return
    from .losses import create_distiller
    from .models import create_model

    with torch.device("meta"):
        student = create_model(config.model, config.num_classes)
        teacher = create_model(config.teacher, config.num_classes)
        create_distiller(
            config.method,
            student.tap_shapes(config.input_shape),
            teacher.tap_shapes(config.input_shape),
            **config.method_params,
        )


def run_experiment(
    config: KDConfig, progress: bool = False, stop_after: Any = None
) -> dict[str, Any]:
    """Train (or finish, or skip) one experiment; returns its final status record."""
    exp = Experiment(config)
    status = exp.status()
    if status.get("status") == "completed" and status.get("config_hash") == config.config_hash:
        return {**status, "skipped": True, "dir": str(exp.dir)}
    weights = load_teacher_weights(config) if config.role == "student" else None
    device = resolve_device(config.device)
    data = load_kd_data(config, progress)
    with exp:
        exp.write_config()
        resume = exp.load("last.pt") if status.get("status") in ("in_progress", "failed") else None
        if resume is not None and resume.get("config_hash") != config.config_hash:
            resume = None
        total = config.init_epochs + config.epochs
        started_at = _now()
        exp.write_status(
            "in_progress",
            epoch=0 if resume is None else resume["epoch"],
            epochs=total,
            started_at=started_at,
        )
        started = time.perf_counter()
        try:
            sink = _Sink(exp, total, started_at)
            result = train(config, data, device, weights, sink, resume, progress, stop_after)
        except BaseException as exc:
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            previous = exp.status()
            exp.write_status(
                "failed",
                **{k: v for k, v in previous.items() if k not in ("status", "config_hash")},
                error=f"{type(exc).__name__}: {' '.join(reason.split())}"[:500],
            )
            raise
        done = result["epoch"] >= total
        final = {**result, "epochs": total, "seconds": time.perf_counter() - started}
        final.update(started_at=started_at, finished_at=_now())
        exp.write_status("completed" if done else "in_progress", **final)
    return {**exp.status(), "dir": str(exp.dir), "skipped": False}

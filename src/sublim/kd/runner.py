"""Run one KD experiment to completion, resumably: skip it when done, resume it when stopped.

The experiment directory is the single writer's (a lock); `train` computes and hands each
epoch's state to the `_Sink` here, which writes last.pt, best.pt, metrics.json and status.json.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..engine.alloc import tune_allocator
from ..engine.run import resolve_device
from ..errors import ConfigError
from .config import KDConfig
from .data import check_kd_data, load_kd_source
from .experiment import Experiment, experiment_dir
from .train import train


class _Sink:
    """Writes what the training loop reports, atomically, after every epoch."""

    def __init__(
        self, exp: Experiment, total_epochs: int, started_at: str, tracker: Any = None
    ) -> None:
        self.exp, self.total, self.started_at = exp, total_epochs, started_at
        self.tracker = tracker  # sublim.tracking.ExperimentTracker: epochs after the files

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
        if self.tracker is not None:
            self.tracker.log_history(state["history"])


def _now() -> str:
    """UTC time with microseconds (ordering of experiments in a sweep)."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds")


FLAG = "--teacher-checkpoint"


def resolve_teacher(config: KDConfig) -> KDConfig:
    """The student with its teacher pinned (`pin_teacher`) and fkd's "auto:METRIC" teacher
    layers resolved by analysing that teacher (cached; kd.autolayers)."""
    from .autolayers import resolve_auto_layers

    resolved = resolve_auto_layers(pin_teacher(config))
    assert resolved is not None  # computed when not cached
    return resolved


def pin_teacher(config: KDConfig) -> KDConfig:
    """The student with its teacher pinned: the checkpoint path and the teacher's identity.

    --teacher-checkpoint: that file (identity: its sha256). Otherwise the one completed teacher
    experiment of that model, dataset and seed (--teacher-seed, else the student's) under
    --outdir (identity: its config hash); an
    unfinished or failed teacher is refused, never used half-trained."""
    if config.role != "student" or config.teacher_hash is not None:
        return config
    if config.teacher_checkpoint_path:
        path = Path(config.teacher_checkpoint_path)
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        except OSError as exc:
            raise ConfigError(FLAG, str(path), f"cannot read it ({exc.strerror or exc})") from None
        return config.replace(teacher_hash=f"sha256:{digest}")
    folder = experiment_dir(config.teacher_config()).parent
    seed = config.seed if config.teacher_seed is None else config.teacher_seed
    found = {
        p.parent: Experiment.read_status(p)
        for p in sorted(folder.glob(f"seed_{seed}_*/status.json"))
    }
    done = [d for d, st in found.items() if st.get("status") == "completed"]
    if len(done) > 1:
        raise ConfigError(
            FLAG,
            None,
            f"{len(done)} completed {config.teacher} teachers for seed {seed} under "
            f"{folder} (different recipes); choose one: {', '.join(str(d / 'best.pt') for d in done)}",
        )
    if not done:
        unfinished = [
            f"{d} is {st.get('status')} at epoch {st.get('epoch')}/{st.get('epochs')}"
            for d, st in found.items()
        ]
        why = "; ".join(unfinished) if unfinished else "none there"
        raise ConfigError(
            FLAG,
            None,
            f"no completed {config.teacher} teacher for seed {seed} ({why}); train it "
            f"first (sublim kd train-teacher --model {config.teacher} --dataset {config.dataset} "
            f"--seed {seed} --outdir {config.outdir}) or give {FLAG}",
        )
    teacher_hash = str(Experiment.read_status(done[0] / "status.json").get("config_hash"))
    return config.replace(
        teacher_checkpoint_path=str(done[0] / "best.pt"), teacher_hash=teacher_hash
    )


def load_teacher_weights(config: KDConfig) -> dict[str, torch.Tensor]:
    """The teacher's state dict, checked to be a finished teacher of the right model, class
    count, keys and shapes (against the model built on the meta device)."""
    path = Path(config.teacher_checkpoint_path or "")
    status = path.parent / "status.json"
    if status.exists() and Experiment.read_status(status).get("status") != "completed":
        st = Experiment.read_status(status)
        raise ConfigError(
            FLAG,
            str(path),
            f"its experiment is {st.get('status')} (epoch {st.get('epoch')}); "
            "wait for it to complete",
        )
    if not path.is_file():
        raise ConfigError(FLAG, str(path), "no such file")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 (any unreadable file)
        raise ConfigError(FLAG, str(path), f"unreadable ({str(exc).splitlines()[0]})") from None
    if not isinstance(data, dict) or "weights" not in data:
        raise ConfigError(FLAG, str(path), "expected a best.pt ({'weights': state_dict, ...})")
    if data.get("model", config.teacher) != config.teacher:
        raise ConfigError(FLAG, str(path), f"holds a {data['model']}, not a {config.teacher}")
    from .models import create_model

    with torch.device("meta"):
        net = create_model(config.teacher, config.num_classes, image_size=config.input_shape[1])
        want = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in data["weights"].items()}
    if have != want:
        wrong = sorted(set(want) ^ set(have)) or [k for k in want if want[k] != have[k]]
        raise ConfigError(
            FLAG,
            str(path),
            f"not a {config.teacher} for {config.num_classes} classes ({wrong[0]} differs)",
        )
    return data["weights"]


def check_inputs(config: KDConfig) -> None:
    """Everything the user wrote, before any teacher, data, checkpoint or download is looked
    for: the device, and the method with its parameters and layers against both models'
    tables (`prepare_check` without the teacher's or pretrained weights). KDConfig has checked
    the flags and each parameter's type already."""
    if config.device != "auto":
        try:
            torch.device(config.device)
        except RuntimeError:
            raise ConfigError(
                "--device", config.device, "expected auto, cpu, cuda or cuda:N"
            ) from None
        resolve_device(config.device)
    prepare_check(config, teacher=False, pretrained=False)


def prepare_check(config: KDConfig, teacher: bool = True, pretrained: bool = True) -> None:
    """Everything that can be wrong before any data is read: pretrained ImageNet weights
    (downloaded first for "auto"; skipped with `pretrained=False`), the teacher's weights (unless
    `teacher` is False: a sweep trains it first), the method's parameters and layers (models
    built on the meta device)."""
    if pretrained and config.pretrained is not None:
        from .pretrained import check_pretrained, pretrained_cache

        check_pretrained(
            config.model,
            config.pretrained,
            config.input_shape[1],
            config.num_classes,
            pretrained_cache(config.data_dir),
        )
    if config.role != "student":
        return
    if teacher:
        load_teacher_weights(config)
    from .config import auto_metric
    from .losses import create_distiller
    from .losses.base import DistillerConfigError
    from .losses.layers import gen_layer_count
    from .train import method_params, named_model_shapes, on_meta

    shape = config.input_shape
    s_shapes = named_model_shapes(config.model, config.num_classes, shape)
    t_shapes = named_model_shapes(str(config.teacher), config.num_classes, shape)
    params = method_params(config)
    auto = config.method == "fkd" and auto_metric(params.get("teacher_layers")) is not None
    if auto:  # the metric is valid (KDConfig checked it); the indices come from the analysis
        k = len(params["student_layers"]) if isinstance(params.get("student_layers"), list) else 1
        n = gen_layer_count(t_shapes)
        params["teacher_layers"] = list(range(max(n - k, 0), n))
    with on_meta():
        try:
            create_distiller(config.method, s_shapes, t_shapes, **params)
        except DistillerConfigError as exc:
            if not (auto and exc.key == "teacher_layers"):  # not the placeholder's fault
                raise
        except ConfigError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(
                "--method-params", json.dumps(config.method_params), " ".join(str(exc).split())
            ) from None


def run_experiment(
    config: KDConfig, progress: bool = False, stop_after: Any = None, track: Any = None
) -> dict[str, Any]:
    """Train (or finish, or skip) one experiment; returns its final status record.

    `track` (a sublim.tracking.TrackSpec, not part of the config: it does not change results)
    logs every epoch to one tracked run per backend, continued when the experiment resumes."""
    tune_allocator()  # no page-fault storm from freed conv buffers (sublim.engine.alloc)
    if config.role == "student" and config.teacher_hash is None:  # not checked by a sweep plan
        check_inputs(config)
    config = resolve_teacher(config)
    exp = Experiment(config)
    status = exp.status()
    if status.get("status") == "completed" and status.get("config_hash") == config.config_hash:
        return {**status, "skipped": True, "dir": str(exp.dir)}
    check_kd_data(config)  # a streamed dataset's folder, before any directory is made
    weights = load_teacher_weights(config) if config.role == "student" else None
    device = resolve_device(config.device)
    with exp:  # the lock first, then the status it protects
        status = exp.status()
        if status.get("status") == "completed" and status.get("config_hash") == config.config_hash:
            return {**status, "skipped": True, "dir": str(exp.dir)}
        data = load_kd_source(config, progress)
        exp.write_config()
        resume = exp.load("last.pt") if status.get("status") in ("in_progress", "failed") else None
        if resume is not None and resume.get("config_hash") != config.config_hash:
            resume = None
        total = config.init_stage + config.epochs
        started_at = _now()
        exp.write_status(
            "in_progress",
            epoch=0 if resume is None else resume["epoch"],
            epochs=total,
            started_at=started_at,
        )
        started = time.perf_counter()
        tracker = None if track is None else _tracker(track, exp, config)
        try:
            sink = _Sink(exp, total, started_at, tracker)
            result = train(config, data, device, weights, sink, resume, progress, stop_after)
        except BaseException as exc:
            if tracker is not None:
                tracker.close("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else str(exc)
            previous = exp.status()
            exp.write_status(
                "failed",
                **{k: v for k, v in previous.items() if k not in ("status", "config_hash")},
                error=f"{type(exc).__name__}: {' '.join(reason.split())}"[:500],
            )
            raise
        done = result["epoch"] >= total
        if tracker is not None and done:
            tracker.close("FINISHED")
        final = {**result, "epochs": total, "seconds": time.perf_counter() - started}
        final.update(started_at=started_at, finished_at=_now())
        exp.write_status("completed" if done else "in_progress", **final)
    return {**exp.status(), "dir": str(exp.dir), "skipped": False}


def _tracker(track: Any, exp: Experiment, config: KDConfig) -> Any:
    """The experiment's tracker: named by its directory under --outdir, its config as
    parameters; run ids kept in <experiment>/tracking.json so a resume continues them."""
    from ..tracking import ExperimentTracker

    try:
        name = str(exp.dir.resolve().relative_to(Path(config.outdir).resolve()))
    except ValueError:
        name = exp.dir.name
    params = {**config.to_dict(), "config_hash": config.config_hash}
    tags = {"sublim.config_hash": config.config_hash, "sublim.experiment_dir": str(exp.dir)}
    return ExperimentTracker(track, exp.dir, name, params, tags)

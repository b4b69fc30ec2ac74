"""fkd's `teacher_layers = "auto:METRIC"`: the teacher's k best layers by layer quality.

The teacher is analysed once (`kd.analyze`, cached in its experiment directory, seed 0 and the
spec's subset sizes on its own training split); the k layers with the largest METRIC (q, s, i,
e or sqrt_ie; k = the number of student layers) are taken in ascending order and paired
one-to-one (KD_wo_CE spec 2.4). The resolved indices replace "auto:METRIC" in the student's
method_params before its experiment exists, so they are in its config.json and its hash.
"""

from __future__ import annotations

from collections.abc import Callable

from ..errors import ConfigError
from .analyze import Settings, Target, analyze, cached, find_target
from .config import AUTO_METRICS, KDConfig, auto_metric

SETTINGS = Settings()  # what every automatic choice analyses with (seed 0, the spec's sizes)


def _check_metric_names() -> None:
    """kd.config keeps the metric names torch-free; they must be geometry's."""
    from ..geometry.select import METRICS

    if AUTO_METRICS != METRICS:
        raise RuntimeError(f"kd.config.AUTO_METRICS {AUTO_METRICS} != geometry METRICS {METRICS}")


_check_metric_names()


def needs_auto(config: KDConfig) -> str | None:
    """The metric of a student whose teacher layers are still "auto:METRIC", else None."""
    if config.role != "student" or config.method != "fkd":
        return None
    return auto_metric(config.method_params.get("teacher_layers"))


def student_layer_count(config: KDConfig) -> int:
    """k: how many student layers are distilled (given, or the model's standard list)."""
    from .train import method_params

    layers = method_params(config).get("student_layers")
    if not isinstance(layers, list | tuple) or not layers:
        raise ConfigError(
            "student_layers",
            layers,
            f"auto teacher layers need the student's layers listed ({config.model} has no "
            "standard list; see 'sublim kd layers')",
        )
    return len(layers)


def teacher_target(config: KDConfig) -> Target:
    """The student's teacher (its pinned checkpoint) as an analysis target."""
    if not config.teacher_checkpoint_path:
        raise ConfigError("teacher_layers", "auto", "the teacher must be resolved first")
    return find_target(
        config.teacher_checkpoint_path, dataset=config.dataset, data_dir=config.data_dir
    )


def resolve_auto_layers(config: KDConfig, compute: bool = True) -> KDConfig | None:
    """`config` with "auto:METRIC" teacher layers replaced by the chosen indices (unchanged when
    it has none). With `compute=False` only a cached analysis is used: None when there is none."""
    metric = needs_auto(config)
    if metric is None:
        return config
    k = student_layer_count(config)
    target = teacher_target(config)
    rows = analyze(target, SETTINGS).rows if compute else cached(target, SETTINGS)
    if rows is None:
        return None
    from ..geometry import select_layers

    if k > len(rows):
        raise ConfigError(
            "teacher_layers",
            config.method_params["teacher_layers"],
            f"{k} student layers but the {config.teacher} has {len(rows)} generalized layers",
        )
    chosen = select_layers(rows, metric, k)
    return config.replace(
        method_params={**config.method_params, "teacher_layers": chosen},
        teacher_layers_requested=str(config.method_params["teacher_layers"]),
    )


def resolve_planned(students: dict[str, KDConfig], teachers_done: set[str]) -> dict[str, KDConfig]:
    """A sweep plan's students (by hash) with auto layers resolved where the teacher has completed
    and its analysis is cached, so completed students are recognised; the others keep
    "auto:METRIC" until `resolve_ready` runs after their teacher."""
    out: dict[str, KDConfig] = {}
    for student in students.values():
        if needs_auto(student) is not None and student.teacher_hash in teachers_done:
            try:
                student = resolve_auto_layers(student, compute=False) or student
            except ConfigError:
                pass  # reported when the sweep resolves it for real
        out.setdefault(student.config_hash, student)
    return out


def resolve_ready(
    students: list[KDConfig], report: Callable[[str], None]
) -> tuple[list[KDConfig], int]:
    """Students whose teacher has just completed, ready to queue: auto layers resolved by
    analysing the teacher once in the sweep's driver (cached for the rest); returns them and
    the number that could not be resolved (reported through `report`)."""
    ready, failures = [], 0
    for student in students:
        try:
            resolved = resolve_auto_layers(student)
        except Exception as exc:  # noqa: BLE001 (that student fails; the sweep goes on)
            failures += 1
            report(f"failed to choose teacher layers: {' '.join(str(exc).split())}")
            continue
        assert resolved is not None
        if resolved is not student:
            layers = resolved.method_params["teacher_layers"]
            report(f"teacher layers {student.method_params['teacher_layers']} -> {layers}")
        ready.append(resolved)
    return ready, failures

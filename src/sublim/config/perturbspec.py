"""Perturbation specs: `--perturb` shorthand and `--perturb-spec` JSON, validated.

A perturbation adds std * N(0, 1) noise (std absolute) to the weight and/or bias of each
selected layer of the teacher or the student at one of four timings.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError
from .layerconf import parse_bool

TARGETS = ("teacher", "student")
TIMINGS = (
    "before_teacher_training",
    "after_teacher_training",
    "before_student_training",
    "after_student_training",
)
DISTRIBUTIONS = ("normal",)
_KEYS = ("target", "layers", "std", "sigma", "timing", "include_weight", "include_bias")
KEYS = (*_KEYS, "distribution")


@dataclass(frozen=True)
class PerturbSpec:
    """One perturbation. `layers` is ('all',) or a tuple of layer names."""

    target: str = "student"
    layers: tuple[str, ...] = ("all",)
    std: float = 0.0
    timing: str = "before_student_training"
    include_weight: bool = True
    include_bias: bool = True
    distribution: str = "normal"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, as written to outputs."""
        return {
            "target": self.target,
            "layers": list(self.layers),
            "std": self.std,
            "timing": self.timing,
            "include_weight": self.include_weight,
            "include_bias": self.include_bias,
            "distribution": self.distribution,
        }


def _layers(value: Any, flag: str) -> tuple[str, ...]:
    if isinstance(value, str):
        parts = [p.strip() for p in value.split("+")]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        parts = [p.strip() for v in value for p in v.split("+")]
    else:
        raise ConfigError(f"{flag} layers", value, "expected a name, a list of names, or 'all'")
    if not parts or any(not p for p in parts):
        raise ConfigError(f"{flag} layers", value, "empty layer name")
    return ("all",) if "all" in parts else tuple(dict.fromkeys(parts))


def from_mapping(data: dict[str, Any], flag: str) -> PerturbSpec:
    """Build a validated spec from a dict of fields (JSON object or parsed shorthand)."""
    unknown = [k for k in data if k not in KEYS]
    if unknown:
        raise ConfigError(
            flag, unknown[0], f"unknown perturbation field; allowed: {', '.join(KEYS)}"
        )
    if "std" in data and "sigma" in data:
        raise ConfigError(flag, "sigma", "give std or sigma, not both")
    target = str(data.get("target", "student")).strip().lower()
    if target not in TARGETS:
        raise ConfigError(f"{flag} target", data.get("target"), f"allowed: {', '.join(TARGETS)}")
    timing = str(data.get("timing", "before_student_training")).strip().lower()
    if timing not in TIMINGS:
        raise ConfigError(f"{flag} timing", data.get("timing"), f"allowed: {', '.join(TIMINGS)}")
    dist = str(data.get("distribution", "normal")).strip().lower()
    if dist not in DISTRIBUTIONS:
        raise ConfigError(f"{flag} distribution", dist, f"allowed: {', '.join(DISTRIBUTIONS)}")
    raw_std = data.get("std", data.get("sigma", 0.0))
    try:
        std = float(raw_std)
    except (TypeError, ValueError):
        std = math.nan
    if isinstance(raw_std, bool) or not math.isfinite(std) or std < 0:
        raise ConfigError(f"{flag} std", raw_std, "expected a finite number >= 0")

    def flag_bool(key: str) -> bool:
        v = data.get(key, True)
        return v if isinstance(v, bool) else parse_bool(str(v), f"{flag} {key}")

    return PerturbSpec(
        target=target,
        layers=_layers(data.get("layers", "all"), flag),
        std=std,
        timing=timing,
        include_weight=flag_bool("include_weight"),
        include_bias=flag_bool("include_bias"),
        distribution=dist,
    )


def parse_shorthand(text: str, flag: str = "--perturb") -> PerturbSpec:
    """Parse `student:aux_head,std=0.1,timing=before_student_training,include_bias=false`.

    The first entry may be `target:layers` (layers joined with '+'); the rest are key=value.
    """
    data: dict[str, Any] = {}
    entries = [e.strip() for e in text.split(",") if e.strip()]
    if not entries:
        raise ConfigError(flag, text, "expected e.g. 'student:aux_head,std=0.1'")
    for i, entry in enumerate(entries):
        if "=" in entry:
            key, value = (p.strip() for p in entry.split("=", 1))
            data[key] = value
        elif i == 0:
            target, _, layers = entry.partition(":")
            data["target"] = target
            if layers:
                data["layers"] = layers
        else:
            raise ConfigError(flag, entry, "expected key=value (keys: " + ", ".join(KEYS) + ")")
    return from_mapping(data, flag)


def parse_json(text: str, flag: str = "--perturb-spec") -> list[PerturbSpec]:
    """Parse a JSON object or list of objects into specs."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            flag, text[:60], f"not valid JSON ({exc.msg} at char {exc.pos})"
        ) from None
    items = data if isinstance(data, list) else [data]
    if not all(isinstance(d, dict) for d in items):
        raise ConfigError(flag, text[:60], "expected a JSON object or a list of objects")
    return [from_mapping(d, f"{flag}[{i}]") for i, d in enumerate(items)]

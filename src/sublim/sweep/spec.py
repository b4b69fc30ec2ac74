"""Sweep spec files (TOML) -> the list of ExperimentConfigs they describe.

A spec has a `[base]` config, `[grid]` axes (cartesian product), `[zip]` axes (advanced
together), named `[conditions.<name>]` override bundles (one axis called `condition`), `seeds`
(`"0..19"`, a list or an int) and a `label` format string over the axis names. Values of an
axis may be a list or `{ range = [a, b] }` (inclusive integers) or
`{ linspace = [start, stop, n] }`. `perturb.<field>` keys set that field on every perturbation.
Errors name the file, the key, the value and what is allowed.
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ..config import ExperimentConfig
from ..config.presets import preset
from ..errors import ConfigError, UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

# The top-level keys of a spec and what each means (the documentation's reference is made
# from this table; a key missing here is refused).
TOP_KEY_HELP: dict[str, str] = {
    "name": "the sweep's name: its output directory under --outdir and the sweep_name column",
    "description": "free text describing the sweep, for its readers",
    "figure": "the paper figure the sweep reproduces, for its readers (the report takes the "
    "figure from the sweep name, fig2_... -> 2, or from sublim report --figure)",
    "preset": "a published setup applied under every explicit field (sublim run --preset)",
    "seeds": 'the seeds: "0..19" (inclusive), "0,3,5", a list, or one int (that seed alone)',
    "label": 'a format string over the axis names, e.g. "m={m}": each run\'s run_label',
    "base": "config fields shared by every run",
    "grid": "axes (lists of values, {range = [a, b]} or {linspace = [start, stop, n]}) "
    "whose cartesian product gives the runs",
    "zip": "axes advanced together (equal lengths), crossed with the grid",
    "conditions": "named bundles of overrides, [conditions.<name>]: one more axis, condition",
    "track": "tracking targets as for --track (tensorboard:DIR, mlflow, mlflow:URI)",
}
TOP_KEYS = tuple(TOP_KEY_HELP)
CONFIG_FIELDS = tuple(f.name for f in fields(ExperimentConfig))
# fields a spec may not set: they belong to the sweep command, not to the experiment
SWEEP_OWNED = ("seed", "outdir", "sweep_name", "run_label", "condition", "append_global")


class SpecError(UserError):
    """An invalid sweep spec: `<file>: <key>: <problem>`."""


@dataclass(frozen=True)
class Point:
    """One run of a sweep: its config and the axis values that produced it."""

    config: ExperimentConfig
    axes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSpec:
    """A parsed, validated sweep spec (expansion is lazy: see `points`)."""

    path: str
    name: str
    description: str
    figure: str | None
    seeds: tuple[int, ...]
    label: str | None
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    zipped: dict[str, list[Any]]
    conditions: dict[str, dict[str, Any]]
    track: tuple[str, ...] = ()  # tracking targets (sublim.tracking); not part of any config

    @property
    def axis_names(self) -> list[str]:
        """Names of the varying axes, in label order (condition first)."""
        names = ["condition"] if self.conditions else []
        return names + list(self.zipped) + list(self.grid)

    def count(self) -> int:
        """Number of runs, without building configs."""
        n = len(self.seeds) * max(1, len(self.conditions))
        if self.zipped:
            n *= len(next(iter(self.zipped.values())))
        for values in self.grid.values():
            n *= len(values)
        return n

    def points(
        self, outdir: str | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Iterator[Point]:
        """Every run, validated: seeds vary fastest so a seed's runs are adjacent."""
        conditions = list(self.conditions.items()) or [(None, {})]
        zip_len = len(next(iter(self.zipped.values()))) if self.zipped else 1
        zipped_rows = [{k: v[i] for k, v in self.zipped.items()} for i in range(zip_len)]
        grid_keys = list(self.grid)
        for cond_name, cond in conditions:
            for zrow in zipped_rows:
                for combo in itertools.product(*(self.grid[k] for k in grid_keys)):
                    axes: dict[str, Any] = {}
                    if cond_name is not None:
                        axes["condition"] = cond_name
                    axes.update(zrow)
                    axes.update(zip(grid_keys, combo, strict=True))
                    values = {
                        **self.base,
                        **cond,
                        **zrow,
                        **dict(zip(grid_keys, combo, strict=True)),
                    }
                    values.update(overrides or {})
                    label = self._label(axes)
                    for seed in self.seeds:
                        extra = {
                            "seed": seed,
                            "sweep_name": self.name,
                            "run_label": label,
                            "condition": cond_name or "",
                        }
                        if outdir is not None:
                            extra["outdir"] = outdir
                        yield Point(self._config({**values, **extra}, axes), axes)

    def _label(self, axes: dict[str, Any]) -> str:
        if self.label is None:
            return ",".join(f"{k}={_compact(v)}" for k, v in axes.items())
        names = {k.replace(".", "_"): v for k, v in axes.items()}
        try:
            return self.label.format(**names)
        except (KeyError, IndexError, ValueError) as exc:
            raise SpecError(
                f"{self.path}: label: {self.label!r} cannot be formatted ({exc}); "
                f"available names: {', '.join(names) or 'none'}"
            ) from None

    def _config(self, values: dict[str, Any], axes: dict[str, Any]) -> ExperimentConfig:
        plain = {k: v for k, v in values.items() if not k.startswith("perturb.")}
        perturb_fields = {
            k.split(".", 1)[1]: v for k, v in values.items() if k.startswith("perturb.")
        }
        if perturb_fields:
            specs = plain.get("perturb", [])
            if not specs:
                raise SpecError(f"{self.path}: perturb.*: set base.perturb (a list of specs) first")
            plain["perturb"] = [{**s, **perturb_fields} for s in specs]
        try:
            return ExperimentConfig.from_dict(plain)
        except ConfigError as exc:
            where = ", ".join(f"{k}={_compact(v)}" for k, v in axes.items()) or "base"
            raise SpecError(
                f"{self.path}: {exc.key} (at {where}): invalid value {exc.value!r}; {exc.allowed}"
            ) from None


def _compact(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "x".join(str(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def parse_seeds(value: Any, where: str) -> tuple[int, ...]:
    """`"0..19"` (inclusive), `"0,3,5"`, a list of ints or one int."""
    if isinstance(value, bool):
        raise SpecError(f'{where}: invalid value {value!r}; expected e.g. "0..19", [0, 1] or 3')
    if isinstance(value, int):
        return (value,)
    if (
        isinstance(value, list)
        and value
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        seeds = tuple(value)
    elif isinstance(value, str):
        try:
            if ".." in value:
                a, b = (int(p) for p in value.split(".."))
                seeds = tuple(range(a, b + 1))
            else:
                seeds = tuple(int(p) for p in value.split(","))
        except ValueError:
            seeds = ()
    else:
        seeds = ()
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise SpecError(
            f'{where}: invalid value {value!r}; expected distinct seeds >= 0 such as "0..19", "0,3" or [0, 1]'
        )
    return seeds


def _axis_values(value: Any, where: str) -> list[Any]:
    if isinstance(value, list):
        if not value:
            raise SpecError(f"{where}: empty list; an axis needs at least one value")
        return value
    if isinstance(value, dict) and len(value) == 1:
        ((kind, args),) = value.items()
        if kind == "range" and _ints(args, 2):
            a, b = args
            if b >= a:
                return list(range(a, b + 1))
        if kind == "linspace" and isinstance(args, list) and len(args) == 3 and _ints(args[2:], 1):
            a, b, n = args
            if n >= 1 and all(isinstance(x, int | float) for x in (a, b)):
                return [a + (b - a) * i / (n - 1) if n > 1 else a for i in range(n)]
    raise SpecError(
        f"{where}: invalid value {value!r}; expected a list, {{ range = [a, b] }} or "
        "{ linspace = [start, stop, n] }"
    )


def _ints(args: Any, n: int) -> bool:
    return (
        isinstance(args, list)
        and len(args) == n
        and all(isinstance(a, int) and not isinstance(a, bool) for a in args)
    )


def _check_keys(table: Mapping[str, Any], where: str, allow_perturb_fields: bool) -> None:
    for key in table:
        if key in SWEEP_OWNED:
            raise SpecError(
                f"{where}.{key}: set by the sweep (use `seeds`, `label` or the command line), not in the spec"
            )
        if allow_perturb_fields and key.startswith("perturb."):
            continue
        if key not in CONFIG_FIELDS:
            raise SpecError(
                f"{where}.{key}: unknown config field; allowed: {', '.join(CONFIG_FIELDS)}"
            )


def spec_track(data: dict[str, Any], path: str | Path) -> tuple[str, ...]:
    """A spec's `track` key (one target or a list; sublim.tracking parses each) as a tuple."""
    track = data.get("track", [])
    track = [track] if isinstance(track, str) else track
    if not isinstance(track, list) or not all(isinstance(t, str) for t in track):
        raise SpecError(
            f"{path}: track: invalid value {data['track']!r}; expected a string like "
            '"tensorboard:DIR" or "mlflow", or a list of them'
        )
    return tuple(track)


def read_toml(path: str | Path) -> dict[str, Any]:
    """A spec file's TOML as a dict; SpecError naming the file when unreadable or invalid."""
    p = Path(path)
    try:
        return tomllib.loads(p.read_text())
    except OSError as exc:
        raise SpecError(f"{p}: cannot read the spec ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: not valid TOML ({exc})") from None


def load_spec(path: str | Path) -> SweepSpec:
    """Read and validate a TOML sweep spec; every config it expands to is validated too."""
    p = Path(path)
    return parse_spec(read_toml(p), str(p), default_name=p.stem)


def parse_spec(
    data: dict[str, Any], path: str = "<spec>", default_name: str = "sweep"
) -> SweepSpec:
    """Validate a spec given as a dict (the parsed TOML)."""
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SpecError(f"{path}: {unknown[0]}: unknown key; allowed: {', '.join(TOP_KEYS)}")
    for key in ("base", "grid", "zip", "conditions"):
        if key in data and not isinstance(data[key], dict):
            raise SpecError(f"{path}: {key}: expected a table ([{key}])")
    base = dict(data.get("base", {}))
    _check_keys(base, f"{path}: base", allow_perturb_fields=False)
    if "preset" in data:  # the preset's settings, under what [base] sets
        try:
            base = {**preset(str(data["preset"])), **base}
        except ConfigError as exc:
            raise SpecError(f"{path}: preset: {exc.value!r}; {exc.allowed}") from None
    grid = {k: _axis_values(v, f"{path}: grid.{k}") for k, v in data.get("grid", {}).items()}
    _check_keys(grid, f"{path}: grid", allow_perturb_fields=True)
    zipped = {k: _axis_values(v, f"{path}: zip.{k}") for k, v in data.get("zip", {}).items()}
    _check_keys(zipped, f"{path}: zip", allow_perturb_fields=True)
    lengths = {k: len(v) for k, v in zipped.items()}
    if len(set(lengths.values())) > 1:
        raise SpecError(f"{path}: zip: axes must have equal lengths; got {lengths}")
    overlap = set(grid) & set(zipped)
    if overlap:
        raise SpecError(f"{path}: {sorted(overlap)[0]}: appears in both grid and zip")
    conditions: dict[str, dict[str, Any]] = {}
    for name, overrides in data.get("conditions", {}).items():
        if not isinstance(overrides, dict):
            raise SpecError(f"{path}: conditions.{name}: expected a table of config overrides")
        _check_keys(overrides, f"{path}: conditions.{name}", allow_perturb_fields=True)
        conditions[name] = dict(overrides)
    label = data.get("label")
    if label is not None and not isinstance(label, str):
        raise SpecError(
            f'{path}: label: invalid value {label!r}; expected a format string like "m{{m}}"'
        )
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise SpecError(f"{path}: name: invalid value {name!r}; expected a non-empty string")
    spec = SweepSpec(
        path=path,
        name=name,
        description=str(data.get("description", "")),
        figure=None if data.get("figure") is None else str(data["figure"]),
        seeds=parse_seeds(data.get("seeds", 0), f"{path}: seeds"),
        label=label,
        base=base,
        grid=grid,
        zipped=zipped,
        conditions=conditions,
        track=spec_track(data, path),
    )
    return spec

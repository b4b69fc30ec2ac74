"""Argument helpers shared by every command: the one-line-error parser and flag value parsers.

Each parser raises ConfigError naming the flag, the value and what is allowed, so `main` prints
one line and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

from ..errors import ConfigError

PROG = "sublim"


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors and exit status 2."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{PROG}: error: {message} (see '{self.prog} --help')\n")
        sys.exit(2)


def parse_int(flag: str, text: str | None, optional: bool = False) -> Any:
    """An integer flag value (None passes when optional); ConfigError names the flag."""
    if text is None and optional:
        return None
    try:
        return int(str(text).strip())
    except ValueError:
        raise ConfigError(flag, text, "expected an integer") from None


def parse_float(flag: str, text: str) -> float:
    """A float flag value; ConfigError names the flag."""
    try:
        return float(text)
    except ValueError:
        raise ConfigError(flag, text, "expected a number") from None


def parse_ints(flag: str, text: str) -> tuple[int, ...]:
    """Comma-separated integers, e.g. 256,256."""
    parts = [s.strip() for s in str(text).split(",")]
    try:
        return tuple(int(s) for s in parts)
    except ValueError:
        raise ConfigError(flag, text, "expected comma-separated integers, e.g. 256,256") from None


def json_or_file(flag: str, text: str) -> str:
    """A JSON text given inline or as a path to a file (inline JSON is tried first)."""
    stripped = text.strip()
    if stripped[:1] in "[{":
        return stripped
    path = Path(text).expanduser()
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(
            flag, text, f"neither inline JSON nor a readable file ({exc.strerror or exc})"
        ) from None


def parse_floats(flag: str, text: str) -> tuple[float, ...]:
    """Comma-separated numbers, e.g. 0.5,0.5,0.5."""
    return tuple(parse_float(flag, part.strip()) for part in str(text).split(","))


def explicit_dests(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options written in `argv` (also as --flag=value or a unique prefix)."""
    options = {o: a.dest for a in parser._actions for o in a.option_strings}
    found: set[str] = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token.split("=", 1)[0]
        matches = {d for o, d in options.items() if o == name} or {
            d for o, d in options.items() if o.startswith(name)
        }
        if len(matches) == 1:
            found |= matches
    return found


TRACK_HELP = (
    "track in TensorBoard (tensorboard:DIR) or MLflow (mlflow: a SQLite store "
    "<outdir>/mlflow.db; mlflow:URI: any tracking URI, e.g. http://127.0.0.1:5000); repeatable; "
    "needs pip install 'sublim[tracking]'; a tracking failure warns once and never stops the "
    "work; tracking does not change results or config hashes"
)


def add_track_argument(p: Any) -> None:
    """The repeatable `--track` flag (experiment tracking, sublim.tracking)."""
    p.add_argument("--track", action="append", default=None, metavar="TARGET", help=TRACK_HELP)


def track_targets(ns: argparse.Namespace, spec_value: Any = None, where: str = "track") -> tuple:
    """The tracking targets: --track when given (it replaces the spec's), else the spec's
    `track` value; validated here (one line naming --track, e.g. when the extra is missing)."""
    from ..tracking import parse_targets

    if getattr(ns, "track", None):
        return parse_targets(ns.track, "--track")
    return parse_targets(spec_value, where)

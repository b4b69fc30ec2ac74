"""Per-layer configs (`--teacher-init A,A,random,A`, `--student-trainable all:true,aux_head:0`).

Two forms, never mixed: positional (one entry per layer, in layer order) or named
(`name:value` pairs over the default: `all:value` resets every layer first, then the named
entries override).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..errors import ConfigError

INIT_SOURCES = ("A", "B", "random")
_TRUE = {"true", "1", "yes", "y", "t"}
_FALSE = {"false", "0", "no", "n", "f"}
BOOL_WORDS = "true/false/1/0/yes/no/y/n/t/f"


def parse_bool(text: str, key: str) -> bool:
    """Parse a boolean word (any case) or raise ConfigError naming `key`."""
    word = str(text).strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ConfigError(key, text, f"expected a boolean ({BOOL_WORDS})")


def parse_init_source(text: str, key: str) -> str:
    """Normalise an init source: A, B (any case) or random."""
    word = str(text).strip()
    if word.upper() in ("A", "B"):
        return word.upper()
    if word.lower() == "random":
        return "random"
    raise ConfigError(key, text, "expected an init source (A, B or random)")


def _resolve(
    text: str,
    names: Sequence[str],
    flag: str,
    parse: Callable[[str, str], object],
    default: object,
) -> dict[str, object]:
    entries = [e.strip() for e in str(text).split(",")]
    if not entries or any(e == "" for e in entries):
        raise ConfigError(flag, text, "empty entry; give one value per layer or name:value pairs")
    named = [":" in e for e in entries]
    if any(named) and not all(named):
        raise ConfigError(
            flag, text, "mixes positional and name:value entries; use one form (e.g. all:A,fc1:B)"
        )
    if not any(named):
        if len(entries) != len(names):
            raise ConfigError(
                flag,
                text,
                f"{len(entries)} positional entries for {len(names)} layers "
                f"({', '.join(names)}); give exactly one per layer or use name:value",
            )
        return {n: parse(e, flag) for n, e in zip(names, entries, strict=True)}
    pairs = [tuple(p.strip() for p in e.split(":", 1)) for e in entries]
    out: dict[str, object] = {n: default for n in names}
    for name, value in pairs:
        if name == "all":
            v = parse(value, flag)
            out.update({n: v for n in names})
    for name, value in pairs:
        if name == "all":
            continue
        if name not in names:
            raise ConfigError(flag, name, f"unknown layer; available: all, {', '.join(names)}")
        out[name] = parse(value, flag)
    return out


def resolve_init(text: str, names: Sequence[str], flag: str) -> dict[str, str]:
    """Resolve an init config to {layer: 'A' | 'B' | 'random'}."""
    return _resolve(text, names, flag, parse_init_source, "A")  # type: ignore[return-value]


def resolve_trainable(text: str, names: Sequence[str], flag: str) -> dict[str, bool]:
    """Resolve a trainability config to {layer: bool}."""
    return _resolve(text, names, flag, parse_bool, True)  # type: ignore[return-value]

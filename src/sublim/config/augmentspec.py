"""`--augment rotate=60,crop=2,translate=0.1,hflip=0.5`: parse and validate (pure, no torch).

rotate: maximum angle in degrees (uniform in [-a, a]); translate: maximum shift as a fraction of
the image size (uniform, independently in x and y); crop: random crop with zero padding of this
many pixels, i.e. an integer shift in [-p, p] in x and y; hflip: probability of a horizontal flip.
"""

from __future__ import annotations

import math

from ..errors import ConfigError

FLAG = "--augment"
# key -> (converter, minimum, maximum)
KEYS: dict[str, tuple[type, float, float]] = {
    "rotate": (float, 0.0, 180.0),
    "translate": (float, 0.0, 1.0),
    "crop": (int, 0, 1_000_000),
    "hflip": (float, 0.0, 1.0),
}


def parse_augment(text: str) -> dict[str, float]:
    """{key: value} for every key, zeros for those not given; ConfigError names --augment."""
    out: dict[str, float] = {k: 0 for k in KEYS}
    text = (text or "").strip()
    if not text or text.lower() == "none":
        return out
    for part in text.split(","):
        key, sep, raw = part.partition("=")
        key = key.strip().lower()
        if not sep or key not in KEYS:
            raise ConfigError(
                FLAG, text, f"expected key=value pairs with keys {', '.join(KEYS)}, e.g. rotate=60"
            )
        kind, low, high = KEYS[key]
        try:
            value = kind(raw.strip())
        except ValueError:
            raise ConfigError(FLAG, text, f"{key}: expected a {kind.__name__}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(FLAG, text, f"{key}: expected {low:g}..{high:g}")
        out[key] = value
    return out


def canonical(text: str) -> str:
    """A normal form (sorted keys, non-zero values only), so equal settings hash the same."""
    values = parse_augment(text)
    return ",".join(f"{k}={values[k]:g}" for k in sorted(values) if values[k])

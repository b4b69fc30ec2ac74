"""`--augment rotate=60,crop=2,translate=0.1,hflip=0.5`: parse and validate (pure, no torch).

rotate: maximum angle in degrees (uniform in [-a, a]); translate: maximum shift as a fraction of
the image size (uniform, independently in x and y); crop: random crop with zero padding of this
many pixels, i.e. an integer shift in [-p, p] in x and y; hflip: probability of a horizontal flip.

Two switches (0 or 1, default 0) change how those transforms are applied:
batch=1 draws one set of parameters per batch, shared by all its images (as the KD_wo_CE reference,
which applies torchvision's RandomCrop and RandomHorizontalFlip to a whole batch tensor; default:
one draw per image); meanfill=1 fills the areas moved in from outside with 0 in normalised space,
i.e. the dataset's mean colour, as the reference's padding does (default: black).
`crop=4,hflip=0.5,batch=1,meanfill=1` is the reference's augmentation.
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
    "batch": (int, 0, 1),
    "meanfill": (int, 0, 1),
}
TRANSFORMS = ("rotate", "translate", "crop", "hflip")
# the transforms that move areas in from outside the image, so that the fill shows
MOVING = ("rotate", "translate", "crop")


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
        allowed = "0 or 1" if (kind, low, high) == (int, 0, 1) else f"{low:g}..{high:g}"
        try:
            value = kind(raw.strip())
        except ValueError:
            expected = allowed if allowed == "0 or 1" else f"a {kind.__name__}"
            raise ConfigError(FLAG, text, f"{key}: expected {expected}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise ConfigError(FLAG, text, f"{key}: expected {allowed}")
        out[key] = value
    return out


def canonical(text: str) -> str:
    """A normal form (sorted keys, non-zero values only), so equal settings hash the same.

    A switch that changes nothing is left out: batch= without any transform, meanfill= without
    one that moves areas in from outside (rotate, translate, crop).
    """
    values = parse_augment(text)
    if not any(values[k] for k in TRANSFORMS):
        values["batch"] = 0
    if not any(values[k] for k in MOVING):
        values["meanfill"] = 0
    return ",".join(f"{k}={values[k]:g}" for k in sorted(values) if values[k])

"""Architecture specs: parsing and validation of CNN layer lists, layer names, output shapes.

Pure Python (no torch) so that configs can be validated, hashed and described without
building a model. The models package turns a validated spec into modules.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError

ACTIVATIONS = ("relu", "gelu", "tanh", "sigmoid", "none")
_ACTIVATION_ALIASES = {"identity": "none", "linear": "none", "null": "none", "": "none"}
POOLS = ("max", "avg", "adaptive_avg")
HEADS = ("class_head", "aux_head")
SINGLE_HEAD = "head"  # single layout: num_classes + m outputs, the last m are the ghost logits

_CONV_KEYS = {
    "name",
    "type",
    "out_channels",
    "kernel_size",
    "stride",
    "padding",
    "dilation",
    "bias",
    "activation",
    "pool",
}
_LINEAR_KEYS = {"name", "type", "out_features", "activation", "bias"}
_POOL_KEYS = {"type", "kernel_size", "stride", "padding", "output_size"}

DEFAULT_CNN_CONVS: tuple[dict[str, Any], ...] = (
    {"name": "conv1", "type": "conv2d", "out_channels": 32, "padding": 1, "pool": {"type": "max"}},
    {"name": "conv2", "type": "conv2d", "out_channels": 64, "padding": 1, "pool": {"type": "max"}},
)


def _pos_int(flag: str, key: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{flag} {key}", value, f"expected an integer >= {minimum}")
    return value


def _pair(flag: str, key: str, value: Any, minimum: int) -> int | tuple[int, int]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ConfigError(f"{flag} {key}", value, "expected an integer or a pair [h, w]")
        return (_pos_int(flag, key, value[0], minimum), _pos_int(flag, key, value[1], minimum))
    return _pos_int(flag, key, value, minimum)


def _activation(flag: str, value: Any) -> str:
    act = "none" if value is None else str(value).strip().lower()
    act = _ACTIVATION_ALIASES.get(act, act)
    if act not in ACTIVATIONS:
        raise ConfigError(f"{flag} activation", value, f"allowed: {', '.join(ACTIVATIONS)}")
    return act


def _normalize_pool(flag: str, pool: Any) -> dict[str, Any] | None:
    if pool is None:
        return None
    if isinstance(pool, str):
        pool = {"type": pool}
    if not isinstance(pool, dict):
        raise ConfigError(f"{flag} pool", pool, 'expected an object like {"type": "max"}')
    unknown = set(pool) - _POOL_KEYS
    if unknown:
        raise ConfigError(f"{flag} pool", sorted(unknown)[0], f"allowed keys: {sorted(_POOL_KEYS)}")
    kind = str(pool.get("type", "max")).lower()
    kind = {"maxpool": "max", "avgpool": "avg", "adaptive": "adaptive_avg"}.get(kind, kind)
    if kind not in POOLS:
        raise ConfigError(f"{flag} pool type", pool.get("type"), f"allowed: {', '.join(POOLS)}")
    if kind == "adaptive_avg":
        if "output_size" not in pool:
            raise ConfigError(f"{flag} pool output_size", None, "required for adaptive_avg")
        return {"type": kind, "output_size": _pair(flag, "output_size", pool["output_size"], 1)}
    k = _pair(flag, "pool kernel_size", pool.get("kernel_size", 2), 1)
    return {
        "type": kind,
        "kernel_size": k,
        "stride": _pair(flag, "pool stride", pool.get("stride", k), 1),
        "padding": _pair(flag, "pool padding", pool.get("padding", 0), 0),
    }


def normalize_cnn_spec(spec: Any, flag: str) -> list[dict[str, Any]]:
    """Validate a CNN feature spec (list of layer dicts) and fill in every default."""
    if not isinstance(spec, list) or not spec:
        raise ConfigError(flag, spec, "expected a non-empty JSON list of layer objects")
    out: list[dict[str, Any]] = []
    names: set[str] = set()
    seen_linear = False
    for i, entry in enumerate(spec):
        where = f"{flag}[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(where, entry, "expected a JSON object")
        kind = str(entry.get("type", "")).lower()
        kind = "conv2d" if kind == "conv" else kind
        if kind not in ("conv2d", "linear"):
            raise ConfigError(f"{where} type", entry.get("type"), "allowed: conv2d (conv), linear")
        default_name = f"conv{i + 1}" if kind == "conv2d" else f"fc{i + 1}"
        name = str(entry.get("name", default_name))
        if not name.isidentifier() or name in HEADS or name in names or name == "all":
            raise ConfigError(
                f"{where} name", name, "names must be unique identifiers, not a head or 'all'"
            )
        names.add(name)
        allowed = _CONV_KEYS if kind == "conv2d" else _LINEAR_KEYS
        unknown = set(entry) - allowed
        if unknown:
            raise ConfigError(f"{where}", sorted(unknown)[0], f"allowed keys: {sorted(allowed)}")
        bias = entry.get("bias", True)
        if not isinstance(bias, bool):
            raise ConfigError(f"{where} bias", bias, "expected true or false")
        if kind == "conv2d":
            if seen_linear:
                raise ConfigError(where, kind, "conv2d layers must come before linear layers")
            if "out_channels" not in entry:
                raise ConfigError(f"{where} out_channels", None, "required for conv2d")
            out.append(
                {
                    "name": name,
                    "type": "conv2d",
                    "out_channels": _pos_int(where, "out_channels", entry["out_channels"]),
                    "kernel_size": _pair(where, "kernel_size", entry.get("kernel_size", 3), 1),
                    "stride": _pair(where, "stride", entry.get("stride", 1), 1),
                    "padding": _pair(where, "padding", entry.get("padding", 0), 0),
                    "dilation": _pair(where, "dilation", entry.get("dilation", 1), 1),
                    "bias": bias,
                    "activation": _activation(where, entry.get("activation", "relu")),
                    "pool": _normalize_pool(where, entry.get("pool")),
                }
            )
        else:
            seen_linear = True
            if "out_features" not in entry:
                raise ConfigError(f"{where} out_features", None, "required for linear")
            out.append(
                {
                    "name": name,
                    "type": "linear",
                    "out_features": _pos_int(where, "out_features", entry["out_features"]),
                    "bias": bias,
                    "activation": _activation(where, entry.get("activation", "relu")),
                }
            )
    return out


def parse_json_spec(text: str, flag: str) -> Any:
    """Parse a JSON string; errors name the flag and the JSON problem."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            flag, _short(text), f"not valid JSON ({exc.msg} at char {exc.pos})"
        ) from None


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def default_cnn_spec(hidden_dims: Sequence[int]) -> list[dict[str, Any]]:
    """The reference's default CNN: two conv+maxpool blocks, then fc1 of width hidden_dims[-1]."""
    spec: list[dict[str, Any]] = [dict(c) for c in DEFAULT_CNN_CONVS]
    spec.append({"name": "fc1", "type": "linear", "out_features": int(hidden_dims[-1])})
    return normalize_cnn_spec(spec, "default cnn")


def _out_len(size: int, k: int, s: int, p: int, d: int = 1) -> int:
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


def _hw(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def cnn_shapes(
    spec: list[dict[str, Any]], in_shape: tuple[int, int, int], flag: str
) -> list[tuple[int, ...]]:
    """Output shape of every layer of a normalised spec (after its activation and pool).

    Raises ConfigError if a layer would produce an empty map. Adaptive pools set the output size
    directly (the reference got this wrong).
    """
    c, h, w = in_shape
    shapes: list[tuple[int, ...]] = []
    for entry in spec:
        if entry["type"] == "conv2d":
            (kh, kw), (sh, sw) = _hw(entry["kernel_size"]), _hw(entry["stride"])
            (ph, pw), (dh, dw) = _hw(entry["padding"]), _hw(entry["dilation"])
            c, h, w = (
                entry["out_channels"],
                _out_len(h, kh, sh, ph, dh),
                _out_len(w, kw, sw, pw, dw),
            )
            pool = entry["pool"]
            if pool is not None and h > 0 and w > 0:
                if pool["type"] == "adaptive_avg":
                    h, w = _hw(pool["output_size"])
                else:
                    (kh, kw), (sh, sw) = _hw(pool["kernel_size"]), _hw(pool["stride"])
                    ph, pw = _hw(pool["padding"])
                    if ph * 2 > kh or pw * 2 > kw:
                        raise ConfigError(f"{flag} {entry['name']} pool padding", ph, "<= k/2")
                    h, w = _out_len(h, kh, sh, ph), _out_len(w, kw, sw, pw)
            if h <= 0 or w <= 0:
                raise ConfigError(
                    f"{flag} {entry['name']}", f"{c}x{h}x{w}", "layer output would be empty"
                )
            shapes.append((c, h, w))
        else:
            shapes.append((entry["out_features"],))
    return shapes


def feature_dim(shapes: list[tuple[int, ...]]) -> int:
    """Width of the features the heads read: the last layer's output, flattened."""
    n = 1
    for d in shapes[-1]:
        n *= d
    return n


def feature_layer_names(
    model_type: str, hidden_dims: Sequence[int], spec: list[dict[str, Any]] | None
) -> list[str]:
    """Names of the feature layers: fc1..fcN for an MLP, the spec's names for a CNN."""
    if model_type == "mlp":
        return [f"fc{i + 1}" for i in range(len(hidden_dims))]
    spec = spec if spec is not None else default_cnn_spec(hidden_dims)
    return [e["name"] for e in spec]


def layer_names(
    model_type: str,
    hidden_dims: Sequence[int],
    spec: list[dict[str, Any]] | None,
    head_layout: str = "split",
) -> list[str]:
    """All layer names in order: feature layers, then class_head and aux_head (split layout)
    or the one `head` (single layout)."""
    heads = HEADS if head_layout == "split" else (SINGLE_HEAD,)
    return [*feature_layer_names(model_type, hidden_dims, spec), *heads]

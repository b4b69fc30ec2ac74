"""The registered methods and their parameters, checked against one declaration each.

A method's parameters are the keyword-only parameters of its `Distiller.__init__`, and what each
accepts is its type annotation (bool, int, float, str, Literal[...] for a fixed set of names,
Sequence[int] or Sequence[str] for lists, Annotated[str, "form"] for a documented text form,
unions of these and None). `check_method_params` reads them, so a new parameter is checked as
soon as it is declared; there is no second table to keep in step. This module never imports
`kd.config`, which imports it to validate a KDConfig's method parameters.
"""

from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Distiller, DistillerConfigError, Shapes
from .correlation import CC, KDSVD
from .crd import CRD, CRDKD
from .features import AT, FT, FitNets
from .info import PKT, VID
from .layers import FeatureKD
from .logits import DKD, KD, KDDOT, LogitStd
from .ofd import OFD
from .relations import NST, RKD, SP
from .reviewkd import ReviewKD
from .simkd import SimKD
from .stagewise import AB, FSP

METHODS: dict[str, type[Distiller]] = {
    cls.name: cls
    for cls in (
        KD,
        LogitStd,
        FitNets,
        AT,
        FT,
        RKD,
        NST,
        SP,
        DKD,
        SimKD,
        FeatureKD,
        PKT,
        CC,
        VID,
        KDSVD,
        OFD,
        ReviewKD,
        AB,
        FSP,
        CRD,
        CRDKD,
        KDDOT,
    )
}


# ---------------------------------------------------------------------------------------------
# Declarations: what one annotation accepts, and how to say it
# ---------------------------------------------------------------------------------------------

_PLURAL = {int: "integers", float: "numbers", str: "names", bool: "true/false values"}


def _args(tp: Any) -> tuple[Any, ...]:
    return typing.get_args(tp)


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def accepts(tp: Any, value: Any) -> bool:
    """Whether `value` (as JSON or TOML gives it) is of the declared type `tp`: a bool is only
    a bool, an int never a bool, a float any finite number, a list of the element type."""
    origin = typing.get_origin(tp)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if tp is str:
        return isinstance(value, str)
    if origin is typing.Literal:
        return any(type(value) is type(a) and value == a for a in _args(tp))
    if origin is typing.Annotated:
        return accepts(_args(tp)[0], value)
    if _is_union(tp):
        return any(accepts(a, value) for a in _args(tp))
    if origin is Sequence:
        (item,) = _args(tp)
        return isinstance(value, list | tuple) and all(accepts(item, v) for v in value)
    raise TypeError(f"no check for the annotation {tp!r}")


def describe(tp: Any) -> str:
    """What a declared type accepts, in words (None, the default's absence, left out);
    TypeError for an annotation `accepts` cannot check."""
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a finite number"
    if tp is str:
        return "a name (text)"
    if origin is typing.Literal:
        return "one of " + ", ".join(map(str, _args(tp)))
    if origin is typing.Annotated:
        describe(_args(tp)[0])
        form = next((m for m in _args(tp)[1:] if isinstance(m, str)), None)
        return form or describe(_args(tp)[0])
    if _is_union(tp):
        return " or ".join(describe(a) for a in _args(tp) if a is not type(None))
    if origin is Sequence:
        (item,) = _args(tp)
        describe(item)
        if item in _PLURAL:
            return f"a list of {_PLURAL[item]}"
        return f"a list, each {describe(item)}"
    raise TypeError(f"no check for the annotation {tp!r}")


@functools.cache
def declared(cls: type[Distiller]) -> dict[str, tuple[Any, Any]]:
    """name -> (annotation, default) of a method's keyword-only parameters; TypeError for a
    parameter without an annotation `accepts` can check (a test holds every method to it)."""
    hints = typing.get_type_hints(cls.__init__, include_extras=True)
    out = {}
    for name, p in inspect.signature(cls.__init__).parameters.items():
        if p.kind is not inspect.Parameter.KEYWORD_ONLY:
            continue
        if name not in hints:
            raise TypeError(f"{cls.__name__}.__init__: parameter {name!r} has no annotation")
        describe(hints[name])
        out[name] = (hints[name], p.default)
    return out


def parameter_names(method: str) -> list[str]:
    """The parameters method `method` accepts (everything after the two shape mappings)."""
    return list(declared(METHODS[method]))


def check_method_params(method: str, params: Mapping[str, object]) -> None:
    """DistillerConfigError (one line: key, value, what is allowed) for a parameter that
    `method` does not declare or a value not of its declared type. Values are checked, not
    ranges or combinations: building the distiller (`create_distiller`) checks those."""
    if method not in METHODS:
        raise DistillerConfigError("method", method, f"one of {', '.join(sorted(METHODS))}")
    table = declared(METHODS[method])
    for key, value in params.items():
        if key not in table:
            raise DistillerConfigError(
                key, value, f"not a parameter of {method!r}; allowed: {', '.join(table)}"
            )
        tp = table[key][0]
        if not accepts(tp, value):
            raise DistillerConfigError(key, value, f"{method} expects {describe(tp)}")


def explicit_params(method: str, params: Mapping[str, object]) -> dict[str, object]:
    """`params`, type-checked, without those equal to the method's defaults, so that spelling
    a default out does not make a second experiment (the CLI and sweep specs pass configs
    through this)."""
    if method not in METHODS:
        return dict(params)
    check_method_params(method, params)
    table = declared(METHODS[method])
    return {
        k: v
        for k, v in params.items()
        if table[k][1] is inspect.Parameter.empty or table[k][1] != v
    }


def create_distiller(name: str, s_shapes: Shapes, t_shapes: Shapes, **params: object) -> Distiller:
    """Build the registered method `name` for models with these per-sample tap shapes.

    ValueError (a DistillerConfigError) for an unknown method, an unknown parameter, a value
    of the wrong type, a missing tap or a tap of the wrong rank, naming what is wrong and what
    is allowed."""
    check_method_params(name, params)
    return METHODS[name](s_shapes, t_shapes, **params)

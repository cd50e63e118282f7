"""Binding call arguments to a signature (a tuple of `Arg`), with located errors."""
from __future__ import annotations

from typing import Any

from ..compiler.limits import fmt_num
from ..compiler.ops.registry import REQUIRED, Arg
from .diagnostics import Span, UserError, did_you_mean

_KIND_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false",
               "str": "a string", "padding": "an integer, \"same\" or \"valid\"",
               "int2": "an integer or a pair [a, b]", "ints": "a list of integers",
               "name": "a name", "floats": "a list of numbers"}


def describe(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, (int, float)):
        return fmt_num(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(describe(x) for x in v) + "]"
    return getattr(v, "describe", lambda: type(v).__name__)()


def coerce(value: Any, kind: str) -> Any:
    """value converted to `kind`, or raise TypeError."""
    isint = isinstance(value, int) and not isinstance(value, bool)
    if kind == "any":
        return value
    if kind == "int" and isint:
        return value
    if kind == "float" and (isint or isinstance(value, float)) and not isinstance(value, bool):
        return float(value)                  # OverflowError past 1e308: bind reports it
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind in ("str", "name") and isinstance(value, str):
        return value
    if kind == "padding":
        if isint or (isinstance(value, str) and value in ("same", "valid")):
            return value
        if isinstance(value, list) and len(value) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in value):
            return tuple(value)
    if kind == "int2":
        if isint:
            return (value, value)
        if isinstance(value, (list, tuple)) and len(value) == 2 and all(
                isinstance(x, int) and not isinstance(x, bool) for x in value):
            return tuple(value)
    if kind == "ints" and isinstance(value, list) and all(
            isinstance(x, int) and not isinstance(x, bool) for x in value):
        return tuple(value)
    if kind == "floats" and isinstance(value, list) and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in value):
        return tuple(float(x) for x in value)
    raise TypeError(kind)


def bind(sig: tuple[Arg, ...], positional: list[tuple[Any, Span]],
         keyword: dict[str, tuple[Any, Span]], what: str, span: Span) -> dict[str, Any]:
    """Match positional and keyword values to `sig`, fill defaults, check kinds."""
    out: dict[str, Any] = {}
    spans: dict[str, Span] = {}
    if len(positional) > len(sig):
        extra_span = positional[len(sig)][1]
        names = ", ".join(a.name for a in sig) or "no arguments"
        raise UserError(f"{what} takes {len(sig)} positional argument"
                        f"{'' if len(sig) == 1 else 's'} ({names}), got {len(positional)}",
                        extra_span)
    for a, (v, s) in zip(sig, positional):
        out[a.name], spans[a.name] = v, s
    names = [a.name for a in sig]
    for k, (v, s) in keyword.items():
        if k not in names:
            hint = did_you_mean(k, names) or (
                f"{what} takes: {', '.join(names)}" if names else f"{what} takes no arguments")
            raise UserError(f"{what} has no argument '{k}'", s, hint=hint)
        if k in out:
            raise UserError(f"{what}: argument '{k}' given twice", s)
        out[k], spans[k] = v, s
    for a in sig:
        if a.name not in out:
            if a.default is REQUIRED:
                raise UserError(f"{what} needs the argument '{a.name}'"
                                + (f" ({a.doc})" if a.doc else ""), span)
            out[a.name] = a.default
            continue
        try:
            out[a.name] = coerce(out[a.name], a.kind)
        except OverflowError:
            raise UserError(f"{what}: '{a.name}' is {describe(out[a.name])}, too large for a "
                            "number (at most about 1.8e308)", spans[a.name]) from None
        except TypeError:
            raise UserError(f"{what}: '{a.name}' must be {_KIND_NAMES.get(a.kind, a.kind)}, "
                            f"got {describe(out[a.name])}", spans[a.name]) from None
    return {a.name: out[a.name] for a in sig}

"""What `.dls` expressions evaluate to besides plain numbers, strings and lists."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..compiler.ir import Value
from .diagnostics import Span


@dataclass
class Tensor:
    """A value in the graph being built, with where it came from (for diagnostics)."""

    value: Value
    origin: Span | None
    what: str                              # e.g. "the output of conv(64, 3)"

    def describe(self) -> str:
        return f"a tensor {self.value.type}"


@dataclass
class Step:
    """A layer, block or graph form waiting for its input: `apply(x)` builds it."""

    name: str                              # for messages: "conv(64, 3)", "Basic(128)"
    span: Span
    apply: Callable[[Tensor], Tensor]

    def describe(self) -> str:
        return f"the layer {self.name}"


@dataclass
class Symbol:
    """A bare name in the `train` section (`monitor=val_loss`, `batch full`)."""

    name: str

    def describe(self) -> str:
        return self.name

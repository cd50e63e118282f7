"""The AST of a `.dls` file: dataclasses, each carrying the span it was parsed from."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .diagnostics import Span


@dataclass
class Node:
    span: Span


# -- expressions -------------------------------------------------------------------------------

@dataclass
class Name(Node):
    id: str


@dataclass
class In(Node):
    """`in`: the tensor flowing into the current step (`in.c`, `in.h`, `in.w`)."""


@dataclass
class Literal(Node):
    value: Any                      # int, float, str or bool


@dataclass
class ListExpr(Node):
    items: list[Node]


@dataclass
class Arg(Node):
    name: str | None                # None for a positional argument
    value: Node


@dataclass
class Group(Node):
    """`( args )`: a parenthesised expression, or an argument list in `train`."""

    args: list[Arg]


@dataclass
class Attr(Node):
    obj: Node
    name: str


@dataclass
class Call(Node):
    name: str
    name_span: Span
    args: list[Arg]
    body: list[Node] | None = None  # `dense(4) { ... }`, `repeat(3) { ... }`


@dataclass
class Chain(Node):
    """`a -> b -> c`: feed each step's output into the next."""

    steps: list[Node]


@dataclass
class IfElse(Node):
    then: Node
    cond: Node
    other: Node


@dataclass
class BinOp(Node):
    op: str                         # + - * / // % == != < <= > >= and or
    left: Node
    right: Node


@dataclass
class UnOp(Node):
    op: str                         # - not
    operand: Node


@dataclass
class Residual(Node):
    body: list[Node]
    shortcut: list[Node] | None = None
    shortcut_cond: Node | None = None
    shortcut_span: Span | None = None


@dataclass
class Concat(Node):
    branches: list[list[Node]]
    branch_spans: list[Span] = field(default_factory=list)


# -- statements --------------------------------------------------------------------------------

@dataclass
class Input(Node):
    name: str
    dtype: str
    dims: list[Node]                # expressions; a bare unknown name is a symbolic size
    type_span: Span


@dataclass
class Output(Node):
    names: list[tuple[str, Span]]


@dataclass
class Assign(Node):
    name: str
    value: Node


@dataclass
class ExprStmt(Node):
    expr: Node


# -- top level ---------------------------------------------------------------------------------

@dataclass
class Param(Node):
    name: str
    default: Node | None


@dataclass
class BlockDef(Node):
    kind: str                       # "block" or "model"
    name: str
    params: list[Param]
    body: list[Node]


@dataclass
class Setting(Node):
    key: str
    key_span: Span
    value: Node | None


@dataclass
class TrainDef(Node):
    settings: list[Setting]


@dataclass
class Import(Node):
    path: str


@dataclass
class Module(Node):
    imports: list[Import]
    blocks: list[BlockDef]
    models: list[BlockDef]
    trains: list[TrainDef]

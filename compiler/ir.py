"""The graph IR: typed SSA over tensors, and its stable text form.

A `Graph` holds inputs, named state (parameters, buffers, optimizer slots),
nodes in execution order, outputs, and — in a train graph — the state updates
(`@name <- %value`).  Values are printed with short names assigned at print
time (`%1`, `%2`, ...), so the text is deterministic and serves as the golden
oracle (`dlc compile --emit ir`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Dim = int | str          # a static size, or a symbol such as "N" or "H"


def numel(shape) -> int:
    """The element count of a concrete shape (1 for a scalar)."""
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class TensorType:
    shape: tuple[Dim, ...]
    dtype: str = "f32"

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"

    @property
    def rank(self) -> int:
        return len(self.shape)

    def numel(self) -> int | None:
        """The element count, or None when a dimension is symbolic."""
        n = 1
        for d in self.shape:
            if not isinstance(d, int):
                return None
            n *= d
        return n

    def per_sample(self) -> int | None:
        """Element count of one sample (all dims but the leading batch)."""
        return TensorType(self.shape[1:], self.dtype).numel()


@dataclass(frozen=True)
class StateSpec:
    """A named piece of persistent state: a parameter, a buffer or an optimizer slot."""

    name: str
    type: TensorType
    init: str = "zeros"           # an init rule understood by compiler.init
    trainable: bool = True        # False for buffers (running stats) and optimizer slots
    kind: str = "param"           # param | buffer | slot


class Value:
    """One SSA value: a graph input, a state reference, or a node output."""

    __slots__ = ("type", "node", "index", "state", "input_name")

    def __init__(self, type: TensorType, node: "Node | None" = None, index: int = 0,
                 state: StateSpec | None = None, input_name: str | None = None):
        self.type = type
        self.node = node
        self.index = index
        self.state = state
        self.input_name = input_name

    def __repr__(self) -> str:
        if self.state is not None:
            return f"<@{self.state.name}: {self.type}>"
        if self.input_name is not None:
            return f"<%{self.input_name}: {self.type}>"
        return f"<{self.node.op}#{self.index}: {self.type}>"


@dataclass(eq=False)
class Node:
    op: str
    inputs: list[Value]
    attrs: dict[str, Any]
    outputs: list[Value] = field(default_factory=list)
    loc: Any = None               # a spec.diagnostics.Span, or None for generated nodes
    scope: str = ""               # the layer instance this node belongs to ("block1.conv2")


@dataclass(eq=False)
class Graph:
    name: str
    inputs: list[Value] = field(default_factory=list)
    state: dict[str, Value] = field(default_factory=dict)     # name -> state Value, in creation order
    nodes: list[Node] = field(default_factory=list)
    outputs: list[Value] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    updates: dict[str, Value] = field(default_factory=dict)   # state name -> new value (train graphs)
    grads: dict[str, Value] = field(default_factory=dict)     # param name -> gradient (train graphs)
    precision: str = "f32"       # f32 | bf16: what the Triton backend feeds matmul/conv units
    input_locs: dict[str, Any] = field(default_factory=dict)  # input name -> where it is declared
    values: dict[str, Value] = field(default_factory=dict)    # the model's named values (`a = ...`)

    # -- construction -------------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(type, input_name=name)
        self.inputs.append(v)
        return v

    def add_state(self, spec: StateSpec) -> Value:
        if spec.name in self.state:
            raise ValueError(f"duplicate state name {spec.name!r}")
        v = Value(spec.type, state=spec)
        self.state[spec.name] = v
        return v

    def input(self, name: str) -> Value:
        for v in self.inputs:
            if v.input_name == name:
                return v
        raise KeyError(name)

    def params(self) -> list[StateSpec]:
        return [v.state for v in self.state.values() if v.state.kind == "param"]


# -- printing ----------------------------------------------------------------------------------

def _fmt_attr(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (tuple, list)):
        return "[" + ",".join(_fmt_attr(x) for x in v) + "]"
    if isinstance(v, str):
        return v
    if v is None:
        return "none"
    return str(v)


def format_attrs(attrs: dict[str, Any]) -> str:
    if not attrs:
        return ""
    return " {" + ", ".join(f"{k}={_fmt_attr(attrs[k])}" for k in sorted(attrs)) + "}"


def print_graph(g: Graph, *, locs: bool = True) -> str:
    """The stable text form: one node per line, typed, with the source location as a comment."""
    names: dict[int, str] = {}

    def name(v: Value) -> str:
        if v.state is not None:
            return "@" + v.state.name
        return names.get(id(v), "%<undefined>")        # only in a malformed graph

    for v in g.inputs:
        names[id(v)] = "%" + v.input_name
    counter = 0
    lines = []
    args = ", ".join(f"{name(v)}: {v.type}" for v in g.inputs)
    lines.append(f"graph {g.name}({args}) {{")
    for node in g.nodes:
        outs = []
        for o in node.outputs:
            counter += 1
            names[id(o)] = f"%{counter}"
            outs.append(f"{names[id(o)]}: {o.type}")
        lhs = ", ".join(outs)
        ins = ", ".join(name(v) for v in node.inputs)
        line = f"  {lhs} = {node.op}({ins}){format_attrs(node.attrs)}"
        comment = []
        if node.scope:
            comment.append(node.scope)
        if locs and node.loc is not None:
            comment.append(node.loc.short)
        if comment:
            line = f"{line:<72}  # {'  '.join(comment)}"
        lines.append(line.rstrip())
    for sname, v in g.updates.items():
        lines.append(f"  @{sname} <- {name(v)}")
    outs = ", ".join(name(v) for v in g.outputs)
    lines.append(f"  return {outs}".rstrip())          # the apply graph returns nothing
    lines.append("}")
    return "\n".join(lines) + "\n"

"""The op registry: each op declares, in one class, everything dlc knows about it.

An `Op` subclass gives, beside each other:
  * `layer` / `args`  — its name and signature in the `.dls` language (None: not a layer),
  * `infer`           — the shape rule (raise `ShapeError` with a readable message),
  * `state`           — the parameters/buffers an instance creates, with their init rules,
  * `flops`           — floating-point operations per sample (a multiply-add counts 2),
  * `forward`         — the reference implementation, as PyTorch calls,
  * `vjp`             — the vector-Jacobian product, emitted as IR nodes (autodiff is a pass),
  * `lower_train` / `lower_eval` — optional rewrites for training vs. inference mode.

`register` adds an op instance; `get` looks one up by IR name, `layer` by language name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..ir import Graph, Node, StateSpec, TensorType, Value

REQUIRED = object()


class ShapeError(Exception):
    """An op cannot accept these input types; the message is shown to the user.

    `Builder.emit` sets `loc` to the span of the node being built, so whoever catches it
    can report a located error (spec.diagnostics.UserError) instead of an internal one."""

    loc = None


@dataclass(frozen=True)
class Arg:
    """One argument of a layer in the language: its name, default and expected kind.

    kind is one of: int, float, bool, str, padding (int | "same" | "valid"), int2 (int or [a, b]),
    any.
    """

    name: str
    default: Any = REQUIRED
    kind: str = "any"
    doc: str = ""


@dataclass(frozen=True)
class LocalState:
    """State an op instance creates, named relative to its layer (`weight`, `running_mean`)."""

    name: str
    shape: tuple[int, ...]
    init: str
    trainable: bool = True
    kind: str = "param"


class Op:
    name: str = ""
    layer: str | None = None            # the language's name for it, if users may call it
    args: tuple[Arg, ...] = ()          # language signature (bound into attrs)
    n_inputs: int | None = 1            # data inputs from the chain; None: variadic (add, concat)
    differentiable: bool = True         # False: outputs are constants to autodiff (masks, ones)
    random: bool = False                # draws from the step's random stream (dropout, noise)
    samples: bool = False               # a torch step drawing from ctx.generator (assign_targets)
    like: int | None = None             # one output typed like input `like` (the default infer)
    doc: str = ""
    # How it lowers to Triton (compiler/plan.py): "elementwise" (`triton_ew` writes it),
    # "remat" (elementwise without tensor loads, recomputed where used), "view" (no kernel),
    # the template family that anchors a kernel (compiler/templates/), "torch" (no kernel:
    # its reference forward runs as a step of its own, compiler/torch_call.py), or None
    # (the triton backend refuses it).
    triton: str | None = None
    triton_prologue: tuple[int, ...] = ()   # anchor inputs that accept an inlined chain
    triton_epilogue: bool = False           # anchor output 0 goes through the epilogue hook
    triton_loads: bool = True               # False: inputs give only a shape (ones_like)

    def attrs(self, bound: dict[str, Any], in_types: list[TensorType]) -> dict[str, Any]:
        """Turn bound language arguments into node attributes (defaults filled in)."""
        return dict(bound)

    def check(self, attrs: dict[str, Any]) -> str | None:
        """What is wrong with these attribute values alone, or None.  The train section
        calls it for its loss when it is read, so `dlc check` reports the value there."""
        return None

    def infer(self, ins: list[TensorType], attrs: dict[str, Any]) -> list[TensorType]:
        if self.like is None:
            raise NotImplementedError(f"op {self.name!r} has no shape rule")
        return [ins[self.like]]

    def state(self, ins: list[TensorType], attrs: dict[str, Any]) -> list[LocalState]:
        return []

    def flops(self, ins: list[TensorType], outs: list[TensorType], attrs: dict[str, Any]) -> int:
        return 0

    def forward(self, ins: list, attrs: dict[str, Any], ctx: "ExecContext") -> tuple:
        raise NotImplementedError

    def vjp(self, b: "Builder", node: Node, gouts: list[Value | None],
            needs: list[bool]) -> list[Value | None]:
        raise NotImplementedError(f"op {self.name!r} has no vector-Jacobian product")

    def triton_ew(self, e: "EwEmitter", ins: list[str], attrs: dict[str, Any]) -> list[str]:
        """Elementwise lowering: Triton expressions for the outputs, given the inputs' values
        as variable names; `e.let(expr)` names an intermediate (compiler/render.py)."""
        raise NotImplementedError(f"op {self.name!r} has no elementwise lowering")

    def lower_train(self, b: "Builder", node: Node, ins: list[Value]) -> list[Value] | None:
        """Rewrite for the train graph; None keeps the node as it is."""
        return None

    def lower_eval(self, b: "Builder", node: Node, ins: list[Value]) -> list[Value] | None:
        """Rewrite for the inference graph; None keeps the node as it is."""
        return None


class FirstInputGrad(Op):
    """An op whose gradient flows to input 0 only, through one backward op
    `<name>_bwd(gy, *inputs)` with the same attributes (losses against targets, RoI pooling)."""

    def vjp(self, b, node, gouts, needs):
        gx = b.emit1(self.name + "_bwd", [gouts[0], *node.inputs], node.attrs)
        return [gx] + [None] * (len(node.inputs) - 1)


class FirstInputGradBwd(Op):
    """The backward op of a `FirstInputGrad` op: (gy, *inputs) -> a gradient shaped like x."""

    n_inputs = 3
    like = 1


@dataclass
class ExecContext:
    """What a reference forward may need beyond its inputs."""

    training: bool = False
    generator: Any = None               # torch.Generator for dropout masks


_OPS: dict[str, Op] = {}
_LAYERS: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    op = cls()
    assert op.name and op.name not in _OPS, op.name
    _OPS[op.name] = op
    if op.layer:
        assert op.layer not in _LAYERS, op.layer
        _LAYERS[op.layer] = op
    return cls


def get(name: str) -> Op:
    return _OPS[name]


def layer(name: str) -> Op | None:
    return _LAYERS.get(name)


def layer_names() -> list[str]:
    return sorted(_LAYERS)


def all_ops() -> dict[str, Op]:
    return dict(_OPS)


class Builder:
    """Appends nodes to a graph, inferring their output types through the registry."""

    def __init__(self, graph: Graph, loc=None, scope: str = ""):
        self.graph = graph
        self.loc = loc
        self.scope = scope

    def emit(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None,
             *, loc=None, scope: str | None = None) -> list[Value]:
        attrs = dict(attrs or {})
        impl = _OPS[op]
        loc = loc if loc is not None else self.loc
        try:
            out_types = impl.infer([v.type for v in inputs], attrs)
        except ShapeError as e:
            e.loc = e.loc or loc
            raise
        node = Node(op, list(inputs), attrs, loc=loc,
                    scope=self.scope if scope is None else scope)
        node.outputs = [Value(t, node, i) for i, t in enumerate(out_types)]
        self.graph.nodes.append(node)
        return node.outputs

    def emit1(self, op: str, inputs: list[Value], attrs: dict[str, Any] | None = None,
              **kw) -> Value:
        outs = self.emit(op, inputs, attrs, **kw)
        assert len(outs) == 1, op
        return outs[0]

    def state(self, spec: StateSpec) -> Value:
        return self.graph.add_state(spec)


def same_type(t: TensorType) -> list[TensorType]:
    return [t]


def sum_grads(b: Builder, grads: list[Value]) -> Value:
    acc = grads[0]
    for g in grads[1:]:
        acc = b.emit1("add", [acc, g])
    return acc

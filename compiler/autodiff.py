"""Reverse-mode autodiff as a compiler pass: walk the nodes backwards, ask each op's
`vjp` rule for its input gradients, and emit them as IR nodes into the same graph."""
from __future__ import annotations

from .ir import Graph, Value
from .ops import Builder, get
from .ops.registry import sum_grads


def requires_grad(g: Graph, wrt: list[Value]) -> set[int]:
    """ids of values that depend on any of `wrt` (only those need gradients)."""
    live = {id(v) for v in wrt}
    for node in g.nodes:
        if get(node.op).differentiable and any(id(v) in live for v in node.inputs):
            live.update(id(o) for o in node.outputs)
    return live


def backward(g: Graph, loss: Value, wrt: list[Value]) -> dict[int, Value]:
    """Append d(loss)/d(v) for every v in `wrt` to g; returns {id(v): gradient value}."""
    forward_nodes = list(g.nodes)
    live = requires_grad(g, wrt)
    pending: dict[int, list[Value]] = {}
    b = Builder(g, scope="")
    seed = b.emit1("ones_like", [loss])
    pending[id(loss)] = [seed]

    def total(v: Value) -> Value | None:
        parts = pending.get(id(v))
        if not parts:
            return None
        if len(parts) > 1:
            pending[id(v)] = [sum_grads(b, parts)]
        return pending[id(v)][0]

    for node in reversed(forward_nodes):
        if not any(id(o) in live for o in node.outputs):
            continue
        gouts = [total(o) for o in node.outputs]
        if all(gy is None for gy in gouts):
            continue
        b.loc, b.scope = node.loc, node.scope
        needs = [id(v) in live for v in node.inputs]
        grads = get(node.op).vjp(b, node, gouts, needs)
        for v, gv, need in zip(node.inputs, grads, needs):
            if gv is not None and need:
                pending.setdefault(id(v), []).append(gv)
    b.loc, b.scope = None, ""
    result = {}
    for v in wrt:
        gv = total(v)
        if gv is None:                      # a parameter the loss does not depend on
            gv = b.emit1("zeros_like", [v])
        result[id(v)] = gv
    return result

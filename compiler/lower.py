"""Mode lowering: rewrite a model graph into its inference or training form.

Ops with mode-dependent behaviour (dropout, batch norm) declare `lower_train` /
`lower_eval`; every other node is copied as it is.  The result is a new graph
whose values are fresh, so one model graph can be lowered both ways.
"""
from __future__ import annotations

from .ir import Graph, Node, Value
from .ops import Builder, get


def copy_structure(src: Graph, name: str) -> tuple[Graph, dict[int, Value]]:
    """A new graph with src's inputs and state (same names) and no nodes; plus the value map."""
    dst = Graph(name)
    vmap: dict[int, Value] = {}
    for v in src.inputs:
        vmap[id(v)] = dst.add_input(v.input_name, v.type)
    for sname, v in src.state.items():
        vmap[id(v)] = dst.add_state(v.state)
    return dst, vmap


def lower(src: Graph, mode: str, name: str | None = None) -> Graph:
    """Rewrite `src` for mode 'train' or 'eval'."""
    assert mode in ("train", "eval")
    dst, vmap = copy_structure(src, name or src.name)
    for node in src.nodes:
        ins = [vmap[id(v)] for v in node.inputs]
        b = Builder(dst, loc=node.loc, scope=node.scope)
        op = get(node.op)
        hook = op.lower_train if mode == "train" else op.lower_eval
        outs = hook(b, node, ins)
        if outs is None:
            outs = b.emit(node.op, ins, node.attrs)
        for old, new in zip(node.outputs, outs):
            vmap[id(old)] = new
    dst.outputs = [vmap[id(v)] for v in src.outputs]
    dst.output_names = list(src.output_names)
    dst.values = {k: vmap[id(v)] for k, v in src.values.items() if id(v) in vmap}
    # state a lowering may add (e.g. running-stat updates) is recorded by the op's builder
    return dst


def live_nodes(g: Graph) -> list[Node]:
    """Nodes that contribute to the outputs or the state updates (dead-code elimination)."""
    needed: set[int] = set()
    stack = list(g.outputs) + list(g.updates.values())
    while stack:
        v = stack.pop()
        if v.node is None or id(v.node) in needed:
            continue
        needed.add(id(v.node))
        stack.extend(v.node.inputs)
    return [n for n in g.nodes if id(n) in needed]

"""The `verify` pass: every graph dlc builds is re-checked before it runs.

Values must be defined before use (graph inputs, state, or an earlier node's output),
and every node's output types must equal what its op's shape rule infers from its inputs
today.  A failure is a bug in a pass or an op, never a user error.
"""
from __future__ import annotations

from .ir import Graph, print_graph
from .ops import get


class IRError(Exception):
    """A malformed graph: a compiler bug."""


def verify(g: Graph) -> Graph:
    defined = {id(v) for v in g.inputs} | {id(v) for v in g.state.values()}
    for i, node in enumerate(g.nodes):
        for v in node.inputs:
            if id(v) not in defined:
                raise IRError(f"{g.name}: node {i} ({node.op}) uses a value defined later or "
                              f"not at all: {v!r}\n{print_graph(g, locs=False)}")
        inferred = get(node.op).infer([v.type for v in node.inputs], node.attrs)
        actual = [o.type for o in node.outputs]
        if inferred != actual:
            raise IRError(f"{g.name}: node {i} ({node.op}) has types "
                          f"{', '.join(map(str, actual))} but its shape rule gives "
                          f"{', '.join(map(str, inferred))}")
        defined.update(id(o) for o in node.outputs)
    for v in [*g.outputs, *g.updates.values()]:
        if id(v) not in defined:
            raise IRError(f"{g.name}: an output or update is never defined: {v!r}")
    for name, v in g.updates.items():
        if name not in g.state or g.state[name].type != v.type:
            raise IRError(f"{g.name}: update of @{name} does not match its state")
    return g

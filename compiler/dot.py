"""Graphviz pictures of a model graph (`dlc compile net.dls --emit dot`).

`to_dot(graph)` returns a `digraph`: one box per IR node, labelled with its layer
scope, its op with the shapes of the parameters it holds (`conv2d 64x3x3x3 + 64`)
and its output type; graph inputs are inverted houses, outputs are houses, and every
data edge carries the shape of the tensor that flows along it.  State tensors are not
drawn as nodes — they are summarised inside the node that uses them.  The text is
deterministic (graph order, stable ids n1, n2, ...), so it can be diffed and tested.

Render with `dot -Tsvg net.dot -o net.svg`, or let the CLI do it: `-o net.svg`.
"""
from __future__ import annotations

from .ir import Graph, Node, TensorType, Value

_STYLE_INPUT = 'shape=invhouse, style=filled, fillcolor="#dbeafe"'
_STYLE_OUTPUT = 'shape=house, style=filled, fillcolor="#dcfce7"'
_STYLE_OP = 'shape=box, style="rounded,filled", fillcolor="#f3f4f6"'
_STYLE_PARAM_OP = 'shape=box, style="rounded,filled", fillcolor="#fef3c7"'


def _quote(text: str) -> str:
    """A Graphviz double-quoted string; newlines become centred line breaks."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _shape(t: TensorType) -> str:
    return "[" + ",".join(str(d) for d in t.shape) + "]"


def _dims(t: TensorType) -> str:
    return "x".join(str(d) for d in t.shape) or "scalar"


def param_summary(node: Node) -> str:
    """The shapes of the parameters a node holds, and how many buffers: `64x3x3x3 + 64`."""
    params = [_dims(v.type) for v in node.inputs if v.state is not None and v.state.kind == "param"]
    buffers = sum(1 for v in node.inputs if v.state is not None and v.state.kind != "param")
    text = " + ".join(params)
    if buffers:
        text += f" ({buffers} buffer{'s' if buffers != 1 else ''})"
    return text.strip()


def node_label(node: Node) -> str:
    head = node.op
    params = param_summary(node)
    if params:
        head = f"{head} {params}"
    lines = [node.scope, head] if node.scope else [head]
    lines.append(", ".join(str(o.type) for o in node.outputs))
    return "\n".join(lines)


def data_edges(g: Graph) -> list[tuple[Value, Node | None, int]]:
    """Every tensor flowing along the graph: (value, consumer node or None for an output, index).

    State inputs are not edges; an output edge has consumer None and the output's index.
    """
    edges: list[tuple[Value, Node | None, int]] = []
    for node in g.nodes:
        for v in node.inputs:
            if v.state is None:
                edges.append((v, node, 0))
    for i, v in enumerate(g.outputs):
        edges.append((v, None, i))
    return edges


def to_dot(g: Graph) -> str:
    """The graph as Graphviz source text (deterministic)."""
    ids: dict[int, str] = {}                 # value -> the drawn node it comes from
    node_ids: dict[int, str] = {}
    lines = [f"digraph {_quote(g.name)} {{",
             "  rankdir=TB;",
             f"  label={_quote(g.name)}; labelloc=t; fontname=\"Helvetica\";",
             '  node [fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9, color="#6b7280"];']
    for i, v in enumerate(g.inputs):
        ids[id(v)] = f"in{i}"
        label = _quote(f"{v.input_name}\n{v.type}")
        lines.append(f"  in{i} [{_STYLE_INPUT}, label={label}];")
    for k, node in enumerate(g.nodes, 1):
        nid = node_ids[id(node)] = f"n{k}"
        for o in node.outputs:
            ids[id(o)] = nid
        style = _STYLE_PARAM_OP if param_summary(node) else _STYLE_OP
        lines.append(f"  {nid} [{style}, label={_quote(node_label(node))}];")
    for i, (name, v) in enumerate(zip(g.output_names, g.outputs)):
        label = _quote(f"{name}\n{v.type}")
        lines.append(f"  out{i} [{_STYLE_OUTPUT}, label={label}];")
    for v, consumer, index in data_edges(g):
        src = ids.get(id(v))
        if src is None:                     # a state tensor returned as an output: not drawn
            src = f"state{index}"
            lines.append(f"  {src} [shape=note, label={_quote(v.state.name)}];")
        dst = node_ids[id(consumer)] if consumer is not None else f"out{index}"
        label = _quote(" " + _shape(v.type))          # a space keeps the label off the line
        lines.append(f"  {src} -> {dst} [label={label}];")
    lines.append("}")
    return "\n".join(lines) + "\n"

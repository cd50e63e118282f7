"""Views of a compiled spec: summary, ir, ir-train, params, dot (text) and onnx (bytes)."""
from __future__ import annotations

from .ir import Graph, print_graph
from .ops import get

EMITS = ("summary", "ir", "ir-train", "params", "dot", "onnx")


def _n(x) -> str:
    return f"{x:,}" if isinstance(x, int) else str(x)


def mib(nbytes: int) -> str:
    """nbytes in MiB with two decimals, as f"{nbytes / 2**20:.2f}" prints it (round half to
    even), but exact for any int: no float overflow for a huge batch."""
    q, r = divmod(nbytes * 100, 2**20)
    if r > 2**19 or (r == 2**19 and q % 2):
        q += 1
    return f"{q // 100}.{q % 100:02d}"


def text_table(rows: list[list[str]], right: set[int]) -> list[str]:
    """Rows of cells as aligned text lines; columns in `right` are right-aligned."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        out.append("  ".join(cells).rstrip())
    return out


def node_params(g: Graph, node) -> int:
    return sum(v.type.numel() for v in node.inputs
               if v.state is not None and v.state.kind == "param")


def activation_bytes(node) -> int:
    """Bytes per example of a node's outputs (f32): the summary's activation memory."""
    return sum((o.type.per_sample() or 0) * 4 for o in node.outputs)


def summary(spec, batch: int = 32) -> str:
    """Per-layer output shape, parameters, FLOPs and activation memory; then totals."""
    g: Graph = spec.graph
    rows = [["layer", "op", "output", "params", "FLOPs/example", "act bytes/example"]]
    total_flops, total_act = 0, 0
    for node in g.nodes:
        op = get(node.op)
        out = node.outputs[0].type
        flops = op.flops([v.type for v in node.inputs], [o.type for o in node.outputs], node.attrs)
        act = activation_bytes(node)
        total_flops += flops
        total_act += act
        rows.append([node.scope or "-", node.op, str(out), _n(node_params(g, node)), _n(flops),
                     _n(act)])
    params = g.params()
    n_params = sum(p.type.numel() for p in params)
    n_buffers = sum(v.type.numel() for v in g.state.values() if v.state.kind == "buffer")
    ins = ", ".join(f"{v.input_name}: {v.type}" for v in g.inputs)
    outs = ", ".join(f"{n}: {v.type}" for n, v in zip(g.output_names, g.outputs))
    lines = [f"model {g.name}", f"  inputs:  {ins}", f"  outputs: {outs}", ""]
    lines += text_table(rows, {3, 4, 5})
    lines += ["",
              f"parameters:        {_n(n_params)} in {len(params)} tensors"
              + (f" (+ {_n(n_buffers)} buffer values)" if n_buffers else ""),
              f"FLOPs/example:     {_n(total_flops)} (forward; a multiply-add counts 2)",
              f"activations:       {_n(total_act)} bytes/example "
              f"({mib(total_act * batch)} MiB for a batch of {_n(batch)})"]
    return "\n".join(lines) + "\n"


def params(spec) -> str:
    """Every state tensor in execution order: name, shape, count, init, kind."""
    g: Graph = spec.graph
    rows = [["name", "shape", "count", "init", "kind"]]
    for name, v in g.state.items():
        rows.append([name, "[" + ", ".join(str(d) for d in v.type.shape) + "]",
                     _n(v.type.numel()), v.state.init, v.state.kind])
    total = sum(p.type.numel() for p in g.params())
    return "\n".join(text_table(rows, {2}) + ["", f"total parameters: {_n(total)}"]) + "\n"


def emit(spec, what: str, batch: int = 32, nproc: int = 1) -> str | bytes:
    """One view of `spec`; every view is text except "onnx", which is the model's bytes.
    `nproc`: the train graphs of a data-parallel run on that many processes."""
    if what == "summary":
        return summary(spec, batch)
    if what == "params":
        return params(spec)
    if what == "ir":
        return print_graph(spec.graph)
    if what == "ir-train":
        from .pipeline import build_step_graphs
        graphs = build_step_graphs(spec.graph, spec.config, nproc)
        return "\n".join(print_graph(g) for g in graphs)
    if what in ("plan", "triton"):
        plan = train_plan(spec, batch)
        if what == "triton":
            return plan.module
        from .plan import format_plan
        return format_plan(plan)
    if what == "dot":
        from .dot import to_dot
        return to_dot(spec.graph)
    if what == "onnx":
        from .onnx_export import export_onnx
        return export_onnx(spec)
    raise ValueError(what)


def _reader_loc(g, v):
    """Where the first node reading v was written (a target input such as %boxes has no
    `input` line: its loss has)."""
    return next((n.loc for n in g.nodes if any(i is v for i in n.inputs)), None)


def train_plan(spec, batch: int):
    """The kernel plan of the training step at this batch (`--emit plan` / `--emit triton`)."""
    from ..spec.diagnostics import UserError
    from .pipeline import build_train_graph
    from .plan import make_plan
    g = build_train_graph(spec.graph, spec.config)
    sizes = {"N": batch}
    if any(getattr(get(t.call.name), "box_target", False) for t in spec.config.loss_terms()):
        sizes["M"] = boxes_per_image(spec.config)      # a detector's %boxes [N, M, 5]

    def unbound(v) -> list[str]:
        return [d for d in v.type.shape if isinstance(d, str) and d.isidentifier()
                and d not in sizes]
    symbolic = [v for v in g.inputs if unbound(v)]
    if symbolic:
        symbols = sorted({d for v in symbolic for d in unbound(v)})
        raise UserError(f"the kernel plan needs concrete sizes, but the input has the size "
                        f"symbol{'s' if len(symbols) > 1 else ''} {', '.join(symbols)}",
                        spec.graph.input_locs.get(symbolic[0].input_name)
                        or _reader_loc(g, symbolic[0]),
                        hint="plans are made at run time for the sizes of the data; "
                             "declare fixed sizes in the input to see one here")
    return make_plan(g, sizes, training=True)


def boxes_per_image(cfg) -> int:
    """M, a detector's ground-truth boxes per image, before the data is read (a plan, a
    bench): what the data promises (shapes' max_shapes), else 3."""
    return int(cfg.data.args.get("max_shapes", 3)) if cfg.data.name == "shapes" else 3

"""Kernel planning: a graph becomes a list of kernels, a memory plan and Triton source.

The PLAN pipeline is a straight list of named passes, like TRAIN/EVAL/INFER:

    bind      concrete sizes for the batch and every size symbol
    inline    elementwise chains recomputed inside the anchor that reads them (prologues)
    fuse      anchors (matmul, conv, pool, reductions, norms, losses) with the elementwise
              chains after them (epilogues), elementwise chains with each other, sibling
              fusions (a bias gradient inside its weight-gradient matmul, cross-entropy
              and its gradient in one kernel), and every parameter, slot and
              running-statistics update of a step in at most two multi-tensor launches
    layout    flat state: parameters, slots and running statistics in the order the
              multi-tensor updates walk them; gradients pinned in the same order
    memory    every other intermediate placed in one arena by liveness (first fit)
    render    each kernel's Triton source from its family's template (compiler/render.py)

The passes live by responsibility: bind and render here, inline/fuse/io in fuse.py,
layout/memory in memory.py; the plan's data (Plan, Kernel, Buffer, load patterns, sizes)
in kernels.py.

How an op lowers is declared in its registry class (`Op.triton`): "elementwise" (its
`triton_ew` writes the expression), "remat" (elementwise with no tensor loads, recomputed
wherever it is used: masks, constants, step counters), "view" (no kernel: a reshape of a
contiguous buffer), the name of the template family that anchors a kernel, or "torch"
(no Triton kernel: a step that calls the op's reference forward on the plan's buffers,
compiler/torch_call.py; `--emit plan` marks it).

`format_plan` is the `--emit plan` text; `uncovered` lists nodes without a lowering.
"""
from __future__ import annotations

import os
import sys
import time

from .fuse import fuse_pass, inline_pass, io_pass
from .ir import Graph, Node, Value
from .kernels import Kernel, Plan, concrete
from .lower import live_nodes
from .memory import layout_pass, memory_pass
from .ops import get


def uncovered(graph: Graph) -> list[Node]:
    """The nodes of `graph` whose ops have no Triton lowering."""
    return [n for n in graph.nodes if get(n.op).triton is None]


def _value_names(g: Graph) -> dict[int, str]:
    names = {id(v): "%" + v.input_name for v in g.inputs}
    names.update({id(v): "@" + n for n, v in g.state.items()})
    i = 0
    for node in g.nodes:
        for o in node.outputs:
            i += 1
            names[id(o)] = f"%{i}"
    return names


def bind_pass(p: Plan) -> Plan:
    g = p.graph
    p.nodes = live_nodes(g)
    p.position = {id(n): i for i, n in enumerate(p.nodes)}
    p.names = _value_names(g)
    for node in p.nodes:
        if p.kind(node) is None:
            from ..spec.diagnostics import UserError
            raise UserError(f"the triton backend has no kernels for op '{node.op}'", node.loc,
                            hint="use --backend reference for this spec")
        for v in node.inputs:
            p.consumers.setdefault(id(v), []).append(node)
        for o in node.outputs:
            p.producer[id(o)] = node
    for v in list(g.inputs) + [n for node in p.nodes for n in node.outputs]:
        try:
            concrete(v.type, p.env)
        except KeyError as e:
            from ..spec.diagnostics import UserError
            raise UserError(f"the kernel plan needs a concrete size for {e} "
                            f"({p.name(v)}: {v.type})") from None
    for node in p.nodes:
        k = p.kind(node)
        if k == "view":
            p.alias[id(node.outputs[0])] = node.inputs[0]
        elif k == "remat":
            p.remat.add(id(node))
    return p


def render_pass(p: Plan) -> Plan:
    from .render import render_plan
    p.module = render_plan(p)
    return p


PLAN = [("bind", bind_pass), ("inline", inline_pass), ("fuse", fuse_pass), ("io", io_pass),
        ("layout", layout_pass), ("memory", memory_pass), ("render", render_pass)]


def make_plan(graph: Graph, env: dict[str, int], *, training: bool,
              target: str = "gpu") -> Plan:
    """The plan of `graph` at sizes `env`; `target` "interpreter" picks launch
    configurations for Triton's CPU interpreter (few large programs)."""
    debug = int(os.environ.get("DLC_DEBUG", "0") or 0)
    p = Plan(graph, training, dict(env), target)
    for name, fn in PLAN:
        t0 = time.perf_counter()
        p = fn(p)
        if debug >= 1:
            sys.stderr.write(f"[dlc] plan {graph.name}: {name:<8} {len(p.kernels):>4} kernels "
                             f"{(time.perf_counter() - t0) * 1e3:7.2f} ms\n")
    return p


# -- the text form (`dlc compile --emit plan`) ---------------------------------------------------

def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_plan(p: Plan) -> str:
    env = ", ".join(f"{k}={v}" for k, v in sorted(p.env.items()))
    lines = [f"plan {p.graph.name} ({env})"]
    for k in p.kernels:
        grid = "x".join(str(x) for x in k.grid)
        lines.append(f"kernel {k.index} {k.name}  " + (
            "torch (the op's reference forward, no Triton kernel)" if k.family == "torch"
            else f"grid {grid}"))
        for n in k.nodes():
            outs = ", ".join(p.name(o) for o in n.outputs)
            where = "  ".join(x for x in (n.scope, n.loc.short if n.loc is not None else "") if x)
            role = ("anchor" if n is k.anchor else "sibling" if n in k.siblings
                    else "update" if n in k.multi else "fused")
            lines.append(f"  {role:<7} {outs} = {n.op}" + (f"  # {where}" if where else ""))
        inl = [p.inlined[id(v)] for v in _inlined_reads(p, k)]
        for n in inl:
            lines.append(f"  inline  {p.name(n.outputs[0])} = {n.op}  (recomputed in the load)")
        for name, v in k.scalar_updates:
            lines.append(f"  scalar  @{name} <- {p.name(v)}")
        if k.advance_seed:
            lines.append("  scalar  dropout seed += 1  (the next step draws new masks)")
        lines.append("  reads  " + (", ".join(_buf_text(p, v) for v in k.reads) or "-"))
        lines.append("  writes " + (", ".join(_buf_text(p, v) for v in k.writes) or "-"))
    lines.append("memory")
    lines.append(f"  state    {p.state_numel * 4:>12,} bytes"
                 + ("  (flat: parameters, slots and statistics in update order)"
                    if p.flat_state else ""))
    lines.append(f"  pinned   {p.pinned_bytes:>12,} bytes  (gradients and statistics the "
                 "multi-tensor updates walk)")
    lines.append(f"  arena    {p.arena_bytes:>12,} bytes  (planned peak of intermediates, "
                 f"{_mib(p.arena_bytes)})")
    lines.append(f"  node-by-node peak {p.naive_peak:>6,} bytes  ({_mib(p.naive_peak)})")
    n_nodes = len(p.nodes)
    lines.append(f"totals: {n_nodes} IR nodes in {len(p.kernels)} kernels "
                 f"({len({k.name for k in p.kernels})} distinct sources)")
    lines.append(f"launches: {len(p.kernels)} per step")
    torch_steps = [k.anchor.op for k in p.kernels if k.family == "torch"]
    if torch_steps:
        lines.append(f"torch steps: {len(torch_steps)} ({', '.join(sorted(set(torch_steps)))}): "
                     "no Triton kernels yet, and no CUDA-graph capture")
    return "\n".join(lines) + "\n"


def _inlined_reads(p: Plan, k: Kernel) -> list[Value]:
    out, seen = [], set()
    stack = [v for n in k.nodes() for v in n.inputs]
    while stack:
        v = p.base(stack.pop(0))
        if id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in p.inlined:
            out.append(v)
            stack.extend(p.inlined[id(v)].inputs)
    return out


def _buf_text(p: Plan, v: Value) -> str:
    b = p.buffers.get(id(v))
    shape = "x".join(str(d) for d in p.shape(v)) or "1"
    if b is None:
        return f"{p.name(v)}[{shape}]"
    if b.where == "arena":
        return f"{p.name(v)}[{shape}]@arena+{b.offset}"
    if b.where == "pinned":
        return f"{p.name(v)}[{shape}]@pinned+{b.offset}"
    if b.where == "alias" and b.base is not None and b.base.where == "state":
        return f"{p.name(v)}[{shape}]->{b.base.name}"
    return f"{p.name(v)}[{shape}]"

"""Where values live: the `layout` and `memory` passes of the kernel plan.

    layout   a training program's flat float32 state, in the order the multi-tensor updates
             walk it
    memory   buffers for inputs and state, the pinned region (gradients and batch statistics
             the updates read, back to back), in-place update aliases, and an arena for
             every other stored intermediate by liveness (first fit, largest first); the
             node-by-node peak for comparison
"""
from __future__ import annotations

from .kernels import ALIGN, DTYPE_BYTES, UPDATE_OPS, Buffer, Plan, sink_ids
from .ir import Value, numel


def layout_pass(p: Plan) -> Plan:
    """Flat state for a training program: each multi-tensor input walked contiguously."""
    g = p.graph
    if not p.training:
        return p
    p.flat_state = True
    order: list[str] = []
    for k in p.kernels:
        if not k.multi:
            continue
        width = len(k.multi[0].inputs)
        for j in range(width):
            for n in k.multi:
                v = n.inputs[j]
                if v.state is not None and v.type.rank > 0 or \
                        (v.state is not None and k.multi[0].op == "ema_update"):
                    if v.state.name not in order:
                        order.append(v.state.name)
    for name in g.state:
        if name not in order:
            order.append(name)
    p.state_order = order
    return p


def memory_pass(p: Plan) -> Plan:
    """Buffers: inputs, state, pinned gradients/statistics, and an arena by liveness."""
    g = p.graph
    bufs: dict[int, Buffer] = {}
    for v in g.inputs:
        bufs[id(v)] = Buffer(p.name(v), p.shape(v), v.type.dtype, "input")
    off = 0
    for name in (p.state_order or list(g.state)):
        v = g.state[name]
        b = Buffer("@" + name, p.shape(v), v.type.dtype, "state", offset=off)
        bufs[id(v)] = b
        off += b.numel
    p.state_numel = off
    # multi-tensor inputs that are not state: pinned contiguously, in walk order
    pinned: list[Value] = []
    for k in p.kernels:
        width = len(k.multi[0].inputs) if k.multi else 0
        for j in range(width):
            vals = [p.base(n.inputs[j]) for n in k.multi]
            if all(v.state is None and v.input_name is None for v in vals) and \
                    any(v.type.rank > 0 for v in vals):
                pinned.extend(v for v in vals if id(v) not in {id(x) for x in pinned})
    # materialised values: produced by one kernel and read by another, or sinks
    sinks = sink_ids(p)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k in p.kernels:
        for v in k.writes:
            first.setdefault(id(v), k.index)
            last.setdefault(id(v), k.index)
        for v in k.reads:
            last[id(v)] = max(last.get(id(v), k.index), k.index)
    n_k = len(p.kernels)
    vals = {id(v): v for k in p.kernels for v in k.writes}
    poff = 0
    for v in pinned:
        b = Buffer(p.name(v), p.shape(v), v.type.dtype, "pinned", offset=poff,
                   live=(first.get(id(v), 0), n_k))
        bufs[id(v)] = b
        poff += b.nbytes
    p.pinned_bytes = _align(poff)
    # updates computed elementwise are written in place into their state
    for name, v in g.updates.items():
        v = p.base(v)
        prod = p.producer.get(id(v))
        if prod is not None and (prod.op in UPDATE_OPS or prod.op == "ema_update"
                                 or id(prod) in p.remat):
            bufs[id(v)] = Buffer(p.name(v), p.shape(v), v.type.dtype, "alias",
                                 base=bufs[id(g.state[name])])
    arena: list[Buffer] = []
    for vid, v in vals.items():
        if vid in bufs:
            continue
        end = n_k if vid in sinks else last[vid]
        b = Buffer(p.name(v), p.shape(v), v.type.dtype, "arena", live=(first[vid], end))
        bufs[vid] = b
        arena.append(b)
    p.arena_bytes = p.pinned_bytes + _first_fit(arena, p.pinned_bytes)
    for vid, base in p.alias.items():
        src = bufs.get(id(p.base(base)))
        v = p.producer[vid].outputs[0]               # the view node's output
        if src is not None:
            bufs[vid] = Buffer(p.name(v), p.shape(v), v.type.dtype, "alias", base=src)
    p.buffers = bufs
    p.naive_peak = _node_by_node_peak(p)
    return p


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _first_fit(bufs: list[Buffer], start: int) -> int:
    """Offsets for buffers whose lifetimes overlap, largest first (tinygrad's planner idea)."""
    placed: list[Buffer] = []
    top = 0
    for b in sorted(bufs, key=lambda b: (-b.nbytes, b.live)):
        size = _align(b.nbytes)
        clash = sorted((o.offset, o.offset + _align(o.nbytes)) for o in placed
                       if o.live[0] <= b.live[1] and b.live[0] <= o.live[1])
        off = start
        for lo, hi in clash:
            if off + size <= lo:
                break
            off = max(off, hi)
        b.offset = off
        placed.append(b)
        top = max(top, off + size - start)
    return top


def _node_by_node_peak(p: Plan) -> int:
    """Peak bytes of intermediates when every node's outputs are stored (as the reference
    backend runs), for comparison with the arena."""
    keep = sink_ids(p)
    last: dict[int, int] = {}
    for i, node in enumerate(p.nodes):
        for v in node.inputs:
            last[id(v)] = i
    live, peak = 0, 0
    alive: dict[int, int] = {}
    for i, node in enumerate(p.nodes):
        for o in node.outputs:
            if id(o) in p.alias:
                continue
            alive[id(o)] = numel(p.shape(o)) * DTYPE_BYTES[o.type.dtype]
            live += alive[id(o)]
        peak = max(peak, live)
        for v in node.inputs:
            if last.get(id(v)) == i and id(v) in alive and id(v) not in keep:
                live -= alive.pop(id(v))
    return peak

"""Elementwise kernels: a fused chain over one iteration shape, or a multi-tensor update
that walks flat segments (every parameter of a step in one launch).

    pid -> offs (flat, int64) -> mask -> chan = (offs // inner) % C -> loads -> chain -> stores
"""
from __future__ import annotations

from . import cdiv, numel, pow2

BLOCK = 1024                       # GPU default before tuning
CHOICES = (256, 512, 1024, 2048)
INTERPRETER_BLOCK = 16384          # the interpreter pays per program: few, long ones


def _block(ctx, total: int) -> int:
    if ctx.interpreted:
        return ctx.tunable("BLOCK", min(INTERPRETER_BLOCK, max(16, pow2(total))), CHOICES)
    return ctx.tunable("BLOCK", BLOCK, CHOICES)


def render(ctx) -> None:
    k = ctx.k
    if k.multi or k.scalar_updates or k.advance_seed:
        return _multi(ctx)
    ishape = ctx.shape(k.body[0].outputs[0])
    total = numel(ishape)
    n = ctx.int("n", total)
    c = ctx.int("C", ishape[1] if len(ishape) >= 2 else 1)
    inner = ctx.int("INNER", numel(ishape[2:]) if len(ishape) >= 2 else 1)
    block = _block(ctx, total)
    blk = "BLOCK"
    ctx.grid = (max(1, cdiv(total, block)),)
    ctx.emit(f"offs = tl.program_id(0).to(tl.int64) * {blk} + tl.arange(0, {blk})")
    ctx.emit(f"mask = offs < {n}")
    ctx.emit(f"chan = (offs // {inner}) % {c}")
    known: dict = {}
    ctx.compute(k.body, known, ishape, "offs", "chan", "mask")
    for node in k.body:
        for o in node.outputs:
            if id(o) in ctx.writes:
                ctx.store(o, known[id(o)], "offs", "mask")


def _segments(ctx, vals) -> tuple[str, int, int] | None:
    """(region, element offset, numel) when `vals` lie back to back in one flat region."""
    bufs = [ctx.p.buffers[id(ctx.p.base(v))] for v in vals]
    region = {b.where for b in bufs}
    if len(region) != 1:
        return None
    region = region.pop()
    if region not in ("state", "pinned"):
        return None
    scale = 1 if region == "state" else 4
    start = bufs[0].offset // scale
    at = start
    for b in bufs:
        if b.offset // scale != at:
            return None
        at += b.numel
    return region, start, at - start


def _multi(ctx) -> None:
    """One launch over every tensor of a multi-tensor update, plus scalar state updates."""
    k, p = ctx.k, ctx.p
    nodes = k.multi
    total = sum(numel(ctx.shape(n.outputs[0])) for n in nodes)
    if total:
        block = _block(ctx, total)
    else:                                   # scalar state updates only: one small program
        block = 16
        ctx.const("BLOCK", block)
    blk = "BLOCK"
    n = ctx.int("n", total)
    ctx.grid = (max(1, cdiv(total, block)),)
    ctx.emit("pid = tl.program_id(0)")
    ctx.emit(f"offs = pid.to(tl.int64) * {blk} + tl.arange(0, {blk})")
    ctx.emit(f"mask = offs < {n}")
    known: dict = {}
    if nodes:
        first = nodes[0]
        ishape = (total,)
        segs = {}
        for j, v in enumerate(first.inputs):
            vals = [m.inputs[j] for m in nodes]
            if v.type.rank == 0:
                if any(ctx.p.base(x) is not ctx.p.base(v) for x in vals):
                    raise AssertionError(f"multi-tensor {first.op}: input {j} differs per tensor")
                continue
            seg = _segments(ctx, vals)
            if seg is None:
                raise AssertionError(f"multi-tensor {first.op}: input {j} is not one flat segment")
            segs[j] = seg
            ptr = ctx.seg_ptr(*seg)
            known[id(p.base(v))] = ctx.let(f"tl.load({ptr} + offs, mask=mask, other=0.0)")
        for j, v in enumerate(first.inputs):           # scalars: loads or recomputed steps
            if j not in segs:
                known[id(p.base(v))] = ctx.value(v, ishape, "offs", "offs", "mask", cache=known)
        # every node is the same op with the same attributes: compute once on the flat walk
        from ..ops import get
        ins = [known[id(p.base(v))] for v in first.inputs]
        from ..render import EwEmitter
        outs = get(first.op).triton_ew(EwEmitter(ctx, first), ins, first.attrs)
        updated = {id(v): name for name, v in p.graph.updates.items()}
        for i, o in enumerate(first.outputs):
            target = updated.get(id(o))
            j = next((j for j, v in enumerate(first.inputs)
                      if v.state is not None and v.state.name == target), None)
            if j is None or j not in segs:
                raise AssertionError(f"multi-tensor {first.op}: output {i} updates no input")
            for m in nodes:                         # the same slot position for every tensor
                if updated.get(id(m.outputs[i])) != m.inputs[j].state.name:
                    raise AssertionError(f"multi-tensor {first.op}: output {i} of "
                                         f"{m.inputs[0]} updates another position")
            ptr = ctx.seg_ptr(*segs[j])
            ctx.emit(f"tl.store({ptr} + offs, {outs[i]}, mask=mask)")
    for name, v in k.scalar_updates:
        val = ctx.value(v, (max(total, 1),), "offs", "offs", "mask", cache=known)
        state = p.graph.state[name]
        ctx.emit(f"tl.store({ctx.ptr(state)}, {val}, mask=pid == 0)")
    if getattr(k, "advance_seed", False):
        seed = ctx.seed()
        ctx.emit(f"tl.store({ctx._ptrs[('seed',)]}, {seed} + 1, mask=pid == 0)")

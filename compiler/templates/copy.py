"""Copy kernels: `concat` (one kernel writes the joined output) and `slice` (a narrowed copy,
concat's gradient).

Both walk the output flat in blocks of BLOCK elements and view it, around the axis, as
(OUTER, A, INNER):

    pid -> offs (flat, int64) -> (o, a, i) -> source offset -> load -> epilogue

concat: output position `a` along the axis comes from input k when START_k <= a < START_k +
LEN_k; every input is loaded under its own mask and the results are merged with tl.where.
slice: output position `a` reads input position a + START.  Sizes are arguments, so one
source serves every concat of the same number of inputs along the same axis.

per_anchor (and its gradient, the inverse permutation): the map [N, A*k, H, W] read as
[N, H, W, A, k]; each output element's (n, h, w, a, j) gives its source flat offset.
"""
from __future__ import annotations

from . import cdiv, numel

BLOCK = 1024


def render(ctx) -> None:
    {"concat": concat, "slice": slice_, "per_anchor": per_anchor,
     "per_anchor_bwd": per_anchor_bwd}[ctx.node.op](ctx)


def _flat(ctx, total: int) -> None:
    """pid -> offs, the flat output elements of this program, and their mask."""
    n = ctx.int("n", total)
    blk = ctx.const("BLOCK", BLOCK)
    ctx.grid = (max(1, cdiv(total, BLOCK)),)
    ctx.emit(f"offs = tl.program_id(0).to(tl.int64) * {blk} + tl.arange(0, {blk})  # (BLOCK,)")
    ctx.emit(f"mask = offs < {n}")


def walk(ctx, shape: tuple, axis: int) -> None:
    """pid -> offs over the output -> mask, its (o, a, i) around `axis` and its channel."""
    _flat(ctx, numel(shape))
    a_len = ctx.int("A", shape[axis])
    inner = ctx.int("INNER", numel(shape[axis + 1:]))
    ctx.emit(f"i = offs % {inner}")
    ctx.emit(f"a = (offs // {inner}) % {a_len}")
    ctx.emit(f"o = offs // {inner} // {a_len}")
    if axis == 1:
        ctx.emit("chan = a")
    elif len(shape) >= 2:
        c = ctx.int("C", shape[1])
        rest = ctx.int("CINNER", numel(shape[2:]))
        ctx.emit(f"chan = (offs // {rest}) % {c}")
    else:
        ctx.emit("chan = offs")


def finish(ctx, val: str) -> None:
    """Output 0 is `val` at the walk's offsets: the epilogue, or a plain store."""
    from ..ops import get
    if get(ctx.node.op).triton_epilogue:
        ctx.epilogue(val, "offs", "chan", "mask")
    elif ctx.stores(0):
        ctx.emit(f"tl.store({ctx.out_ptr(0)} + offs, {val}, mask=mask)")


def concat(ctx) -> None:
    axis = ctx.attrs["axis"]
    walk(ctx, ctx.out_shape(0), axis)
    ctx.emit("val = tl.zeros([BLOCK], dtype=tl.float32)")
    start = 0
    for k in range(len(ctx.node.inputs)):
        size = ctx.in_shape(k)[axis]
        s, ln = ctx.int(f"START{k}", start), ctx.int(f"LEN{k}", size)
        ctx.emit(f"# input {k}: positions [START{k}, START{k} + LEN{k}) along axis {axis}")
        ctx.emit(f"m{k} = mask & (a >= {s}) & (a < {s} + {ln})")
        ctx.emit(f"src{k} = (o * {ln} + (a - {s})) * INNER + i")
        chan = f"a - {s}" if axis == 1 else "chan"
        v = ctx.load(k, f"src{k}", chan, f"m{k}")
        ctx.emit(f"val = tl.where(m{k}, {v}, val)")
        start += size
    finish(ctx, "val")


def slice_(ctx) -> None:
    axis = ctx.attrs["axis"]
    walk(ctx, ctx.out_shape(0), axis)
    s = ctx.int("START", ctx.attrs["start"])
    a_in = ctx.int("A_IN", ctx.in_shape(0)[axis])
    ctx.emit(f"src = (o * {a_in} + a + {s}) * INNER + i")
    v = ctx.load(0, "src", f"a + {s}" if axis == 1 else "chan", "mask")
    finish(ctx, v)


def _anchor_sizes(ctx, map_shape) -> None:
    k = ctx.attrs["values"]
    _, c, h, w = map_shape
    ctx.int("K", k)
    ctx.int("A", c // k)
    ctx.int("H", h)
    ctx.int("W", w)


def per_anchor(ctx) -> None:
    """out (n, (h, w, a), j) <- map (n, a*K + j, h, w)."""
    _anchor_sizes(ctx, ctx.in_shape(0))
    _flat(ctx, numel(ctx.out_shape(0)))
    ctx.emit("j = offs % K")
    ctx.emit("a = (offs // K) % A")
    ctx.emit("w = (offs // (K * A)) % W")
    ctx.emit("h = (offs // (K * A * W)) % H")
    ctx.emit("b = offs // (K * A * W * H)")
    ctx.emit("src = ((b * (A * K) + a * K + j) * H + h) * W + w")
    v = ctx.load(0, "src", "a * K + j", "mask")
    finish(ctx, v)


def per_anchor_bwd(ctx) -> None:
    """g (n, a*K + j, h, w) <- gy (n, (h, w, a), j)."""
    _anchor_sizes(ctx, ctx.in_shape(1))
    _flat(ctx, numel(ctx.out_shape(0)))
    ctx.emit("w = offs % W")
    ctx.emit("h = (offs // W) % H")
    ctx.emit("c = (offs // (W * H)) % (A * K)")
    ctx.emit("b = offs // (W * H * A * K)")
    ctx.emit("src = (((b * H + h) * W + w) * A + c // K) * K + c % K")
    v = ctx.load(0, "src", "c", "mask")
    finish(ctx, v)

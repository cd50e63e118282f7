"""Region pooling kernels: SPP-Net's spatial pyramid (adaptive max pooling at each level of a
whole map, the levels concatenated) and its gradient.

    spp       output [N, C*sum(l*l)], flat, in blocks of BLOCK: element r of an image is
              level L's bin (c, i, j) for the L with base <= r < base + C*L*L; its window is
              adaptive pooling's rows [floor(i*H/L), ceil((i+1)*H/L)) (columns likewise),
              scanned row-major taking v when v > max or v is NaN (torch's rule, so NaN
              propagates and the argmax is the one torch's CPU kernel records)
    spp_bwd   input [N, C, H, W]: for each level, the bins whose window holds the pixel
              (rows i from floor(h*L/H) to ceil((h+1)*L/H) - 1: bin floor(h*L/H) - 1 ends
              at ceil(floor(h*L/H)*H/L) <= h; at most ceil(L/H) + 1 candidates, each tested;
              columns likewise), each
              bin's argmax recomputed by the forward's scan; gy of every bin whose argmax is
              this pixel is summed: a gather, no atomics

The levels are attributes, so each level is its own unrolled section of the kernel.
"""
from __future__ import annotations

from . import cdiv, numel
from .reduce import NEG_INF

BLOCK = 256
INTERPRETER_BLOCK = 2048       # the interpreter's cost is per program: few, large ones


def render(ctx) -> None:
    {"spp": spp, "spp_bwd": spp_bwd}[ctx.node.op](ctx)


def _block(ctx) -> int:
    block = INTERPRETER_BLOCK if ctx.interpreted else BLOCK
    ctx.const("BLOCK", block)
    return block


def _levels(ctx, c: int):
    """(index, L, base) of each level: bins per side and offset in an image's output row."""
    base, out = 0, []
    for k, lv in enumerate(ctx.attrs["levels"]):
        out.append((k, lv, base))
        base += c * lv * lv
    return out, base


def _window(ctx, axis: str, o: str, n_in: str, lv: int) -> None:
    ctx.emit(f"{axis}s = ({o} * {n_in}) // {lv}")
    ctx.emit(f"{axis}e = (({o} + 1) * {n_in} + {lv - 1}) // {lv}")


def _scan(ctx, k: int, ok: str, xi: int, with_index: bool) -> None:
    """best (and bidx, its h * W + w) over the window hs..he x ws..we of plane `plane` of
    the anchor's input xi."""
    ctx.emit(f"best = tl.full([BLOCK], {NEG_INF}, tl.float32)")
    if with_index:
        ctx.emit("bidx = tl.full([BLOCK], -1, tl.int64)")
    ctx.emit(f"for a in range(KH{k}):")
    ctx.indent += 1
    ctx.emit(f"for b in range(KW{k}):")
    ctx.indent += 1
    ctx.emit(f"okk = {ok} & (hs + a < he) & (ws + b < we)")
    v = ctx.load(xi, "plane + (hs + a) * W + ws + b", "c", "okk", other=NEG_INF)
    ctx.emit(f"take = okk & (({v} > best) | ({v} != {v}))")
    ctx.emit(f"best = tl.where(take, {v}, best)")
    if with_index:
        ctx.emit("bidx = tl.where(take, (hs + a) * W + ws + b, bidx)")
    ctx.indent -= 2


def _sizes(ctx, x_shape, levels) -> None:
    _, c, h, w = x_shape
    ctx.int("C", c), ctx.int("H", h), ctx.int("W", w)
    for k, lv, _ in levels:
        ctx.const(f"KH{k}", cdiv(h, lv) + 1), ctx.const(f"KW{k}", cdiv(w, lv) + 1)


def spp(ctx) -> None:
    x_shape = ctx.in_shape(0)
    levels, width = _levels(ctx, x_shape[1])
    _sizes(ctx, x_shape, levels)
    total = numel(ctx.out_shape(0))
    ctx.int("TOTAL", total), ctx.int("WIDTH", width)
    block = _block(ctx)
    ctx.grid = (max(1, cdiv(total, block)),)
    ctx.emit("offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)")
    ctx.emit("mask = offs < TOTAL")
    ctx.emit("n = offs // WIDTH")
    ctx.emit("r = offs % WIDTH")
    ctx.emit("out = tl.zeros([BLOCK], dtype=tl.float32)")
    for k, lv, base in levels:
        ctx.emit(f"# level {k}: {lv} x {lv} bins from element {base}")
        ctx.emit(f"inl = mask & (r >= {base}) & (r < {base + x_shape[1] * lv * lv})")
        ctx.emit(f"within = tl.where(inl, r - {base}, 0)")
        ctx.emit(f"c = within // {lv * lv}")
        ctx.emit(f"i = (within % {lv * lv}) // {lv}")
        ctx.emit(f"j = within % {lv}")
        ctx.emit("plane = (n * C + c) * H * W")
        _window(ctx, "h", "i", "H", lv)
        _window(ctx, "w", "j", "W", lv)
        _scan(ctx, k, "inl", 0, with_index=False)
        ctx.emit("out = tl.where(inl, best, out)")
    ctx.epilogue("out", "offs", "r", "mask")


def spp_bwd(ctx) -> None:
    x_shape = ctx.in_shape(1)
    _, c, h, w = x_shape
    levels, width = _levels(ctx, c)
    _sizes(ctx, x_shape, levels)
    total = numel(x_shape)
    ctx.int("TOTAL", total), ctx.int("WIDTH", width)
    block = _block(ctx)
    ctx.grid = (max(1, cdiv(total, block)),)
    e = ctx.emit
    e("offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # x's elements")
    e("mask = offs < TOTAL")
    e("pw = offs % W")
    e("ph = (offs // W) % H")
    e("nc = offs // (H * W)")
    e("c = nc % C")
    e("n = nc // C")
    e("plane = nc * H * W")
    e("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    for k, lv, base in levels:
        reach = cdiv(lv, h) + 1, cdiv(lv, w) + 1
        e(f"# level {k}: the bins of {lv} x {lv} whose window holds (ph, pw)")
        e(f"for di in range({reach[0]}):")
        ctx.indent += 1
        e(f"i = (ph * {lv}) // H + di")
        _window(ctx, "h", "i", "H", lv)
        e(f"in_h = mask & (i < {lv}) & (hs <= ph) & (ph < he)")
        e(f"for dj in range({reach[1]}):")
        ctx.indent += 1
        e(f"j = (pw * {lv}) // W + dj")
        _window(ctx, "w", "j", "W", lv)
        e(f"inb = in_h & (j < {lv}) & (ws <= pw) & (pw < we)")
        _scan(ctx, k, "inb", 1, with_index=True)
        e("hit = inb & (bidx == ph * W + pw)")
        g = ctx.load(0, f"n * WIDTH + {base} + c * {lv * lv} + i * {lv} + j", "c", "hit")
        e(f"acc += tl.where(hit, {g}, 0.0)")
        ctx.indent -= 2
    ctx.epilogue("acc", "offs", "c", "mask")

"""Region pooling kernels: SPP-Net's spatial pyramid (adaptive max pooling at each level of a
whole map, the levels concatenated) and its gradient, and Fast R-CNN's RoI max pooling.

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

    roi_pool  output [R, C, PH, PW]: the RoI's corners scaled and rounded (half away from
              zero), each bin cut at floor/ceil of max(roi, 1) / bins in float64 and clipped
              to the map, the max over it (0 for an empty bin); the window loops run to the
              block's largest bin. Its gradient is still a torch step.
    roi_spp   output [R, C*sum(l*l)]: roi_pool with l x l bins at each level, the levels
              unrolled as spp's are. Its gradient is still a torch step.

The levels are attributes, so each level is its own unrolled section of the kernel.
"""
from __future__ import annotations

from . import cdiv, numel
from .reduce import NEG_INF

BLOCK = 256
INTERPRETER_BLOCK = 2048       # the interpreter's cost is per program: few, large ones


def render(ctx) -> None:
    {"spp": spp, "spp_bwd": spp_bwd, "roi_pool": roi_pool, "roi_spp": roi_spp}[ctx.node.op](ctx)


def _block(ctx) -> int:
    block = INTERPRETER_BLOCK if ctx.interpreted else BLOCK
    ctx.const("BLOCK", block)
    return block


def _elements(ctx, total: int, what: str) -> None:
    """TOTAL, BLOCK and the grid over `total` elements; offs and mask."""
    ctx.int("TOTAL", total)
    ctx.grid = (max(1, cdiv(total, _block(ctx))),)
    ctx.emit(f"offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # {what}")
    ctx.emit("mask = offs < TOTAL")


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
    ctx.int("WIDTH", width)
    _elements(ctx, numel(ctx.out_shape(0)), "[N, WIDTH]")
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
    ctx.int("WIDTH", width)
    _elements(ctx, numel(x_shape), "x's elements")
    e = ctx.emit
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


# -- RoI max pooling (Fast R-CNN) -------------------------------------------------------------

def _roi_corners(ctx, rois_i: int, rank: int) -> None:
    """b (image), x0, y0, x1, y1 of RoI r (int64, on the feature map: the corners scaled
    by SCALE in float64 and rounded half away from zero, as torchvision's roi_pool)."""
    e = ctx.emit
    if rank == 2:                                         # [R, 5]: (image, x0, y0, x1, y1)
        first = ctx.load(rois_i, "r * 5", "r", "mask")
        e(f"b = {first}.to(tl.int64)")
        cols = [ctx.load(rois_i, f"r * 5 + {k + 1}", "r", "mask") for k in range(4)]
    else:                                                 # [N, P, 4]: P boxes per image
        e("b = r // P")
        cols = [ctx.load(rois_i, f"r * 4 + {k}", "r", "mask") for k in range(4)]
    for name, v in zip(("x0", "y0", "x1", "y1"), cols):
        e(f"{name}f = {v}.to(tl.float64) * SCALE")
        e(f"{name} = tl.where({name}f < 0, -tl.floor(-{name}f + 0.5), "
          f"tl.floor({name}f + 0.5)).to(tl.int64)")


def _roi_bins(ctx, bins_h: str = "PH", bins_w: str = "PW") -> None:
    """hs, he, ws, we: the bin (ph, pw) of the RoI, clipped to the map (torchvision's
    floor/ceil cuts of max(roi, 1) / bins, computed in float64)."""
    e = ctx.emit
    e(f"bin_h = tl.maximum(y1 - y0 + 1, 1).to(tl.float64) / {bins_h}")
    e(f"bin_w = tl.maximum(x1 - x0 + 1, 1).to(tl.float64) / {bins_w}")
    e("hs = tl.minimum(tl.maximum(tl.floor(ph.to(tl.float64) * bin_h).to(tl.int64) + y0, 0), H)")
    e("he = tl.minimum(tl.maximum(tl.ceil((ph + 1).to(tl.float64) * bin_h).to(tl.int64) + y0, 0), H)")
    e("ws = tl.minimum(tl.maximum(tl.floor(pw.to(tl.float64) * bin_w).to(tl.int64) + x0, 0), W)")
    e("we = tl.minimum(tl.maximum(tl.ceil((pw + 1).to(tl.float64) * bin_w).to(tl.int64) + x0, 0), W)")


def roi_pool(ctx) -> None:
    ph, pw = ctx.out_shape(0)[2:]
    ctx.int("PH", ph), ctx.int("PW", pw)
    rank = _roi_setup(ctx, "[R, C, PH, PW]")
    e = ctx.emit
    e("pw = offs % PW")
    e("ph = (offs // PW) % PH")
    e("c = (offs // (PW * PH)) % C")
    e("r = offs // (PW * PH * C)")
    _roi_corners(ctx, 1, rank)
    _roi_bins(ctx)
    _bin_max(ctx, "mask")
    ctx.epilogue("best", "offs", "c", "mask")


def _bin_max(ctx, live: str) -> None:
    """best: the max of x over the bin hs..he x ws..we of plane (b, c), 0 for an empty bin;
    the loops run to the largest bin among the `live` lanes."""
    e = ctx.emit
    e("plane = (b * C + c) * H * W")
    e(f"best = tl.full([BLOCK], {NEG_INF}, tl.float32)")
    e(f"rows = tl.max(tl.where({live}, he - hs, 0), axis=0)    # the block's tallest bin")
    e(f"cols = tl.max(tl.where({live}, we - ws, 0), axis=0)")
    e("for a in range(0, rows):")
    ctx.indent += 1
    e("for bb in range(0, cols):")
    ctx.indent += 1
    e(f"ok = {live} & (hs + a < he) & (ws + bb < we)")
    v = ctx.load(0, "plane + (hs + a) * W + ws + bb", "c", "ok", other=NEG_INF)
    e(f"best = tl.where(ok & ({v} > best), {v}, best)")
    ctx.indent -= 2
    e("best = tl.where((he <= hs) | (we <= ws), 0.0, best)")


def _roi_setup(ctx, what: str) -> int:
    """Sizes, the launch over the output, SCALE; returns the RoIs' rank (2 or 3)."""
    _, c, h, w = ctx.in_shape(0)
    rank = len(ctx.in_shape(1))
    ctx.int("C", c), ctx.int("H", h), ctx.int("W", w)
    if rank == 3:
        ctx.int("P", ctx.in_shape(1)[1])
    _elements(ctx, numel(ctx.out_shape(0)), what)
    ctx.emit(f"SCALE = tl.full([], {float(ctx.attrs['spatial_scale'])!r}, tl.float64)")
    return rank


def roi_spp(ctx) -> None:
    """SPP-Net's pyramid over RoIs: roi_pool at each level (L x L bins), each level's bins
    flattened channel-major and the levels concatenated: output [R, WIDTH]."""
    levels, width = _levels(ctx, ctx.in_shape(0)[1])
    ctx.int("WIDTH", width)
    rank = _roi_setup(ctx, "[R, WIDTH]")
    e = ctx.emit
    e("r = offs // WIDTH")
    e("j = offs % WIDTH")
    _roi_corners(ctx, 1, rank)
    e("out = tl.zeros([BLOCK], dtype=tl.float32)")
    for k, lv, base in levels:
        e(f"# level {k}: {lv} x {lv} bins from element {base}")
        e(f"inl = mask & (j >= {base}) & (j < {base} + C * {lv * lv})")
        e(f"within = tl.where(inl, j - {base}, 0)")
        e(f"c = within // {lv * lv}")
        e(f"ph = (within % {lv * lv}) // {lv}")
        e(f"pw = within % {lv}")
        _roi_bins(ctx, str(lv), str(lv))
        _bin_max(ctx, "inl")
        e("out = tl.where(inl, best, out)")
    ctx.epilogue("out", "offs", "j", "mask")

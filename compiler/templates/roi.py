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
    roi_align output [R, C, PH, PW]: the mean of a bin's bilinear samples, each sample's four
              taps gathered (torchvision's rules at the map's edges). Its gradient is still a
              torch step.

The levels are attributes, so each level is its own unrolled section of the kernel.
"""
from __future__ import annotations

from . import cdiv, numel
from .reduce import NEG_INF

BLOCK = 256
INTERPRETER_BLOCK = 2048       # the interpreter's cost is per program: few, large ones


def render(ctx) -> None:
    {"spp": spp, "spp_bwd": spp_bwd, "roi_pool": roi_pool, "roi_spp": roi_spp,
     "roi_align": roi_align}[ctx.node.op](ctx)


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

def _roi_row(ctx, rank: int) -> list[str]:
    """b (the image of RoI r) and the variables holding its x0, y0, x1, y1 in input pixels."""
    if rank == 2:                                         # [R, 5]: (image, x0, y0, x1, y1)
        first = ctx.load(1, "r * 5", "r", "mask")
        ctx.emit(f"b = {first}.to(tl.int64)")
        return [ctx.load(1, f"r * 5 + {k + 1}", "r", "mask") for k in range(4)]
    ctx.emit("b = r // P")                                # [N, P, 4]: P boxes per image
    return [ctx.load(1, f"r * 4 + {k}", "r", "mask") for k in range(4)]


def _roi_corners(ctx, rank: int) -> None:
    """b (image), x0, y0, x1, y1 of RoI r (int64, on the feature map: the corners scaled
    by SCALE in float64 and rounded half away from zero, as torchvision's roi_pool)."""
    e = ctx.emit
    for name, v in zip(("x0", "y0", "x1", "y1"), _roi_row(ctx, rank)):
        e(f"{name}f = {v}.to(tl.float64) * SCALE")
        e(f"{name} = tl.where({name}f < 0, -tl.floor(-{name}f + 0.5), "
          f"tl.floor({name}f + 0.5)).to(tl.int64)")


def _roi_bins(ctx, bins_h: str = "PH", bins_w: str = "PW") -> None:
    """hs, he, ws, we: the bin (ph, pw) of the RoI, clipped to the map (torchvision's
    floor/ceil cuts of max(roi, 1) / bins, computed in float64)."""
    e = ctx.emit
    e(f"bin_h = tl.maximum(y1 - y0 + 1, 1).to(tl.float64) / {bins_h}")
    e(f"bin_w = tl.maximum(x1 - x0 + 1, 1).to(tl.float64) / {bins_w}")
    for a, o, size, start, step in (("h", "ph", "H", "y0", "bin_h"),
                                    ("w", "pw", "W", "x0", "bin_w")):
        lo = f"tl.floor({o}.to(tl.float64) * {step}).to(tl.int64) + {start}"
        hi = f"tl.ceil(({o} + 1).to(tl.float64) * {step}).to(tl.int64) + {start}"
        e(f"{a}s = tl.minimum(tl.maximum({lo}, 0), {size})")
        e(f"{a}e = tl.minimum(tl.maximum({hi}, 0), {size})")


def _roi_bins_setup(ctx) -> int:
    """An output [R, C, PH, PW]: its sizes and launch, and pw, ph, c, r of each element;
    returns the RoIs' rank."""
    ph, pw = ctx.out_shape(0)[2:]
    ctx.int("PH", ph), ctx.int("PW", pw)
    rank = _roi_setup(ctx, "[R, C, PH, PW]")
    for line in ("pw = offs % PW", "ph = (offs // PW) % PH", "c = (offs // (PW * PH)) % C",
                 "r = offs // (PW * PH * C)"):
        ctx.emit(line)
    return rank


def roi_pool(ctx) -> None:
    rank = _roi_bins_setup(ctx)
    _roi_corners(ctx, rank)
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
    _roi_corners(ctx, rank)
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


# -- RoI align (Mask R-CNN; R-CNN's warp) ------------------------------------------------------

def _align_axis(ctx, axis: str, pos: str, size: str) -> None:
    """{axis}0, {axis}1 (int64 taps) and {axis}l (weight of tap 1) of sample `pos`, and
    {axis}ok (the sample is within [-1, size]), as torchvision's bilinear_interpolate."""
    e = ctx.emit
    e(f"{axis}ok = ({pos} >= -1.0) & ({pos} <= {size}.to(tl.float32))")
    e(f"{axis}p = tl.maximum({pos}, 0.0)")
    e(f"{axis}0 = {axis}p.to(tl.int64)")
    e(f"{axis}last = {axis}0 >= {size} - 1")
    e(f"{axis}0 = tl.where({axis}last, {size} - 1, {axis}0)")
    e(f"{axis}1 = tl.where({axis}last, {axis}0, {axis}0 + 1)")
    e(f"{axis}l = tl.where({axis}last, 0.0, {axis}p - {axis}0.to(tl.float32))")


def roi_align(ctx) -> None:
    """The mean of gh x gw bilinear samples per bin (gh = sampling_ratio, or ceil(roi_h / PH)
    per RoI when it is <= 0), the box scaled and shifted by -0.5 when `aligned`, in float32
    as the reference computes it; the sample loops run to the block's largest grid."""
    rank = _roi_bins_setup(ctx)
    e = ctx.emit
    cols = _roi_row(ctx, rank)
    shift = 0.5 if ctx.attrs["aligned"] else 0.0
    scale = float(ctx.attrs["spatial_scale"])
    for name, v in zip(("bx0", "by0", "bx1", "by1"), cols):
        e(f"{name} = {v} * {scale!r} - {shift!r}")
    e("rw = bx1 - bx0")
    e("rh = by1 - by0")
    if not ctx.attrs["aligned"]:
        e("rw = tl.maximum(rw, 1.0)")
        e("rh = tl.maximum(rh, 1.0)")
    sr = ctx.attrs["sampling_ratio"]
    if sr > 0:
        e(f"gh = tl.full([BLOCK], {sr}, tl.int64)")
        e(f"gw = tl.full([BLOCK], {sr}, tl.int64)")
    else:
        e("gh = tl.ceil(rh / PH).to(tl.int64)")
        e("gw = tl.ceil(rw / PW).to(tl.int64)")
    e("step_h = rh / PH")
    e("step_w = rw / PW")
    e("plane = (b * C + c) * H * W")
    e("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    e("rows = tl.max(tl.where(mask, gh, 0), axis=0)")
    e("cols = tl.max(tl.where(mask, gw, 0), axis=0)")
    e("for iy in range(0, rows):")
    ctx.indent += 1
    e("y = by0 + ph.to(tl.float32) * step_h + (iy + 0.5) * step_h / "
      "tl.maximum(gh, 1).to(tl.float32)")
    _align_axis(ctx, "h", "y", "H")
    e("for ix in range(0, cols):")
    ctx.indent += 1
    e("x = bx0 + pw.to(tl.float32) * step_w + (ix + 0.5) * step_w / "
      "tl.maximum(gw, 1).to(tl.float32)")
    _align_axis(ctx, "w", "x", "W")
    e("ok = mask & (iy < gh) & (ix < gw) & hok & wok")
    v = {}
    for a in "01":
        for bb in "01":
            v[a + bb] = ctx.load(0, f"plane + h{a} * W + w{bb}", "c", "ok")
    e(f"top = (1.0 - wl) * {v['00']} + wl * {v['01']}")
    e(f"bot = (1.0 - wl) * {v['10']} + wl * {v['11']}")
    e("acc += tl.where(ok, (1.0 - hl) * top + hl * bot, 0.0)")
    ctx.indent -= 2
    e("count = tl.maximum(gh * gw, 1).to(tl.float32)")
    ctx.epilogue(ctx.let("acc / count"), "offs", "c", "mask")

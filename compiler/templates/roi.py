"""Region pooling kernels: SPP-Net's spatial pyramid (adaptive max pooling at each level of a
whole map, the levels concatenated), Fast R-CNN's RoI max pooling, SPP over RoIs, RoI align,
and the gradients of all of them.

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
              block's largest bin.
    roi_spp   output [R, C*sum(l*l)]: roi_pool with l x l bins at each level, the levels
              unrolled as spp's are.
    roi_align output [R, C, PH, PW]: the mean of a bin's bilinear samples, each sample's four
              taps gathered (torchvision's rules at the map's edges).

The RoI gradients are gathers like spp_bwd's, over x's elements [N, C, H, W]: deterministic,
no atomics, each pixel summing in the reference's order (RoI, then bin row-major):
    roi_pool_bwd   for each RoI of the pixel's image (the P boxes of image n, or all R RoIs
                   testing their image index), the bins that can hold the pixel (bin i spans
                   [floor(i*b), ceil((i+1)*b)) cells from the corner, so i in (d/b - 1,
                   (d+1)/b) for offset d; one of margin each side, each tested exactly), each
                   one's argmax recomputed by the forward's scan; gy of those whose argmax is
                   the pixel is summed
    roi_spp_bwd    roi_pool_bwd at each level, each level's sum added to the total
    roi_align_bwd  for each RoI and each bin whose samples can touch the pixel (samples in
                   [p - 1, p + 1]), Ay[i, py] * gy[i, j] * Ax[j, px]: the separable bilinear
                   weights of the bin's samples on the pixel's row and column, recomputed as
                   the forward places the samples

The levels are attributes, so each level is its own unrolled section of the kernel.
"""
from __future__ import annotations

from . import cdiv, numel
from .reduce import NEG_INF

BLOCK = 256
INTERPRETER_BLOCK = 2048       # the interpreter's cost is per program: few, large ones


def render(ctx) -> None:
    {"spp": spp, "spp_bwd": spp_bwd, "roi_pool": roi_pool, "roi_spp": roi_spp,
     "roi_align": roi_align, "roi_pool_bwd": roi_pool_bwd, "roi_spp_bwd": roi_spp_bwd,
     "roi_align_bwd": roi_align_bwd}[ctx.node.op](ctx)


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

def _roi_row(ctx, rank: int, at: int = 1) -> list[str]:
    """b (the image of RoI r) and the variables holding its x0, y0, x1, y1 in input pixels
    (the RoIs are the anchor's input `at`)."""
    if rank == 2:                                         # [R, 5]: (image, x0, y0, x1, y1)
        first = ctx.load(at, "r * 5", "r", "mask")
        ctx.emit(f"b = {first}.to(tl.int64)")
        return [ctx.load(at, f"r * 5 + {k + 1}", "r", "mask") for k in range(4)]
    ctx.emit("b = r // P")                                # [N, P, 4]: P boxes per image
    return [ctx.load(at, f"r * 4 + {k}", "r", "mask") for k in range(4)]


def _roi_corners(ctx, rank: int, at: int = 1) -> None:
    """b (image), x0, y0, x1, y1 of RoI r (int64, on the feature map: the corners scaled
    by SCALE in float64 and rounded half away from zero, as torchvision's roi_pool)."""
    e = ctx.emit
    for name, v in zip(("x0", "y0", "x1", "y1"), _roi_row(ctx, rank, at)):
        e(f"{name}f = {v}.to(tl.float64) * SCALE")
        e(f"{name} = tl.where({name}f < 0, -tl.floor(-{name}f + 0.5), "
          f"tl.floor({name}f + 0.5)).to(tl.int64)")


def _roi_bins(ctx, bins_h: str = "PH", bins_w: str = "PW") -> None:
    """hs, he, ws, we: the bin (ph, pw) of the RoI, clipped to the map (torchvision's
    floor/ceil cuts of max(roi, 1) / bins, computed in float64)."""
    _bin_sizes(ctx, bins_h, bins_w)
    _bin_edges(ctx, "ph", "pw")


def _bin_sizes(ctx, bins_h: str, bins_w: str) -> None:
    """bin_h, bin_w: the RoI's height and width (at least one cell) over its bins, float64."""
    ctx.emit(f"bin_h = tl.maximum(y1 - y0 + 1, 1).to(tl.float64) / {bins_h}")
    ctx.emit(f"bin_w = tl.maximum(x1 - x0 + 1, 1).to(tl.float64) / {bins_w}")


def _bin_edges(ctx, i: str, j: str) -> None:
    """hs, he, ws, we of bin (i, j): cut at floor/ceil of its multiples of bin_h, bin_w from
    the RoI's corner, clipped to the map."""
    e = ctx.emit
    for a, o, size, start, step in (("h", i, "H", "y0", "bin_h"),
                                    ("w", j, "W", "x0", "bin_w")):
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


def _bin_max(ctx, live: str, x_at: int = 0, with_index: bool = False) -> None:
    """best: the max of x (the anchor's input `x_at`) over the bin hs..he x ws..we of plane
    (b, c), 0 for an empty bin; the loops run to the largest bin among the `live` lanes.
    `with_index`: bidx, its first position in row-major order (h * W + w; -1 if empty or
    nothing above -inf), the reference's argmax."""
    e = ctx.emit
    e("plane = (b * C + c) * H * W")
    e(f"best = tl.full([BLOCK], {NEG_INF}, tl.float32)")
    if with_index:
        e("bidx = tl.full([BLOCK], -1, tl.int64)")
    e(f"rows = tl.max(tl.where({live}, he - hs, 0), axis=0)    # the block's tallest bin")
    e(f"cols = tl.max(tl.where({live}, we - ws, 0), axis=0)")
    e("for a in range(0, rows):")
    ctx.indent += 1
    e("for bb in range(0, cols):")
    ctx.indent += 1
    e(f"ok = {live} & (hs + a < he) & (ws + bb < we)")
    v = ctx.load(x_at, "plane + (hs + a) * W + ws + bb", "c", "ok", other=NEG_INF)
    if with_index:
        e(f"take = ok & ({v} > best)")
        e(f"best = tl.where(take, {v}, best)")
        e("bidx = tl.where(take, (hs + a) * W + ws + bb, bidx)")
    else:
        e(f"best = tl.where(ok & ({v} > best), {v}, best)")
    ctx.indent -= 2
    e("best = tl.where((he <= hs) | (we <= ws), 0.0, best)")


def _roi_setup(ctx, what: str) -> int:
    """Sizes, the launch over the output, SCALE; returns the RoIs' rank (2 or 3)."""
    rank = _roi_sizes(ctx, 0, 1)
    _elements(ctx, numel(ctx.out_shape(0)), what)
    ctx.emit(f"SCALE = tl.full([], {float(ctx.attrs['spatial_scale'])!r}, tl.float64)")
    return rank


def _roi_sizes(ctx, x_at: int, rois_at: int) -> int:
    """C, H, W of the map (input x_at) and P (boxes per image) or R (RoIs) of input rois_at;
    returns the RoIs' rank (2: [R, 5], 3: [N, P, 4])."""
    _, c, h, w = ctx.in_shape(x_at)
    rois = ctx.in_shape(rois_at)
    ctx.int("C", c), ctx.int("H", h), ctx.int("W", w)
    ctx.int("P" if len(rois) == 3 else "R", rois[1] if len(rois) == 3 else rois[0])
    return len(rois)


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


def _align_box(ctx, rank: int, at: int) -> None:
    """b, the box bx0, by0 (scaled, shifted by -0.5 when `aligned`), its size rh, rw (at
    least a cell unless aligned), the sample grid gh x gw of each bin and the bins' sizes
    step_h, step_w of RoI r (input `at`), in float32 as the reference computes them."""
    e = ctx.emit
    cols = _roi_row(ctx, rank, at)
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


def roi_align(ctx) -> None:
    """The mean of gh x gw bilinear samples per bin (gh = sampling_ratio, or ceil(roi_h / PH)
    per RoI when it is <= 0), the box scaled and shifted by -0.5 when `aligned`, in float32
    as the reference computes it; the sample loops run to the block's largest grid."""
    rank = _roi_bins_setup(ctx)
    e = ctx.emit
    _align_box(ctx, rank, 1)
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


# -- the RoI gradients: gathers over the RoIs of each pixel's image, no atomics ----------------

def _grad_setup(ctx) -> int:
    """dL/dx of a RoI op (gy, x, rois): sizes, the launch over x's elements [N, C, H, W],
    SCALE, and n, c, py, px of each; returns the RoIs' rank."""
    rank = _roi_sizes(ctx, 1, 2)
    _elements(ctx, numel(ctx.in_shape(1)), "x's elements")
    for line in ("px = offs % W", "py = (offs // W) % H", "c = (offs // (H * W)) % C",
                 "n = offs // (H * W * C)",
                 f"SCALE = tl.full([], {float(ctx.attrs['spatial_scale'])!r}, tl.float64)"):
        ctx.emit(line)
    return rank


def _each_roi(ctx, rank: int) -> None:
    """Opens the loop over the RoIs that may hold pixel (n, py, px), in the reference's order:
    r (a tile), and `live`, the lanes whose image is RoI r's. Boxes per image: the P of image
    n; [R, 5] RoIs: all R, each lane testing the RoI's image index."""
    e = ctx.emit
    if rank == 3:
        e("for q in range(0, P):")
        ctx.indent += 1
        e("r = n * P + q")
        return
    e("for q in range(0, R):")
    ctx.indent += 1
    e("r = offs * 0 + q")


def _live(rank: int) -> str:
    return "mask" if rank == 3 else "mask & (b == n)"


def _pool_candidates(ctx, live: str, bins_h: str, bins_w: str) -> None:
    """lo_h..hi_h, lo_w..hi_w: the bins along each axis that may hold the pixel (bin i spans
    [floor(i*bin), ceil((i+1)*bin)) from the corner, so i in (d/bin - 1, (d+1)/bin), d the
    pixel's offset from the corner; one bin of margin each side for rounding: each candidate
    is tested exactly), and n_h, n_w, the block's largest counts."""
    e = ctx.emit
    for a, p, start, bins in (("h", "py", "y0", bins_h), ("w", "px", "x0", bins_w)):
        e(f"d = ({p} - {start}).to(tl.float64)")
        e(f"lo_{a} = tl.maximum(tl.floor(d / bin_{a}).to(tl.int64) - 1, 0)")
        e(f"hi_{a} = tl.minimum(tl.floor((d + 1) / bin_{a}).to(tl.int64) + 1, {bins})")
        e(f"n_{a} = tl.max(tl.where({live}, hi_{a} - lo_{a}, 0), axis=0)")


def _pool_grad(ctx, live: str, bins_h: str, bins_w: str, gy_offs: str, acc: str) -> None:
    """acc += gy of every bin of RoI r whose argmax (recomputed by the forward's scan) is the
    pixel, in the reference's order (bins row-major)."""
    e = ctx.emit
    _bin_sizes(ctx, bins_h, bins_w)
    _pool_candidates(ctx, live, bins_h, bins_w)
    e("for di in range(0, n_h):")
    ctx.indent += 1
    e("i = lo_h + di")
    e("for dj in range(0, n_w):")
    ctx.indent += 1
    e("j = lo_w + dj")
    _bin_edges(ctx, "i", "j")
    e(f"inb = {live} & (i < hi_h) & (j < hi_w) & (hs <= py) & (py < he) & (ws <= px) "
      "& (px < we)")
    _bin_max(ctx, "inb", x_at=1, with_index=True)
    e("hit = inb & (bidx == py * W + px)")
    g = ctx.load(0, gy_offs, "c", "hit")
    e(f"{acc} += tl.where(hit, {g}, 0.0)")
    ctx.indent -= 2


def roi_pool_bwd(ctx) -> None:
    """dL/dx[n, c, py, px]: the sum of gy over the bins (of the RoIs of image n) whose argmax
    is this pixel: RoI by RoI, the candidate bins tested and their argmax recomputed."""
    ph, pw = ctx.in_shape(0)[2:]
    ctx.int("PH", ph), ctx.int("PW", pw)
    rank = _grad_setup(ctx)
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    _each_roi(ctx, rank)
    _roi_corners(ctx, rank, 2)
    _pool_grad(ctx, _live(rank), "PH", "PW", "((r * C + c) * PH + i) * PW + j", "acc")
    ctx.indent -= 1
    ctx.epilogue("acc", "offs", "c", "mask")


def roi_spp_bwd(ctx) -> None:
    """roi_pool_bwd at each level (L x L bins, its slice of gy [R, WIDTH]), each level summed
    on its own and then added, as the reference adds the levels' gradients."""
    levels, width = _levels(ctx, ctx.in_shape(1)[1])
    ctx.int("WIDTH", width)
    rank = _grad_setup(ctx)
    e = ctx.emit
    e("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    for k, lv, base in levels:
        e(f"# level {k}: {lv} x {lv} bins from element {base}")
        e("lacc = tl.zeros([BLOCK], dtype=tl.float32)")
        _each_roi(ctx, rank)
        _roi_corners(ctx, rank, 2)
        _pool_grad(ctx, _live(rank), str(lv), str(lv),
                   f"r * WIDTH + {base} + c * {lv * lv} + i * {lv} + j", "lacc")
        ctx.indent -= 1
        e("acc += lacc")
    ctx.epilogue("acc", "offs", "c", "mask")


def _align_candidates(ctx, live: str) -> None:
    """lo_h..hi_h, lo_w..hi_w: the bins whose samples may touch the pixel (a sample at y
    touches rows floor(y), floor(y) + 1 and, clamped, row 0 from [-1, 0) and row H - 1 up
    to H: so y in [py - 1, py + 1]; bin i's samples lie between by0 + i*step and
    by0 + (i+1)*step), two bins of margin each side; n_h, n_w the block's largest counts."""
    e = ctx.emit
    for a, p, start, step, bins in (("h", "py", "by0", "step_h", "PH"),
                                    ("w", "px", "bx0", "step_w", "PW")):
        e(f"sd = tl.where({step} != 0, {step}, 1.0)")
        e(f"u = ({p}.to(tl.float32) - 1.0 - {start}) / sd")
        e(f"v = ({p}.to(tl.float32) + 1.0 - {start}) / sd")
        e(f"lo = tl.minimum(tl.maximum(tl.floor(tl.minimum(u, v)) - 2.0, 0.0), {bins} * 1.0)")
        e(f"hi = tl.minimum(tl.maximum(tl.floor(tl.maximum(u, v)) + 2.0, 0.0), {bins} * 1.0)")
        e(f"lo_{a} = tl.where({step} != 0, lo.to(tl.int64), 0)")
        e(f"hi_{a} = tl.where({step} != 0, hi.to(tl.int64), {bins})")
        e(f"n_{a} = tl.max(tl.where({live}, hi_{a} - lo_{a}, 0), axis=0)")
        e(f"k_{a} = tl.max(tl.where({live}, g{a}, 0), axis=0)")


def _align_weight(ctx, a: str, o: str, p: str, start: str, step: str, size: str,
                  out: str) -> None:
    """out: the weight of bin `o`'s samples on cell `p` along axis a (the forward's sample
    positions and taps), over the bin's g{a} samples."""
    e = ctx.emit
    e(f"{out} = tl.zeros([BLOCK], dtype=tl.float32)")
    e(f"for s in range(0, k_{a}):")
    ctx.indent += 1
    e(f"pos = {start} + {o}.to(tl.float32) * {step} + (s + 0.5) * {step} / "
      f"tl.maximum(g{a}, 1).to(tl.float32)")
    _align_axis(ctx, a, "pos", size)
    e(f"{out} += tl.where((s < g{a}) & {a}ok, tl.where({a}0 == {p}, 1.0 - {a}l, 0.0) "
      f"+ tl.where({a}1 == {p}, {a}l, 0.0), 0.0)")
    ctx.indent -= 1
    e(f"{out} = {out} / tl.maximum(g{a}, 1).to(tl.float32)")


def roi_align_bwd(ctx) -> None:
    """dL/dx[n, c, py, px] = sum over the RoIs r of image n and their bins (i, j) of
    Ay[r, i, py] gy[r, c, i, j] Ax[r, j, px]: bilinear interpolation is separable, so each
    candidate bin's row and column weights are recomputed from its samples, as the forward
    places them."""
    ph, pw = ctx.in_shape(0)[2:]
    ctx.int("PH", ph), ctx.int("PW", pw)
    rank = _grad_setup(ctx)
    e = ctx.emit
    e("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    _each_roi(ctx, rank)
    _align_box(ctx, rank, 2)
    live = _live(rank)
    _align_candidates(ctx, live)
    e("for di in range(0, n_h):")
    ctx.indent += 1
    e("i = lo_h + di")
    _align_weight(ctx, "h", "i", "py", "by0", "step_h", "H", "wy")
    e("row = tl.zeros([BLOCK], dtype=tl.float32)")
    e("for dj in range(0, n_w):")
    ctx.indent += 1
    e("j = lo_w + dj")
    _align_weight(ctx, "w", "j", "px", "bx0", "step_w", "W", "wx")
    e(f"inb = {live} & (i < hi_h) & (j < hi_w)")
    g = ctx.load(0, "((r * C + c) * PH + i) * PW + j", "c", "inb")
    e(f"row += tl.where(inb, wx * {g}, 0.0)")
    ctx.indent -= 1
    e("acc += wy * row")
    ctx.indent -= 2
    ctx.epilogue("acc", "offs", "c", "mask")

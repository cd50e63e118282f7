"""Dense-prediction kernels: crop and its gradient, bilinear resizing and its gradient,
adaptive average pooling and its gradient, per-pixel cross-entropy and its gradient.

The resampling kernels walk their output (NCHW, flat, in blocks of BLOCK elements) and
*gather* what each element needs, so no kernel scatters and none needs atomics:

    pid -> offs -> (nc, oh, ow), chan -> source offsets -> loads -> epilogue

crop            x[nc, oh + OFFH, ow + OFFW]
crop_bwd        gy[nc, ih - OFFH, iw - OFFW] inside the window, else 0
resize_bilinear the four taps of F.interpolate(mode="bilinear"): source row
                src = s * (oh + 0.5) - 0.5 clamped at 0 (align_corners: s * oh), with
                s = H / OH (align_corners: (H - 1) / (OH - 1)); h0 = floor(src),
                h1 = h0 + (h0 < H - 1), weights 1 - l, l for l = src - h0; likewise columns
resize_bwd      for input pixel ih: the outputs whose taps reach it lie in a window of at
                most TH rows starting at floor((ih - 1.5) / s) - 1 (src is monotonic in oh);
                each candidate's weight on ih is recomputed exactly as the forward computes
                it (0 for the rest), so the gather equals torch's scatter
adaptive_avg    window rows [floor(oh*H/OH), ceil((oh+1)*H/OH)), at most KH_MAX of them
adaptive_bwd    for input row ih the outputs whose window holds it: candidates from
                floor(ih*OH/H) - 1, TH of them, each tested and weighted by 1 / its area

pixel_cross_entropy   one program loops over all N*H*W pixels in blocks (a deterministic
                mean, as loss.py's cross-entropy): per pixel logsumexp over the C classes
                (stride H*W) minus the label's logit, summed over pixels whose label is not
                IGNORE, divided by their count
pixel_cross_entropy_bwd   a grid over pixel blocks; each program first counts the valid
                pixels, then writes gy * (softmax - onehot) / count (0 at ignored pixels)
"""
from __future__ import annotations

import math

from . import cdiv, numel, pow2

BLOCK = 1024
PIXELS = 256           # pixels per block of the cross-entropy kernels


def render(ctx) -> None:
    RENDER[ctx.node.op](ctx)


def walk(ctx, shape: tuple) -> None:
    """offs over an NCHW output -> mask, nc, oh, ow, chan; sizes NC, OH, OW (int args)."""
    nb, c, oh, ow = shape
    total = numel(shape)
    ctx.int("TOTAL", total), ctx.int("C", c), ctx.int("OH", oh), ctx.int("OW", ow)
    ctx.const("BLOCK", BLOCK)
    ctx.grid = (max(1, cdiv(total, BLOCK)),)
    ctx.emit("offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)")
    ctx.emit("mask = offs < TOTAL")
    ctx.emit("ow = offs % OW")
    ctx.emit("oh = (offs // OW) % OH")
    ctx.emit("nc = offs // (OW * OH)")
    ctx.emit("chan = nc % C")


def in_size(ctx, i: int) -> None:
    """H, W of input i (int args)."""
    _, _, h, w = ctx.in_shape(i)
    ctx.int("H", h), ctx.int("W", w)


def finish(ctx, val: str) -> None:
    ctx.epilogue(val, "offs", "chan", "mask")


# -- crop ------------------------------------------------------------------------------------

def crop(ctx) -> None:
    walk(ctx, ctx.out_shape(0))
    in_size(ctx, 0)
    oh, ow = ctx.attrs["offset"]
    ctx.int("OFFH", oh), ctx.int("OFFW", ow)
    v = ctx.load(0, "nc * H * W + (oh + OFFH) * W + ow + OFFW", "chan", "mask")
    finish(ctx, v)


def crop_bwd(ctx) -> None:
    walk(ctx, ctx.out_shape(0))                   # x's shape
    gh, gw = ctx.in_shape(0)[2:]
    ctx.int("GH", gh), ctx.int("GW", gw)
    oh, ow = ctx.attrs["offset"]
    ctx.int("OFFH", oh), ctx.int("OFFW", ow)
    ctx.emit("th = oh - OFFH")
    ctx.emit("tw = ow - OFFW")
    ctx.emit("inside = mask & (th >= 0) & (th < GH) & (tw >= 0) & (tw < GW)")
    v = ctx.load(0, "nc * GH * GW + th * GW + tw", "chan", "inside")
    finish(ctx, v)


# -- bilinear resizing -----------------------------------------------------------------------

def _scale(n_in: int, n_out: int, align: bool) -> float:
    """F.interpolate's source step (area_pixel_compute_scale)."""
    if align:
        return (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    return n_in / n_out


def _taps(ctx, axis: str, dst: str, size: str, scale: str) -> None:
    """{axis}0, {axis}1 (int64 source indices) and {axis}l (weight of {axis}1) of dst."""
    if ctx.attrs["align_corners"]:
        ctx.emit(f"{axis}src = {scale} * {dst}.to(tl.float32)")
    else:
        ctx.emit(f"{axis}src = tl.maximum({scale} * ({dst}.to(tl.float32) + 0.5) - 0.5, 0.0)")
    ctx.emit(f"{axis}0 = {axis}src.to(tl.int64)   # floor: src >= 0")
    ctx.emit(f"{axis}1 = {axis}0 + ({axis}0 < {size} - 1).to(tl.int64)")
    ctx.emit(f"{axis}l = {axis}src - {axis}0.to(tl.float32)")


def _resize_scales(ctx, in_hw: tuple, out_hw: tuple) -> tuple[float, float]:
    align = ctx.attrs["align_corners"]
    sh, sw = (_scale(i, o, align) for i, o in zip(in_hw, out_hw))
    ctx.float("SH", sh), ctx.float("SW", sw)
    return sh, sw


def resize_bilinear(ctx) -> None:
    walk(ctx, ctx.out_shape(0))
    in_size(ctx, 0)
    _resize_scales(ctx, ctx.in_shape(0)[2:], ctx.out_shape(0)[2:])
    _taps(ctx, "h", "oh", "H", "SH")
    _taps(ctx, "w", "ow", "W", "SW")
    ctx.emit("base = nc * H * W")
    v = {}
    for a in "01":
        for b in "01":
            v[a + b] = ctx.load(0, f"base + h{a} * W + w{b}", "chan", "mask")
    ctx.emit(f"top = (1.0 - wl) * {v['00']} + wl * {v['01']}")
    ctx.emit(f"bot = (1.0 - wl) * {v['10']} + wl * {v['11']}")
    finish(ctx, ctx.let("(1.0 - hl) * top + hl * bot"))


def _reach(scale: float) -> int:
    """How many consecutive outputs, at most, have taps on one input row."""
    return int(math.ceil(3.0 / scale)) + 4 if scale > 0 else 1


def resize_bilinear_bwd(ctx) -> None:
    walk(ctx, ctx.out_shape(0))                   # x's shape: (nc, oh, ow) is an input pixel
    gh, gw = ctx.in_shape(0)[2:]
    h, w = ctx.out_shape(0)[2:]
    ctx.int("H", h), ctx.int("W", w), ctx.int("GH", gh), ctx.int("GW", gw)
    sh, sw = _resize_scales(ctx, (h, w), (gh, gw))
    ctx.const("TH", _reach(sh) if sh > 0 else gh)
    ctx.const("TW", _reach(sw) if sw > 0 else gw)
    for axis, s, scale in (("h", sh, "SH"), ("w", sw, "SW")):
        pos = "o" + axis                          # this input pixel's row (column)
        if s > 0:                                 # a lower bound of the first output reaching it
            ctx.emit(f"{axis}lo = tl.maximum(((({pos} - 1).to(tl.float32) - 0.5) / {scale} "
                     f"+ 0.5).to(tl.int64) - 2, 0)")
        else:                                     # one output row/column: every input's 0
            ctx.emit(f"{axis}lo = {pos} * 0")
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    ctx.emit("for i in range(TH):")
    ctx.indent += 1
    ctx.emit("gy_h = hlo + i")
    _taps(ctx, "h", "gy_h", "H", "SH")
    ctx.emit("wt_h = tl.where(h0 == oh, 1.0 - hl, 0.0) + tl.where(h1 == oh, hl, 0.0)")
    ctx.emit("ok_h = mask & (gy_h < GH)")
    ctx.emit("for j in range(TW):")
    ctx.indent += 1
    ctx.emit("gy_w = wlo + j")
    _taps(ctx, "w", "gy_w", "W", "SW")
    ctx.emit("wt_w = tl.where(w0 == ow, 1.0 - wl, 0.0) + tl.where(w1 == ow, wl, 0.0)")
    ctx.emit("ok = ok_h & (gy_w < GW) & (wt_h * wt_w != 0.0)")
    g = ctx.load(0, "nc * GH * GW + gy_h * GW + gy_w", "chan", "ok")
    ctx.emit(f"acc += tl.where(ok, wt_h * wt_w * {g}, 0.0)")
    ctx.indent -= 2
    finish(ctx, "acc")


# -- adaptive average pooling ----------------------------------------------------------------

def _window(axis: str, o: str, n_in: str, n_out: str) -> str:
    """Start and end (exclusive) of output `o`'s adaptive window along an axis."""
    return (f"{axis}s = ({o} * {n_in}) // {n_out}\n"
            f"{axis}e = (({o} + 1) * {n_in} + {n_out} - 1) // {n_out}")


def _emit_lines(ctx, text: str) -> None:
    for line in text.splitlines():
        ctx.emit(line)


def adaptive_avg_pool(ctx) -> None:
    walk(ctx, ctx.out_shape(0))
    in_size(ctx, 0)
    (h, w), (oh, ow) = ctx.in_shape(0)[2:], ctx.out_shape(0)[2:]
    ctx.const("KH", -(-h // oh) + 1), ctx.const("KW", -(-w // ow) + 1)
    _emit_lines(ctx, _window("h", "oh", "H", "OH"))
    _emit_lines(ctx, _window("w", "ow", "W", "OW"))
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    ctx.emit("for i in range(KH):")
    ctx.indent += 1
    ctx.emit("for j in range(KW):")
    ctx.indent += 1
    ctx.emit("ok = mask & (hs + i < he) & (ws + j < we)")
    v = ctx.load(0, "nc * H * W + (hs + i) * W + ws + j", "chan", "ok")
    ctx.emit(f"acc += tl.where(ok, {v}, 0.0)")
    ctx.indent -= 2
    finish(ctx, ctx.let("acc / ((he - hs) * (we - ws)).to(tl.float32)"))


def adaptive_avg_pool_bwd(ctx) -> None:
    walk(ctx, ctx.out_shape(0))                   # x's shape
    gh, gw = ctx.in_shape(0)[2:]
    h, w = ctx.out_shape(0)[2:]
    ctx.int("H", h), ctx.int("W", w), ctx.int("GH", gh), ctx.int("GW", gw)
    ctx.const("TH", -(-gh // h) + 2), ctx.const("TW", -(-gw // w) + 2)
    ctx.emit("hlo = tl.maximum((oh * GH) // H - 1, 0)")
    ctx.emit("wlo = tl.maximum((ow * GW) // W - 1, 0)")
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    ctx.emit("for i in range(TH):")
    ctx.indent += 1
    ctx.emit("gy_h = hlo + i")
    _emit_lines(ctx, _window("h", "gy_h", "H", "GH"))
    ctx.emit("in_h = mask & (gy_h < GH) & (hs <= oh) & (oh < he)")
    ctx.emit("for j in range(TW):")
    ctx.indent += 1
    ctx.emit("gy_w = wlo + j")
    _emit_lines(ctx, _window("w", "gy_w", "W", "GW"))
    ctx.emit("ok = in_h & (gy_w < GW) & (ws <= ow) & (ow < we)")
    g = ctx.load(0, "nc * GH * GW + gy_h * GW + gy_w", "chan", "ok")
    ctx.emit(f"acc += tl.where(ok, {g} / ((he - hs) * (we - ws)).to(tl.float32), 0.0)")
    ctx.indent -= 2
    finish(ctx, "acc")


# -- per-pixel cross-entropy -----------------------------------------------------------------

def _pixels(ctx, zi: int) -> None:
    """Sizes of logits input zi: P pixels (N*H*W), HW, V classes; block constexprs."""
    nb, v, h, w = ctx.in_shape(zi)
    ctx.int("P", nb * h * w), ctx.int("HW", h * w), ctx.int("V", v)
    ctx.int("IGNORE", ctx.attrs["ignore"])
    ctx.const("BLOCK_P", PIXELS)
    ctx.const("BLOCK_V", pow2(v))


def _pixel_tile(ctx, zi: int, li: int, start: str) -> None:
    """pix, pmask, lab, valid (BLOCK_P,); z (BLOCK_P, BLOCK_V) logits (-inf padding), offs,
    zmask, cc; zmax, zsum (softmax denominator, shifted)."""
    e = ctx.emit
    e(f"pix = {start} + tl.arange(0, BLOCK_P)  # (BLOCK_P,) pixels (n, h, w)")
    e("pmask = pix < P")
    lab = ctx.load(li, "pix", "pix", "pmask", other="0")
    e(f"lab = {lab}.to(tl.int64)")
    e("valid = pmask & (lab != IGNORE)")
    e("cc = tl.arange(0, BLOCK_V)  # (BLOCK_V,) classes")
    e("offs = ((pix // HW) * V * HW + pix % HW)[:, None] + (cc * HW)[None, :]")
    e("zmask = pmask[:, None] & (cc < V)[None, :]")
    z = ctx.load(zi, "offs", "cc[None, :]", "zmask", other="float('-inf')")
    e(f"z = {z}")
    e("zmax = tl.max(z, axis=1)")
    e("zmax = tl.where(pmask, zmax, 0.0)")
    e("ez = tl.where(zmask, tl.exp(z - zmax[:, None]), 0.0)")
    e("zsum = tl.sum(ez, axis=1)")
    e("zsum = tl.where(pmask, zsum, 1.0)")


def pixel_cross_entropy(ctx) -> None:
    _pixels(ctx, 0)
    ctx.grid = (1,)
    e = ctx.emit
    e("acc = tl.zeros([BLOCK_P], dtype=tl.float32)")
    e("cnt = tl.zeros([BLOCK_P], dtype=tl.float32)")
    e("for s0 in range(0, P, BLOCK_P):")
    ctx.indent += 1
    _pixel_tile(ctx, 0, 1, "s0")
    e("zlab = tl.sum(tl.where(cc[None, :] == lab[:, None], z, 0.0), axis=1)")
    e("acc += tl.where(valid, zmax + tl.log(zsum) - zlab, 0.0)")
    e("cnt += valid.to(tl.float32)")
    ctx.indent -= 1
    if ctx.stores(0):
        e(f"tl.store({ctx.out_ptr(0)}, tl.sum(acc, axis=0) / tl.sum(cnt, axis=0))")


def pixel_cross_entropy_bwd(ctx) -> None:
    _pixels(ctx, 1)
    p = ctx.in_shape(2)
    ctx.grid = (max(1, cdiv(numel(p), PIXELS)),)
    e = ctx.emit
    e("cnt = tl.zeros([BLOCK_P], dtype=tl.float32)")
    e("for s0 in range(0, P, BLOCK_P):   # the count of valid pixels, in every program")
    ctx.indent += 1
    e("q = s0 + tl.arange(0, BLOCK_P)")
    lab = ctx.load(2, "q", "q", "q < P", other="IGNORE")
    e(f"cnt += ((q < P) & ({lab}.to(tl.int64) != IGNORE)).to(tl.float32)")
    ctx.indent -= 1
    e("count = tl.maximum(tl.sum(cnt, axis=0), 1.0)")
    gy = ctx.load(0, "0", "0", "True")
    _pixel_tile(ctx, 1, 2, "tl.program_id(0).to(tl.int64) * BLOCK_P")
    e("onehot = (cc[None, :] == lab[:, None]).to(tl.float32)")
    e(f"g = {gy} * (ez / zsum[:, None] - onehot) / count")
    e("g = tl.where(valid[:, None], g, 0.0)")
    if ctx.stores(0):
        e(f"tl.store({ctx.out_ptr(0)} + offs, g, mask=zmask)")


RENDER = {"crop": crop, "crop_bwd": crop_bwd, "resize_bilinear": resize_bilinear,
          "resize_bilinear_to": resize_bilinear, "resize_bilinear_bwd": resize_bilinear_bwd,
          "adaptive_avg_pool": adaptive_avg_pool, "adaptive_avg_pool_bwd": adaptive_avg_pool_bwd,
          "pixel_cross_entropy": pixel_cross_entropy,
          "pixel_cross_entropy_bwd": pixel_cross_entropy_bwd}

"""Pooling kernels: max and average pooling and their gradients, global average pooling,
nearest upsampling and its gradient.

Every kernel walks one flat NCHW tensor in blocks of BLOCK elements (the output, or for a
gradient the input gradient) and computes each element on its own, so nothing is scattered
and no atomics are needed:

    pid -> offs (flat, int64) -> (nc, h, w) -> window loads -> max / sum -> epilogue

    max_pool2d            max over the window; padding is -inf (never chosen)
    max_pool2d_bwd        gather form: each input pixel sums gy over the windows that hold it
                          and whose argmax (recomputed from x, first maximum in row-major order,
                          as PyTorch) is that pixel
    avg_pool2d            window sum / PyTorch's divisor (count_include_pad, ceil-mode windows
                          clipped at the padded border)
    avg_pool2d_bwd        gather form: each input pixel sums gy / divisor over its windows
    global_avg_pool       (BLOCK_R, BLOCK_HW) tiles: one row per (n, c), a loop over H*W
    global_avg_pool_bwd   gy[n, c] / (H*W) broadcast
    upsample_nearest      x[n, c, oh // S, ow // S]
    upsample_nearest_bwd  sum of gy over each S x S block

Input 0 (x, or gy for the gradients) is read with `ctx.load`, at its own flat offset and
channel, so an elementwise chain before it can be inlined (`triton_prologue = (0,)`); output
0 goes through `ctx.epilogue` (`triton_epilogue`).
"""
from __future__ import annotations

from . import cdiv, numel, pow2

BLOCK = 512            # flat elements per program (GPU default; tunable)
CHOICES = (128, 256, 512, 1024)
INTERPRETER_BLOCK = 8192   # the interpreter pays per program: few, long ones
BLOCK_R = 16           # global average pool: (n, c) rows per program
BLOCK_HW = 64          # global average pool: positions per loop step
NEG_INF = 'float("-inf")'


def render(ctx) -> None:
    RENDER[ctx.node.op](ctx)


# -- shared pieces -----------------------------------------------------------------------------

def window_taps(ctx, within: str) -> None:
    """Open the loops over a window's taps (from `hs`, `ws`): `hh`, `ww`, and `ok` (the tap is
    in the image and `within` holds); the caller closes them with `ctx.indent -= 2`."""
    ctx.emit("for i in range(KH):")
    ctx.indent += 1
    ctx.emit("hh = hs + i")
    ctx.emit("for j in range(KW):")
    ctx.indent += 1
    ctx.emit("ww = ws + j")
    ctx.emit(f"ok = {within} & (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)")


def flat(ctx, shape: tuple, hname: str, wname: str) -> tuple[str, str, str, str]:
    """pid -> offs over an (N, C, H, W) tensor -> mask, and its coordinates: returns the names
    of (nc, h, w, chan), all int64 blocks of BLOCK; its height and width become the int
    parameters `hname` and `wname`."""
    _, c, h, w = shape
    total = numel(shape)
    n = ctx.int("n", total)
    cc, hh, ww = ctx.int("C", c), ctx.int(hname, h), ctx.int(wname, w)
    default = min(INTERPRETER_BLOCK, max(16, pow2(total))) if ctx.interpreted else BLOCK
    block = ctx.tunable("BLOCK", default, CHOICES)
    blk = "BLOCK"
    ctx.grid = (max(1, cdiv(total, block)),)
    ctx.emit(f"offs = tl.program_id(0).to(tl.int64) * {blk} + tl.arange(0, {blk})  # (BLOCK,)")
    ctx.emit(f"mask = offs < {n}")
    h_, w_ = hname.lower(), wname.lower()
    ctx.emit(f"{w_} = offs % {ww}")
    ctx.emit(f"{h_} = (offs // {ww}) % {hh}")
    ctx.emit(f"nc = offs // {ww} // {hh}")
    ctx.emit(f"chan = nc % {cc}")
    return "nc", h_, w_, "chan"


def window_consts(ctx) -> tuple[str, ...]:
    (kh, kw), (sh, sw), (ph, pw) = ctx.attrs["kernel"], ctx.attrs["stride"], ctx.attrs["padding"]
    return (ctx.const("KH", kh), ctx.const("KW", kw), ctx.const("SH", sh), ctx.const("SW", sw),
            ctx.const("PH", ph), ctx.const("PW", pw))


def finish(ctx, acc: str) -> None:
    """Output 0 is `acc` at the walk's offsets: the epilogue, or a plain store."""
    from ..ops import get
    if get(ctx.node.op).triton_epilogue:
        ctx.epilogue(acc, "offs", "chan", "mask")
    elif ctx.stores(0):
        ctx.emit(f"tl.store({ctx.out_ptr(0)} + offs, {acc}, mask=mask)")


def divisor(ctx, hs: str, ws: str) -> str:
    """PyTorch's avg-pool divisor of the window starting at (hs, ws): the window clipped at the
    padded border (ceil mode may run past it), or also at the input (count_include_pad off)."""
    ctx.emit(f"he = tl.minimum({hs} + KH, H + PH)")
    ctx.emit(f"we = tl.minimum({ws} + KW, W + PW)")
    if ctx.attrs.get("count_include_pad", True):
        ctx.emit(f"div = ((he - {hs}) * (we - {ws})).to(tl.float32)")
    else:
        ctx.emit(f"div = ((tl.minimum(he, H) - tl.maximum({hs}, 0)) * "
                 f"(tl.minimum(we, W) - tl.maximum({ws}, 0))).to(tl.float32)")
    return "div"


def windows_of_pixel(ctx, body) -> None:
    """For each input pixel (h, w) of the flat walk: loop over the output windows (oh, ow)
    that contain it (at most ceil(K / S) per dimension, in ascending order) with `win` the
    mask of the valid ones; `body()` emits the loop body."""
    (kh, kw), (sh, sw) = ctx.attrs["kernel"], ctx.attrs["stride"]
    dh, dw = ctx.const("DH", cdiv(kh, sh)), ctx.const("DW", cdiv(kw, sw))
    ctx.emit(f"oh_lo = (h + PH) // SH - ({dh} - 1)  # candidates: oh_lo .. the last start <= h")
    ctx.emit(f"ow_lo = (w + PW) // SW - ({dw} - 1)")
    ctx.emit(f"for a in range({dh}):")
    ctx.indent += 1
    ctx.emit("oh = oh_lo + a")
    ctx.emit("hs = oh * SH - PH")
    ctx.emit("in_h = (oh >= 0) & (oh < OH) & (h < hs + KH)")
    ctx.emit(f"for b in range({dw}):")
    ctx.indent += 1
    ctx.emit("ow = ow_lo + b")
    ctx.emit("ws = ow * SW - PW")
    ctx.emit("win = mask & in_h & (ow >= 0) & (ow < OW) & (w < ws + KW)")
    body()
    ctx.indent -= 2


# -- max pooling -------------------------------------------------------------------------------

def max_pool2d(ctx) -> None:
    _, _, ih, iw = ctx.in_shape(0)
    ctx.int("H", ih), ctx.int("W", iw)
    window_consts(ctx)
    nc, oh, ow, chan = flat(ctx, ctx.out_shape(0), "OH", "OW")
    ctx.emit(f"xbase = {nc} * H * W")
    ctx.emit(f"hs = {oh} * SH - PH")
    ctx.emit(f"ws = {ow} * SW - PW")
    ctx.emit(f"best = tl.full([BLOCK], {NEG_INF}, tl.float32)")
    window_taps(ctx, "mask")
    v = ctx.load(0, "xbase + hh * W + ww", chan, "ok")
    ctx.emit(f"v = tl.where(ok, {v}, {NEG_INF})")
    ctx.emit("best = tl.where((v > best) | (v != v), v, best)   # NaN wins, as in PyTorch")
    ctx.indent -= 2
    ctx.emit("best = tl.where(mask, best, 0.0)   # no -inf in the epilogue's masked lanes")
    finish(ctx, "best")


def max_pool2d_bwd(ctx) -> None:
    """dx[p] = sum of gy over the windows whose argmax is p; argmax recomputed from x."""
    _, _, oh, ow = ctx.in_shape(0)
    ctx.int("OH", oh), ctx.int("OW", ow)
    window_consts(ctx)
    nc, h, w, chan = flat(ctx, ctx.out_shape(0), "H", "W")
    ctx.emit(f"xbase = {nc} * H * W")
    ctx.emit(f"gbase = {nc} * OH * OW")
    ctx.emit(f"me = {h} * W + {w}")
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    xp = ctx.in_ptr(1)

    def body():
        # argmax of window (oh, ow): PyTorch starts at its first in-image position and moves
        # on only to a strictly larger value (or a NaN)
        ctx.emit(f"best = tl.full([BLOCK], {NEG_INF}, tl.float32)")
        ctx.emit("arg = tl.maximum(hs, 0) * W + tl.maximum(ws, 0)")
        window_taps(ctx, "win")
        ctx.emit(f"v = tl.load({xp} + xbase + hh * W + ww, mask=ok, other=0.0)")
        ctx.emit(f"v = tl.where(ok, v, {NEG_INF})")
        ctx.emit("better = (v > best) | (v != v)")
        ctx.emit("best = tl.where(better, v, best)")
        ctx.emit("arg = tl.where(better, hh * W + ww, arg)")
        ctx.indent -= 2
        ctx.emit("hit = win & (arg == me)")
        g = ctx.load(0, "gbase + oh * OW + ow", chan, "hit")
        ctx.emit(f"acc += tl.where(hit, {g}, 0.0)")

    windows_of_pixel(ctx, body)
    finish(ctx, "acc")


# -- average pooling ---------------------------------------------------------------------------

def avg_pool2d(ctx) -> None:
    _, _, ih, iw = ctx.in_shape(0)
    ctx.int("H", ih), ctx.int("W", iw)
    window_consts(ctx)
    nc, oh, ow, chan = flat(ctx, ctx.out_shape(0), "OH", "OW")
    ctx.emit(f"xbase = {nc} * H * W")
    ctx.emit(f"hs = {oh} * SH - PH")
    ctx.emit(f"ws = {ow} * SW - PW")
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    window_taps(ctx, "mask")
    v = ctx.load(0, "xbase + hh * W + ww", chan, "ok")
    ctx.emit(f"acc += tl.where(ok, {v}, 0.0)")
    ctx.indent -= 2
    div = divisor(ctx, "hs", "ws")
    finish(ctx, ctx.let(f"acc / {div}"))


def avg_pool2d_bwd(ctx) -> None:
    """dx[p] = sum of gy / divisor over the windows that contain p."""
    _, _, oh, ow = ctx.in_shape(0)
    ctx.int("OH", oh), ctx.int("OW", ow)
    window_consts(ctx)
    nc, h, w, chan = flat(ctx, ctx.out_shape(0), "H", "W")
    ctx.emit(f"gbase = {nc} * OH * OW")
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")

    def body():
        g = ctx.load(0, "gbase + oh * OW + ow", chan, "win")
        div = divisor(ctx, "hs", "ws")
        ctx.emit(f"acc += tl.where(win, {g} / tl.where(win, {div}, 1.0), 0.0)")

    windows_of_pixel(ctx, body)
    finish(ctx, "acc")


# -- global average pooling --------------------------------------------------------------------

def global_avg_pool(ctx) -> None:
    n, c, h, w = ctx.in_shape(0)
    rows_n = ctx.int("NC", n * c)
    cc = ctx.int("C", c)
    hw = ctx.int("HW", h * w)
    br, bhw = ctx.const("BLOCK_R", BLOCK_R), ctx.const("BLOCK_HW", BLOCK_HW)
    ctx.grid = (max(1, cdiv(n * c, BLOCK_R)),)
    ctx.emit(f"offs = tl.program_id(0).to(tl.int64) * {br} + tl.arange(0, {br})  # (BLOCK_R,) rows n*C+c")
    ctx.emit(f"mask = offs < {rows_n}")
    ctx.emit(f"chan = offs % {cc}")
    ctx.emit(f"cols = tl.arange(0, {bhw})  # (BLOCK_HW,)")
    ctx.emit(f"acc = tl.zeros([{br}, {bhw}], dtype=tl.float32)")
    ctx.emit(f"for start in range(0, {hw}, {bhw}):")
    ctx.indent += 1
    ctx.emit("hw = start + cols")
    ctx.emit(f"m = mask[:, None] & (hw[None, :] < {hw})  # (BLOCK_R, BLOCK_HW)")
    v = ctx.load(0, f"offs[:, None] * {hw} + hw[None, :]", "chan[:, None]", "m")
    ctx.emit(f"acc += tl.where(m, {v}, 0.0)")
    ctx.indent -= 1
    finish(ctx, ctx.let(f"tl.sum(acc, axis=1) / {hw}  # (BLOCK_R,)"))


def global_avg_pool_bwd(ctx) -> None:
    _, _, h, w = ctx.out_shape(0)
    nc, _, _, chan = flat(ctx, ctx.out_shape(0), "H", "W")
    hw = ctx.int("HW", h * w)
    g = ctx.load(0, nc, chan, "mask")
    finish(ctx, ctx.let(f"{g} / {hw}"))


# -- nearest upsampling ------------------------------------------------------------------------

def upsample_nearest(ctx) -> None:
    _, _, ih, iw = ctx.in_shape(0)
    ctx.int("H", ih), ctx.int("W", iw)
    s = ctx.const("S", ctx.attrs["scale"])
    nc, oh, ow, chan = flat(ctx, ctx.out_shape(0), "OH", "OW")
    v = ctx.load(0, f"{nc} * H * W + ({oh} // {s}) * W + {ow} // {s}", chan, "mask")
    finish(ctx, v)


def upsample_nearest_bwd(ctx) -> None:
    """dx[n, c, h, w] = sum of gy over the S x S block it was copied to."""
    _, _, gh, gw = ctx.in_shape(0)
    ctx.int("OH", gh), ctx.int("OW", gw)
    s = ctx.const("S", ctx.attrs["scale"])
    nc, h, w, chan = flat(ctx, ctx.out_shape(0), "H", "W")
    ctx.emit(f"gbase = {nc} * OH * OW + ({h} * {s}) * OW + {w} * {s}")
    ctx.emit("acc = tl.zeros([BLOCK], dtype=tl.float32)")
    ctx.emit(f"for i in range({s}):")
    ctx.indent += 1
    ctx.emit(f"for j in range({s}):")
    ctx.indent += 1
    g = ctx.load(0, "gbase + i * OW + j", chan, "mask")
    ctx.emit(f"acc += tl.where(mask, {g}, 0.0)")
    ctx.indent -= 2
    finish(ctx, "acc")


RENDER = {f.__name__: f for f in (max_pool2d, max_pool2d_bwd, avg_pool2d, avg_pool2d_bwd,
                                  global_avg_pool, global_avg_pool_bwd, upsample_nearest,
                                  upsample_nearest_bwd)}

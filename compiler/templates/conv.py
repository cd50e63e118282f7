"""2-D convolution kernels (NCHW, PyTorch's weight layout [out, C/groups, kh, kw]) as implicit
GEMMs: tiles of the GEMM operands are gathered straight from the images with masks (padding,
image borders, strides), never materialised (no im2col buffer).

    conv2d             forward    rows: output pixels (n, oh, ow)   M = N*OH*OW
                                  cols: output channels of a group  N = OC/groups
                                  K:    (c, kh, kw) of the group     K = C/groups*KH*KW
                       A = x patches, B = weight; + bias; epilogue at n*OC*OHW + oc*OHW + ohw
    conv2d_bwd_input   dL/dx      rows: input pixels (n, ih, iw)    M = N*H*W
                                  cols: input channels of a group   N = C/groups
                                  K:    (oc, kh, kw) of the group    K = OC/groups*KH*KW
                       A = gy at the output pixel (oh, ow) whose window puts tap (kh, kw) on
                       (ih, iw): oh = (ih + PH - kh*DH) / SH when that divides exactly and
                       lands inside the output (a gather: no atomics); B = weight; epilogue
    conv2d_bwd_weight  dL/dw      rows: output channels of a group  M = OC/groups
                                  cols: (c, kh, kw) of the group     N = C/groups*KH*KW
                                  K:    output pixels (n, oh, ow)    K = N*OH*OW
                       A = gy, B = x patches; plain store (the op has no epilogue). A
                       sibling sum(gy) {dims=[0,2,3]} (the bias gradient) is accumulated from
                       the gy tiles by the programs with pid_n == 0, as in matmul.py

Groups are program axis 1; axis 0 walks the (M, N) tiles of one group in grouped order.
Kernel size, stride, padding and dilation are constexprs (structural: divisions by them are
cheap); the image sizes are int arguments, so one source serves every layer of a geometry.
Block sizes come from matmul.blocks (autotuned on a GPU, the largest choice under the
interpreter).
"""
from __future__ import annotations

from . import cdiv
from .matmul import blocks, grouped_pids, load_tile


def render(ctx) -> None:
    RENDER[ctx.node.op](ctx)


# -- shared pieces -----------------------------------------------------------------------------

def geometry(ctx, x_shape: tuple, y_shape: tuple) -> None:
    """Int parameters NB, C, H, W (input), OC, OH, OW (output) and the window constexprs."""
    a = ctx.attrs
    (kh, kw), (sh, sw) = a["kernel"], a["stride"]
    (ph, pw), (dh, dw) = a["padding"], a["dilation"]
    nb, c, h, w = x_shape
    _, oc, oh, ow = y_shape
    for name, v in (("NB", nb), ("C", c), ("H", h), ("W", w), ("OC", oc), ("OH", oh),
                    ("OW", ow), ("CG", c // a["groups"]), ("OCG", oc // a["groups"])):
        ctx.int(name, v)
    for name, v in (("KH", kh), ("KW", kw), ("SH", sh), ("SW", sw), ("PH", ph), ("PW", pw),
                    ("DH", dh), ("DW", dw)):
        ctx.const(name, v)


def gemm_head(ctx, m: int, n: int, k: int) -> None:
    """GEMM sizes GM, GN, GK, block sizes, the grid (tiles, groups) and the program's rows
    `rm` and columns `rn` (int64) with their masks m_ok, n_ok; `g` is the group."""
    ctx.int("GM", m), ctx.int("GN", n), ctx.int("GK", k)
    bm, bn, _ = blocks(ctx, m, n, k)
    ctx.const("GROUP_M", 8)
    ctx.grid = (max(1, cdiv(m, bm) * cdiv(n, bn)), ctx.attrs["groups"])
    grouped_pids(ctx, "GM", "GN")
    ctx.emit("g = tl.program_id(1).to(tl.int64)   # group")
    ctx.emit("rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)   # (BLOCK_M,) rows")
    ctx.emit("rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)   # (BLOCK_N,) columns")
    ctx.emit("m_ok = rm < GM")
    ctx.emit("n_ok = rn < GN")


def k_loop(ctx) -> None:
    """Opens the loop over K: `rk` (BLOCK_K,) and k_ok; the caller closes it (indent -= 1)."""
    ctx.emit("acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)")
    ctx.emit("for k0 in range(0, GK, BLOCK_K):")
    ctx.indent += 1
    ctx.emit("rk = k0 + tl.arange(0, BLOCK_K)   # (BLOCK_K,)")
    ctx.emit("k_ok = rk < GK")


def taps(ctx, r: str, pre: str = "") -> None:
    """(kh, kw) of a flat tap index r in [0, KH*KW): names {pre}kh, {pre}kw."""
    ctx.emit(f"{pre}kh = {r} // KW")
    ctx.emit(f"{pre}kw = {r} % KW")


def dot(ctx, a: str, b: str) -> None:
    ctx.emit(f"acc += {ctx.dot(a, b)}   # (BLOCK_M, BLOCK_N)")


def bcast(expr: str, shape: str) -> str:
    return f"tl.broadcast_to({expr}, ({shape}))"


# -- forward -----------------------------------------------------------------------------------

def conv2d(ctx) -> None:
    x_shape, y_shape = ctx.in_shape(0), ctx.out_shape(0)
    geometry(ctx, x_shape, y_shape)
    (kh, kw), groups = ctx.attrs["kernel"], ctx.attrs["groups"]
    nb, _, oh, ow = y_shape
    gemm_head(ctx, nb * oh * ow, y_shape[1] // groups, x_shape[1] // groups * kh * kw)
    # rows: output pixels; columns: output channels of group g
    ctx.emit("n = rm // (OH * OW)")
    ctx.emit("ohw = rm % (OH * OW)")
    ctx.emit("hs = (ohw // OW) * SH - PH   # (BLOCK_M,) window origin")
    ctx.emit("ws = (ohw % OW) * SW - PW")
    ctx.emit("x_row = n * C * H * W + g * CG * H * W")
    ctx.emit("oc = g * OCG + rn   # (BLOCK_N,)")
    k_loop(ctx)
    ctx.emit("c = rk // (KH * KW)   # (BLOCK_K,) channel within the group")
    taps(ctx, "rk % (KH * KW)")
    ctx.emit("ih = hs[:, None] + (kh * DH)[None, :]   # (BLOCK_M, BLOCK_K)")
    ctx.emit("iw = ws[:, None] + (kw * DW)[None, :]")
    ctx.emit("a_mask = m_ok[:, None] & k_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)")
    a = load_tile(ctx, 0, "x_row[:, None] + (c * H * W)[None, :] + ih * W + iw",
                  bcast("g * CG + c[None, :]", "BLOCK_M, BLOCK_K"), "a_mask")
    ctx.emit("b_mask = k_ok[:, None] & n_ok[None, :]   # (BLOCK_K, BLOCK_N)")
    b = load_tile(ctx, 1, "oc[None, :] * GK + rk[:, None]",
                  bcast("oc[None, :]", "BLOCK_K, BLOCK_N"), "b_mask")
    dot(ctx, a, b)
    ctx.indent -= 1
    if len(ctx.node.inputs) > 2:
        bias = load_tile(ctx, 2, "oc", "oc", "n_ok")
        ctx.emit(f"acc += {bias}[None, :]")
    ctx.emit("mask = m_ok[:, None] & n_ok[None, :]   # (BLOCK_M, BLOCK_N)")
    ctx.emit("offs = (n * OC * OH * OW + ohw)[:, None] + (oc * OH * OW)[None, :]")
    ctx.epilogue("acc", "offs", bcast("oc[None, :]", "BLOCK_M, BLOCK_N"), "mask")


# -- input gradient ----------------------------------------------------------------------------

def conv2d_bwd_input(ctx) -> None:
    input_gradient(ctx, wi=2, x_shape=ctx.in_shape(1))


def conv_transpose2d(ctx) -> None:
    """A transposed convolution is conv2d's input gradient of its input with its weight (the
    weight layouts agree: [C, out/groups, kh, kw] is conv2d's [OC, C/groups, kh, kw]), the
    output's size given by the node, plus a bias."""
    input_gradient(ctx, wi=1, x_shape=ctx.out_shape(0), bias=2 if len(ctx.node.inputs) > 2 else None)


def input_gradient(ctx, wi: int, x_shape: tuple, bias: int | None = None) -> None:
    """The input-gradient GEMM of gy (input 0) with the weight (input wi) into an x_shape
    result; with `bias`, that input's value per result channel is added."""
    gy_shape = ctx.in_shape(0)
    geometry(ctx, x_shape, gy_shape)
    (kh, kw), groups = ctx.attrs["kernel"], ctx.attrs["groups"]
    (sh, sw) = ctx.attrs["stride"]
    nb, c, h, w = x_shape
    gemm_head(ctx, nb * h * w, c // groups, gy_shape[1] // groups * kh * kw)
    # rows: input pixels; columns: input channels of group g
    ctx.emit("n = rm // (H * W)")
    ctx.emit("hw = rm % (H * W)")
    ctx.emit("th0 = hw // W + PH   # (BLOCK_M,) padded input row")
    ctx.emit("tw0 = hw % W + PW")
    ctx.emit("gy_row = n * OC * OH * OW + g * OCG * OH * OW")
    ctx.emit("cl = rn   # (BLOCK_N,) channel within the group")
    k_loop(ctx)
    ctx.emit("ocl = rk // (KH * KW)   # (BLOCK_K,) output channel within the group")
    ctx.emit("r = rk % (KH * KW)")
    taps(ctx, "r")
    # the output pixel whose window puts tap (kh, kw) on (ih, iw)
    ctx.emit("th = th0[:, None] - (kh * DH)[None, :]   # (BLOCK_M, BLOCK_K) = oh * SH")
    ctx.emit("tw = tw0[:, None] - (kw * DW)[None, :]")
    ctx.emit("oh = th // SH")
    ctx.emit("ow = tw // SW")
    ok = "m_ok[:, None] & k_ok[None, :] & (th >= 0) & (tw >= 0) & (oh < OH) & (ow < OW)"
    if sh > 1:
        ok += " & (th % SH == 0)"
    if sw > 1:
        ok += " & (tw % SW == 0)"
    ctx.emit(f"a_mask = {ok}")
    a = load_tile(ctx, 0, "gy_row[:, None] + (ocl * OH * OW)[None, :] + oh * OW + ow",
                  bcast("g * OCG + ocl[None, :]", "BLOCK_M, BLOCK_K"), "a_mask")
    ctx.emit("b_mask = k_ok[:, None] & n_ok[None, :]   # (BLOCK_K, BLOCK_N)")
    ctx.emit("oc_k = g * OCG + ocl")
    b = load_tile(ctx, wi, "(oc_k * CG * KH * KW + r)[:, None] + (cl * KH * KW)[None, :]",
                  bcast("oc_k[:, None]", "BLOCK_K, BLOCK_N"), "b_mask")
    dot(ctx, a, b)
    ctx.indent -= 1
    ctx.emit("mask = m_ok[:, None] & n_ok[None, :]   # (BLOCK_M, BLOCK_N)")
    ctx.emit("c = g * CG + cl")
    if bias is not None:
        ctx.emit(f"acc += {load_tile(ctx, bias, 'c', 'c', 'n_ok')}[None, :]")
    ctx.emit("offs = (n * C * H * W + hw)[:, None] + (c * H * W)[None, :]")
    ctx.epilogue("acc", "offs", bcast("c[None, :]", "BLOCK_M, BLOCK_N"), "mask")


# -- weight gradient ---------------------------------------------------------------------------

def conv2d_bwd_weight(ctx) -> None:
    gy_shape, x_shape = ctx.in_shape(0), ctx.in_shape(1)
    geometry(ctx, x_shape, gy_shape)
    (kh, kw), groups = ctx.attrs["kernel"], ctx.attrs["groups"]
    nb, _, oh, ow = gy_shape
    sib = ctx.sibling("sum")
    if sib is not None:
        assert sib.inputs[0] is ctx.node.inputs[0] and tuple(sib.attrs["dims"]) == (0, 2, 3)
    gemm_head(ctx, gy_shape[1] // groups, x_shape[1] // groups * kh * kw, nb * oh * ow)
    # rows: output channels of group g; columns: (c, kh, kw) of the group
    ctx.emit("oc = g * OCG + rm   # (BLOCK_M,)")
    ctx.emit("c = g * CG + rn // (KH * KW)   # (BLOCK_N,)")
    taps(ctx, "rn % (KH * KW)")
    if sib is not None:
        ctx.emit("rowsum = tl.zeros((BLOCK_M,), dtype=tl.float32)   # sibling: sum of gy")
    k_loop(ctx)
    ctx.emit("n = rk // (OH * OW)   # (BLOCK_K,) output pixels")
    ctx.emit("ohw = rk % (OH * OW)")
    ctx.emit("a_mask = m_ok[:, None] & k_ok[None, :]   # (BLOCK_M, BLOCK_K)")
    a = load_tile(ctx, 0, "(oc * OH * OW)[:, None] + (n * OC * OH * OW + ohw)[None, :]",
                  bcast("oc[:, None]", "BLOCK_M, BLOCK_K"), "a_mask")
    ctx.emit("ih = ((ohw // OW) * SH - PH)[:, None] + (kh * DH)[None, :]   # (BLOCK_K, BLOCK_N)")
    ctx.emit("iw = ((ohw % OW) * SW - PW)[:, None] + (kw * DW)[None, :]")
    ctx.emit("b_mask = k_ok[:, None] & n_ok[None, :] & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)")
    b = load_tile(ctx, 1, "(n * C * H * W)[:, None] + (c * H * W)[None, :] + ih * W + iw",
                  bcast("c[None, :]", "BLOCK_K, BLOCK_N"), "b_mask")
    dot(ctx, a, b)
    if sib is not None:
        ctx.emit(f"rowsum += tl.sum({a}, axis=1)")
    ctx.indent -= 1
    if sib is not None and ctx.stores(0, node=sib):
        ctx.emit("if pid_n == 0:   # one program per row block stores the bias gradient")
        ctx.emit(f"    tl.store({ctx.out_ptr(0, node=sib)} + oc, rowsum, mask=m_ok)")
    if ctx.stores(0):
        ctx.emit("mask = m_ok[:, None] & n_ok[None, :]   # (BLOCK_M, BLOCK_N)")
        ctx.emit("offs = oc[:, None] * GN + rn[None, :]")
        ctx.emit(f"tl.store({ctx.out_ptr(0)} + offs, acc, mask=mask)")


RENDER = {"conv2d": conv2d, "conv2d_bwd_input": conv2d_bwd_input,
          "conv_transpose2d": conv_transpose2d,
          "conv2d_bwd_weight": conv2d_bwd_weight}

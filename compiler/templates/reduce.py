"""Reduction kernels: sums over any set of dimensions, the L1/L2 parameter penalties, and
softmax over dim 1 with its backward.

Sums (and the penalties, and mse in loss.py, which are sums of a per-element term) view the
input as groups of adjacent kept / reduced dimensions (size-1 dimensions dropped, neighbours
of one kind merged): sum(dims=[0]) of (N, F) is R K, dims=[0, 2, 3] of NCHW is R K R, a
penalty is R. An output element o and a reduced index r decompose over their groups into
the input offset obase(o) + roff(r). One program owns BLOCK_O output elements and loops over
the reduced extent in tiles, so the result is deterministic (no atomics):

    pid -> o (BLOCK_O,) -> obase -> for r0 in range(0, R, BLOCK_R):
        r (BLOCK_R,) -> offs = obase[:, None] + roff[None, :]  (BLOCK_O, BLOCK_R) -> acc +=
    -> tl.sum(acc, axis=1) -> epilogue at o

The tile leans along whichever side is contiguous: long BLOCK_R when the innermost group is
reduced (row sums, per-channel planes), wide BLOCK_O when it is kept (column sums).

Softmax over dim 1 of (N, C) or (N, C, H, W): one row per (n, pixel), BLOCK_P rows per
program, the C values of a row at stride H*W. A row that fits one tile (C <= BLOCK_C) is
loaded once; a longer one takes an online max/sum pass, then a normalising pass. The
backward y * (gy - sum_c(gy * y)) is the same walk with a dot product for the statistic.

Input 0 (x, or gy) is read with `ctx.load` (`triton_prologue`), so an elementwise chain
before the reduction is recomputed in its loads; masked lanes are zeroed after the load (a
chain may map the padding value to anything). Output 0 goes through `ctx.epilogue`.
"""
from __future__ import annotations

from . import cdiv, numel, pow2

TILE = 2048            # elements per (rows, columns) tile
MAX_BLOCK = 1024       # longest tile side along a contiguous reduced extent / a softmax row
MAX_KEPT = 64          # widest tile side along a contiguous kept extent
NEG_INF = 'float("-inf")'


def render(ctx) -> None:
    op = ctx.node.op
    if op == "sum":
        shape = ctx.in_shape(0)
        reduction(ctx, shape, ctx.attrs["dims"], lambda o, c, m: ctx.load(0, o, c, m))
    elif op in ("l1_penalty", "l2_penalty"):
        _penalty(ctx, op)
    elif op == "softmax":
        _softmax(ctx)
    elif op == "softmax_bwd":
        _softmax_bwd(ctx)
    else:
        raise KeyError(f"reduce template: no kernel for op {op!r}")


# -- shared pieces -----------------------------------------------------------------------------

def _tunable(ctx, name: str, default: int, extent: int) -> int:
    """A power-of-two block size the GPU autotuner may halve or double (never past the
    extent it tiles, rounded up to a power of two)."""
    top = max(default, pow2(extent))
    choices = sorted({b for b in (default // 2, default, default * 2) if 1 <= b <= top})
    return ctx.tunable(name, default, tuple(choices))


def _groups(shape: tuple, dims) -> tuple[list, list]:
    """(kept, reduced): each a list, outer to inner, of (size, stride) runs of adjacent
    dimensions of one kind in a contiguous tensor of `shape`; size-1 dimensions dropped."""
    rank = len(shape)
    red = {d % rank for d in dims} if rank else set()
    runs: list[list] = []                       # [is_reduced, size, stride]
    stride = 1
    strides = []
    for d in reversed(shape):
        strides.append(stride)
        stride *= d
    strides.reverse()
    for i, (size, st) in enumerate(zip(shape, strides)):
        if size == 1:
            continue
        if runs and runs[-1][0] == (i in red):
            runs[-1][1] *= size                 # merge with the outer neighbour
            runs[-1][2] = st
        else:
            runs.append([i in red, size, st])
    kept = [(s, st) for r, s, st in runs if not r]
    reduced = [(s, st) for r, s, st in runs if r]
    return kept, reduced


def _offset(ctx, idx: str, groups: list, prefix: str) -> str:
    """The input offset (int64) of index `idx` (int32/int64) decomposed over `groups`: the
    sizes of all but the outermost group and every stride become int parameters."""
    groups = groups or [(1, 0)]
    names = []
    for j, (size, stride) in enumerate(groups):
        k = ctx.int(f"{prefix}{j}", size) if j else None
        names.append((k, ctx.int(f"S{prefix}{j}", stride)))
    terms = []
    rem = idx
    for j in range(len(groups) - 1, 0, -1):        # inner to outer
        k, s = names[j]
        terms.append(f"({rem} % {k}).to(tl.int64) * {s}")
        rem = ctx.let(f"{rem} // {k}")
    terms.append(f"{rem}.to(tl.int64) * {names[0][1]}")
    return " + ".join(reversed(terms))


def _chan(ctx, shape: tuple, offs: str, cname: str, iname: str) -> str:
    """The dim-1 index of the element at flat offsets `offs` of a tensor of `shape`, as an
    expression (only evaluated where an inlined chain or the epilogue reads per channel)."""
    if len(shape) < 2:
        return offs
    c = ctx.int(cname, shape[1])
    inner = ctx.int(iname, numel(shape[2:]))
    return f"(({offs} // {inner}) % {c})"


def reduction(ctx, shape: tuple, dims, term, finish=None) -> None:
    """Output 0 = finish(sum over `dims` of term(offs, chan, mask)) of an iteration over the
    contiguous `shape`: term returns the name of the per-element value (masked lanes are
    zeroed here), finish maps the (BLOCK_O,) sums to the output values."""
    shape = tuple(shape)
    rank = len(shape)
    red_dims = {d % rank for d in dims} if rank else set()
    out_shape = tuple(d for i, d in enumerate(shape) if i not in red_dims)
    kept, red = _groups(shape, red_dims)
    o_total, r_total = numel(s for s, _ in kept), numel(s for s, _ in red)
    if red and red[-1][1] == 1:                  # contiguous along r: long rows
        br = min(pow2(r_total), MAX_BLOCK)
        bo = max(1, min(pow2(o_total), TILE // br))
    else:                                        # contiguous along o (or nothing reduced)
        bo = min(pow2(o_total), MAX_KEPT)
        br = max(1, min(pow2(r_total), TILE // bo))
    O, R = ctx.int("O", o_total), ctx.int("R", r_total)
    bo = _tunable(ctx, "BLOCK_O", bo, o_total)
    br = _tunable(ctx, "BLOCK_R", br, r_total)
    ctx.grid = (max(1, cdiv(o_total, bo)),)
    e = ctx.emit
    e("o = tl.program_id(0).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)  # (BLOCK_O,) outputs")
    e(f"omask = o < {O}")
    obase = ctx.let(_offset(ctx, "o", kept, "K") + "  # (BLOCK_O,) offset of r = 0")
    e("acc = tl.zeros([BLOCK_O, BLOCK_R], dtype=tl.float32)")
    e(f"for r0 in range(0, {R}, BLOCK_R):")
    ctx.indent += 1
    e("r = r0 + tl.arange(0, BLOCK_R)  # (BLOCK_R,) reduced index")
    roff = ctx.let(_offset(ctx, "r", red, "R") + "  # (BLOCK_R,)")
    e(f"offs = {obase}[:, None] + {roff}[None, :]  # (BLOCK_O, BLOCK_R)")
    e(f"mask = omask[:, None] & (r < {R})[None, :]")
    val = term("offs", _chan(ctx, shape, "offs", "C1", "INNER"), "mask")
    e(f"acc += tl.where(mask, {val}, 0.0)")
    ctx.indent -= 1
    res = ctx.let("tl.sum(acc, axis=1)  # (BLOCK_O,)")
    if finish is not None:
        res = finish(res)
    ctx.epilogue(res, "o", _chan(ctx, out_shape, "o", "OC", "OINNER"), "omask")


def _penalty(ctx, op: str) -> None:
    """strength * sum(|w|) or strength * sum(w^2) over the whole tensor: one program."""
    strength = ctx.float("STRENGTH", ctx.attrs["strength"])

    def term(offs, chan, mask):
        w = ctx.load(0, offs, chan, mask)
        return ctx.let(f"tl.abs({w})" if op == "l1_penalty" else f"{w} * {w}")

    shape = ctx.in_shape(0)
    reduction(ctx, shape, range(len(shape)), term, lambda s: ctx.let(f"{s} * {strength}"))


# -- softmax -----------------------------------------------------------------------------------

class _Rows:
    """Rows of a softmax over dim 1: one per (n, pixel) of an (N, C, *S) tensor, the C values
    of a row at stride INNER = prod(S). Declares the sizes and block sizes, emits the row
    head and the column tiles."""

    def __init__(self, ctx, shape: tuple):
        self.ctx = ctx
        c, inner = shape[1], numel(shape[2:])
        rows = shape[0] * inner
        self.c = c
        self.P, self.C = ctx.int("P", rows), ctx.int("C", c)
        self.INNER, self.CI = ctx.int("INNER", inner), ctx.int("CI", c * inner)
        bc = min(pow2(c), MAX_BLOCK)
        bp = max(1, min(pow2(rows), TILE // bc))
        self.block_c = _tunable(ctx, "BLOCK_C", bc, c)
        bp = _tunable(ctx, "BLOCK_P", bp, rows)
        self.one = c <= self.block_c                 # a row is one tile: load it once
        ctx.grid = (max(1, cdiv(rows, bp)),)

    def head(self) -> None:
        e = self.ctx.emit
        e("p = tl.program_id(0).to(tl.int64) * BLOCK_P + tl.arange(0, BLOCK_P)  # (BLOCK_P,) rows")
        e(f"pmask = p < {self.P}")
        e(f"pbase = (p // {self.INNER}) * {self.CI} + p % {self.INNER}  # (BLOCK_P,) channel 0")

    def tile(self, start: str) -> None:
        """offs, mask, chan (BLOCK_P, BLOCK_C) of the columns from `start`; cmask (BLOCK_C,)."""
        e = self.ctx.emit
        e(f"cc = {start} + tl.arange(0, BLOCK_C)  # (BLOCK_C,) channels")
        e(f"cmask = cc < {self.C}")
        e(f"offs = pbase[:, None] + cc.to(tl.int64)[None, :] * {self.INNER}  # (BLOCK_P, BLOCK_C)")
        e("mask = pmask[:, None] & cmask[None, :]")
        e("chan = tl.zeros([BLOCK_P, BLOCK_C], dtype=tl.int32) + cc[None, :]")

    def loop(self) -> None:
        """Opens a loop over the column tiles (the caller lowers ctx.indent)."""
        self.ctx.emit(f"for c0 in range(0, {self.C}, BLOCK_C):")
        self.ctx.indent += 1
        self.tile("c0")


def _softmax(ctx) -> None:
    """y = exp(x - max) / sum(exp(x - max)) over dim 1."""
    rows = _Rows(ctx, ctx.in_shape(0))
    rows.head()
    e = ctx.emit

    def x_tile() -> str:          # padding columns are -inf: never the max, exp() = 0
        x = ctx.load(0, "offs", "chan", "mask")
        return ctx.let(f"tl.where(cmask[None, :], {x}, {NEG_INF})")

    if rows.one:
        rows.tile("0")
        x = x_tile()
        m = ctx.let(f"tl.max({x}, axis=1)  # (BLOCK_P,)")
        ex = ctx.let(f"tl.exp({x} - {m}[:, None])")
        s = ctx.let(f"tl.sum({ex}, axis=1)")
        y = ctx.let(f"{ex} / {s}[:, None]")
        ctx.epilogue(y, "offs", "chan", "mask")
        return
    e(f"m = tl.full([BLOCK_P], {NEG_INF}, tl.float32)  # running max")
    e("s = tl.zeros([BLOCK_P], dtype=tl.float32)  # running sum of exp(x - m)")
    rows.loop()
    x = x_tile()
    e(f"m_new = tl.maximum(m, tl.max({x}, axis=1))")
    e(f"s = s * tl.exp(m - m_new) + tl.sum(tl.exp({x} - m_new[:, None]), axis=1)")
    e("m = m_new")
    ctx.indent -= 1
    rows.loop()
    x = x_tile()
    y = ctx.let(f"tl.exp({x} - m[:, None]) / s[:, None]")
    ctx.epilogue(y, "offs", "chan", "mask")
    ctx.indent -= 1


def _softmax_bwd(ctx) -> None:
    """gx = y * (gy - sum_c(gy * y)) over dim 1; inputs (gy, y)."""
    rows = _Rows(ctx, ctx.in_shape(1))
    rows.head()
    e = ctx.emit

    def tiles() -> tuple[str, str]:
        gy = ctx.load(0, "offs", "chan", "mask")
        y = ctx.load(1, "offs", "chan", "mask")
        return gy, y

    if rows.one:
        rows.tile("0")
        gy, y = tiles()
        dot = ctx.let(f"tl.sum(tl.where(mask, {gy} * {y}, 0.0), axis=1)  # (BLOCK_P,)")
        ctx.epilogue(ctx.let(f"{y} * ({gy} - {dot}[:, None])"), "offs", "chan", "mask")
        return
    e("dot = tl.zeros([BLOCK_P], dtype=tl.float32)")
    rows.loop()
    gy, y = tiles()
    e(f"dot += tl.sum(tl.where(mask, {gy} * {y}, 0.0), axis=1)")
    ctx.indent -= 1
    rows.loop()
    gy, y = tiles()
    ctx.epilogue(ctx.let(f"{y} * ({gy} - dot[:, None])"), "offs", "chan", "mask")
    ctx.indent -= 1

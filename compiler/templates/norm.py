"""Normalisation kernels: training batch norm (statistics, normalise through the epilogue),
the two batch-norm backwards (gy loaded through the prologue), and local response norm with
its backward.

Batch norm: one program per block of channels (BLOCK_C channels; BLOCK_C = 1 when a channel
is a contiguous H*W plane, a block of columns when the input is (N, C) or H = W = 1, so the
loads stay coalesced), looping over the M = N*H*W elements of its channels in tiles:

    pid -> c (BLOCK_C,) -> for m0 in range(0, M, BLOCK_M):
        m (BLOCK_M,) -> offs = (m // HW) * C*HW + c * HW + m % HW   (BLOCK_M, BLOCK_C)

Statistics are two-pass, as accurate as torch's: the mean first, then the sums of the
centred values and their squares (the first corrects the mean's rounding).  The biased
variance normalises; the unbiased one (var * M/(M-1)) feeds the running variance.

Local response norm: one program per BLOCK flat elements; each element sums x^2 over its
channel window (zeros past the channel edges, divisor = size, as F.local_response_norm).
The backward needs the scale s_c of every channel c in the element's transposed window, so
it recomputes each s_c from its own window: size^2 loads per element, from the cache.
"""
from __future__ import annotations

from . import cdiv, numel, pow2

BLOCK_M_MAX = 1024      # elements of one channel per tile (a channel is a contiguous plane)
COL_TILE = 32           # (N, C) inputs: (32 rows, 32 columns) tiles
LRN_BLOCK = 512         # defaults; the GPU autotuner may choose others (ctx.tunable)


def render(ctx) -> None:
    op = ctx.node.op
    if op == "batch_norm_train":
        _bn_train(ctx)
    elif op in ("batch_norm_train_bwd", "batch_norm_eval_bwd"):
        _bn_bwd(ctx, train=op == "batch_norm_train_bwd")
    elif op == "local_response_norm":
        _lrn(ctx)
    elif op == "local_response_norm_bwd":
        _lrn_bwd(ctx)
    else:
        raise KeyError(f"norm template: no kernel for op {op!r}")


def _tunable(ctx, name: str, default: int, choices, extent: int) -> int:
    """A constexpr block size the GPU autotuner may change: the choices no larger than the
    extent they tile needs (rounded up to a power of two), and the default."""
    keep = {b for b in choices if b <= max(default, pow2(extent))} | {default}
    return ctx.tunable(name, default, tuple(sorted(keep)))


# -- batch norm: the per-channel walk ------------------------------------------------------------

class _Channels:
    """Declares the sizes of a per-channel walk over an (N, C) or (N, C, H, W) tensor and
    emits the tile loop; the loop body sees offs, chan, mask (BLOCK_M, BLOCK_C)."""

    def __init__(self, ctx, shape: tuple[int, ...]):
        self.ctx = ctx
        n, c = shape[0], shape[1]
        hw = numel(shape[2:])
        self.m = n * hw                                   # values per channel
        self.C = ctx.int("C", c)
        self.HW = ctx.int("HW", hw)
        self.CHW = ctx.int("CHW", c * hw)
        self.M = ctx.int("M", self.m)
        if hw == 1:                                       # columns: coalesce along C
            block_c = _tunable(ctx, "BLOCK_C", min(COL_TILE, pow2(c)), (16, 32, 64), c)
            _tunable(ctx, "BLOCK_M", min(COL_TILE, max(16, pow2(self.m))), (16, 32, 64),
                     self.m)
        else:                                             # planes: one channel per program
            block_c = 1
            ctx.const("BLOCK_C", 1)
            _tunable(ctx, "BLOCK_M", min(BLOCK_M_MAX, max(16, pow2(self.m))),
                     (256, 512, 1024, 2048), self.m)
        self.BLOCK_C, self.BLOCK_M = "BLOCK_C", "BLOCK_M"
        ctx.grid = (cdiv(c, block_c),)

    def head(self) -> None:
        """Channels of this program, their mask, the (tile-shaped) channel index."""
        e = self.ctx.emit
        e(f"c = tl.program_id(0) * {self.BLOCK_C} + tl.arange(0, {self.BLOCK_C})  # (BLOCK_C,)")
        e(f"cmask = c < {self.C}")
        e(f"chan = tl.zeros([{self.BLOCK_M}, {self.BLOCK_C}], dtype=tl.int32) + c[None, :]"
          f"  # (BLOCK_M, BLOCK_C)")
        e(f"cbase = c.to(tl.int64)[None, :] * {self.HW}  # (1, BLOCK_C)")

    def loop(self) -> None:
        """Opens the tile loop (the caller lowers ctx.indent when the body is done)."""
        e = self.ctx.emit
        e(f"for m0 in range(0, {self.M}, {self.BLOCK_M}):")
        self.ctx.indent += 1
        e(f"m = m0 + tl.arange(0, {self.BLOCK_M})  # (BLOCK_M,) index within the channel")
        e(f"offs = (m // {self.HW}).to(tl.int64)[:, None] * {self.CHW} + cbase "
          f"+ (m % {self.HW})[:, None]  # (BLOCK_M, BLOCK_C)")
        e(f"mask = (m < {self.M})[:, None] & cmask[None, :]")

    def zeros(self, name: str) -> None:
        self.ctx.emit(f"{name} = tl.zeros([{self.BLOCK_M}, {self.BLOCK_C}], dtype=tl.float32)")

    def per_channel(self, i: int, name: str, row: bool = True) -> None:
        """Anchor input i, a (C,) vector, as `name` (BLOCK_C,) and, with `row`, as `name`2
        (1, BLOCK_C) to broadcast against a tile."""
        self.ctx.emit(f"{name} = tl.load({self.ctx.in_ptr(i)} + c, mask=cmask, other=0.0)")
        if row:
            self.ctx.emit(f"{name}2 = {name}[None, :]")

    def store_stat(self, j: int, val: str) -> None:
        if self.ctx.stores(j):
            self.ctx.emit(f"tl.store({self.ctx.out_ptr(j)} + c, {val}, mask=cmask)")


def _bn_train(ctx) -> None:
    """(x, w, b) -> (y, mean, var, var_unbiased); y goes through the epilogue."""
    shape = ctx.in_shape(0)
    walk = _Channels(ctx, shape)
    if walk.m < 2:
        raise ValueError(f"batch norm in training needs more than one value per channel, "
                         f"got input of size {shape}")
    nf = ctx.float("NF", walk.m)
    ratio = ctx.float("UNBIAS", walk.m / (walk.m - 1))
    eps = ctx.float("EPS", ctx.attrs["eps"])
    e = ctx.emit
    walk.head()
    # pass 1: the mean
    walk.zeros("acc")
    walk.loop()
    x = ctx.load(0, "offs", "chan", "mask")
    e(f"acc += tl.where(mask, {x}, 0.0)")
    ctx.indent -= 1
    e(f"mean = tl.sum(acc, axis=0) / {nf}  # (BLOCK_C,)")
    e("mean2 = mean[None, :]")
    # pass 2: centred sums; sum(d) corrects the rounding of the first mean (the corrected
    # two-pass algorithm), sum(d^2) - sum(d)^2 / M is the biased variance times M
    walk.zeros("acc")
    walk.zeros("acc_d")
    walk.loop()
    x = ctx.load(0, "offs", "chan", "mask")
    e(f"d = tl.where(mask, {x} - mean2, 0.0)")
    e("acc_d += d")
    e("acc += d * d")
    ctx.indent -= 1
    e("sd = tl.sum(acc_d, axis=0)  # (BLOCK_C,)")
    e(f"var = tl.maximum(tl.sum(acc, axis=0) - sd * sd / {nf}, 0.0) / {nf}")
    e(f"mean = mean + sd / {nf}")
    e("mean2 = mean[None, :]")
    walk.store_stat(1, "mean")
    walk.store_stat(2, "var")
    walk.store_stat(3, f"var * {ratio}")
    # pass 3: y = (x - mean) * invstd * w + b, and the fused chain after it
    body_outs = [o for n in ctx.k.body for o in n.outputs]
    if not any(id(v) in ctx.writes for v in [ctx.node.outputs[0]] + body_outs):
        return
    e(f"invstd2 = (1.0 / tl.sqrt(var + {eps}))[None, :]")
    walk.per_channel(1, "w")
    walk.per_channel(2, "b")
    walk.loop()
    x = ctx.load(0, "offs", "chan", "mask")
    e(f"y = ({x} - mean2) * invstd2 * w2 + b2  # (BLOCK_M, BLOCK_C)")
    ctx.epilogue("y", "offs", "chan", "mask")
    ctx.indent -= 1


def _bn_bwd(ctx, train: bool) -> None:
    """(gy, x, w, mean, var) -> (gx, gw, gb); gy is loaded through the prologue.

    train: gx = w * invstd / M * (M * gy - gb - xhat * gw) needs gb and gw first (two
    passes); eval (running statistics are constants): gx = gy * w * invstd, one pass."""
    walk = _Channels(ctx, ctx.in_shape(1))
    eps = ctx.float("EPS", ctx.attrs["eps"])
    need_gx, need_gw, need_gb = ctx.stores(0), ctx.stores(1), ctx.stores(2)
    sums = train and need_gx or need_gw or need_gb     # a first pass over the channel
    need_xhat = train and need_gx or need_gw
    e = ctx.emit
    walk.head()
    walk.per_channel(3, "mean")
    walk.per_channel(4, "var", row=False)
    e("invstd = 1.0 / tl.sqrt(var + " + eps + ")  # (BLOCK_C,)")
    e("invstd2 = invstd[None, :]")
    if need_gx:
        walk.per_channel(2, "w", row=False)

    def loads() -> tuple[str, str | None]:
        gy = ctx.load(0, "offs", "chan", "mask")
        e(f"gy = tl.where(mask, {gy}, 0.0)  # (BLOCK_M, BLOCK_C); an inlined chain may "
          f"be nonzero off the mask")
        if not need_xhat:
            return "gy", None
        x = ctx.load(1, "offs", "chan", "mask")
        e(f"xhat = ({x} - mean2) * invstd2")
        return "gy", "xhat"

    if sums:
        walk.zeros("acc_gb")
        if need_xhat:
            walk.zeros("acc_gw")
        walk.loop()
        gy, xhat = loads()
        e(f"acc_gb += {gy}")
        if need_xhat:
            e(f"acc_gw += {gy} * {xhat}")
        if need_gx and not train:
            e(f"tl.store({ctx.out_ptr(0)} + offs, {gy} * (w * invstd)[None, :], mask=mask)")
        ctx.indent -= 1
        e("gb = tl.sum(acc_gb, axis=0)  # (BLOCK_C,)")
        if need_xhat:
            e("gw = tl.sum(acc_gw, axis=0)")
        walk.store_stat(1, "gw")
        walk.store_stat(2, "gb")
    if need_gx and (train or not sums):
        nf = ctx.float("NF", walk.m) if train else None
        walk.loop()
        gy, xhat = loads()
        if train:
            e(f"gx = (w * invstd / {nf})[None, :] * ({nf} * {gy} - gb[None, :] "
              f"- {xhat} * gw[None, :])")
        else:
            e(f"gx = {gy} * (w * invstd)[None, :]")
        e(f"tl.store({ctx.out_ptr(0)} + offs, gx, mask=mask)")
        ctx.indent -= 1


# -- local response norm -------------------------------------------------------------------------

def _lrn_head(ctx, shape) -> tuple[str, str, str]:
    """Flat elements of an (N, C, ...) tensor: offs, mask, chan; returns (C, INNER, SIZE)."""
    total = numel(shape)
    n = ctx.int("n", total)
    c = ctx.int("C", shape[1])
    inner = ctx.int("INNER", numel(shape[2:]))
    size = ctx.const("SIZE", int(ctx.attrs["size"]))
    block = _tunable(ctx, "BLOCK", LRN_BLOCK, (256, 512, 1024), total)
    blk = "BLOCK"
    ctx.grid = (max(1, cdiv(total, block)),)
    ctx.emit(f"offs = tl.program_id(0).to(tl.int64) * {blk} + tl.arange(0, {blk})  # (BLOCK,)")
    ctx.emit(f"mask = offs < {n}")
    ctx.emit(f"chan = ((offs // {inner}) % {c}).to(tl.int32)")
    return c, inner, size


def _window_sq(ctx, x_in: int, centre: str, c: str, inner: str, size: str, out: str,
               valid: str) -> None:
    """out = sum of x^2 over channels centre - size//2 .. centre + (size-1)//2 (in range),
    where `centre` is a channel shift relative to the element's own channel."""
    e = ctx.emit
    e(f"{out} = tl.zeros([BLOCK], dtype=tl.float32)")
    e(f"for i2 in range({size}):")
    ctx.indent += 1
    shift = "" if centre == "0" else f"{centre} + "
    e(f"dd = {shift}i2 - {size} // 2  # channel shift of this term")
    e(f"cc = chan + dd")
    e(f"ok = {valid} & (cc >= 0) & (cc < {c})")
    xv = ctx.load(x_in, f"offs + dd * {inner}", "cc", "ok")
    e(f"{out} += tl.where(ok, {xv} * {xv}, 0.0)")
    ctx.indent -= 1


def _lrn(ctx) -> None:
    """y = x / (k + alpha * (sum of x^2 over the window) / size)^beta."""
    c, inner, size = _lrn_head(ctx, ctx.in_shape(0))
    alpha = ctx.float("ALPHA", ctx.attrs["alpha"])
    beta = ctx.float("BETA", ctx.attrs["beta"])
    k = ctx.float("K", ctx.attrs["k"])
    e = ctx.emit
    _window_sq(ctx, 0, "0", c, inner, size, "acc", "mask")
    e(f"s = acc / {size} * {alpha} + {k}")
    x = ctx.load(0, "offs", "chan", "mask")
    e(f"y = {x} / tl.exp({beta} * tl.log(s))  # s^beta, s > 0")
    e(f"tl.store({ctx.out_ptr(0)} + offs, y, mask=mask)")


def _lrn_bwd(ctx) -> None:
    """gx_j = gy_j s_j^-beta - 2 alpha beta / size * x_j * sum_c gy_c x_c s_c^(-beta-1),
    c over the transposed window j - (size-1)//2 .. j + size//2."""
    c, inner, size = _lrn_head(ctx, ctx.in_shape(1))
    alpha_n = ctx.float("ALPHA_N", ctx.attrs["alpha"] / ctx.attrs["size"])
    beta = ctx.float("BETA", ctx.attrs["beta"])
    k = ctx.float("K", ctx.attrs["k"])
    coef = ctx.float("COEF", 2.0 * ctx.attrs["alpha"] * ctx.attrs["beta"] / ctx.attrs["size"])
    e = ctx.emit
    e("back = tl.zeros([BLOCK], dtype=tl.float32)")
    e("s_own = tl.zeros([BLOCK], dtype=tl.float32)")
    e(f"for i in range({size}):")
    ctx.indent += 1
    e(f"d = i - ({size} - 1) // 2  # channel shift of c from the element's own")
    e("cc0 = chan + d")
    e(f"valid = mask & (cc0 >= 0) & (cc0 < {c})")
    _window_sq(ctx, 1, "d", c, inner, size, "acc", "valid")
    e(f"s = {k} + {alpha_n} * acc  # s_c")
    e("s_own = tl.where(d == 0, s, s_own)")
    gy = ctx.load(0, f"offs + d * {inner}", "cc0", "valid")
    x = ctx.load(1, f"offs + d * {inner}", "cc0", "valid")
    e(f"t = {gy} * {x} * tl.exp((-{beta} - 1.0) * tl.log(s))  # gy_c x_c s_c^(-beta-1)")
    e("back += tl.where(valid, t, 0.0)")
    ctx.indent -= 1
    gy = ctx.load(0, "offs", "chan", "mask")
    x = ctx.load(1, "offs", "chan", "mask")
    e(f"gx = {gy} * tl.exp(-{beta} * tl.log(s_own)) - {coef} * {x} * back")
    e(f"tl.store({ctx.out_ptr(0)} + offs, gx, mask=mask)")

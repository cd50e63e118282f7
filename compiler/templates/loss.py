"""Loss kernels: label-smoothed cross-entropy (with its gradient in the same kernel when the
planner fuses cross_entropy_bwd as a sibling), the standalone cross-entropy gradient, and
mean squared error.

Cross-entropy of logits z (N, V) against labels y (N,), smoothing eps, q = (1 - eps) *
onehot(y) + eps / V (F.cross_entropy's target, eps/V on every class including the true one):

    loss_i = logsumexp(z_i) - (1 - eps) * z_i[y_i] - eps / V * sum_j z_ij
    loss   = mean_i loss_i            grad = gy * (softmax(z_i) - q_i) / N

The loss is one program looping over the rows in blocks of BLOCK_N (the batch is small), so
the mean is deterministic without atomics or a second launch:

    for r0 in range(0, N, BLOCK_N): rows (BLOCK_N,) -> labels -> logits (BLOCK_N, BLOCK_V)
        -> row max, sum of exp (online over column tiles when V > BLOCK_V), z[y], sum z
        -> acc += loss rows [-> the gradient rows, stored in the same pass]
    -> tl.sum(acc) / N -> epilogue

With the fused gradient a row that fits one tile (V <= BLOCK_V) is read once: the loss and
the gradient come from the same registers; a longer row is read again for the gradient.
The standalone gradient (gy a loaded scalar) runs one program per row block. The gradient
is rounded as the reference writes it, gy * (exp(z - max) / sum - q) / N, with 1 - eps and
eps / V passed in as floats (computed in double, as torch does).

mse is a sum over every element of (pred - target)^2, divided by the count: the reduce
family's reduction (reduce.py) with that term; smooth_l1 (Fast R-CNN's box loss) likewise
with its Huber-like term.
"""
from __future__ import annotations

from . import cdiv, numel, pow2
from .reduce import MAX_BLOCK, NEG_INF, TILE, reduction

MAX_ROWS = 64          # rows of logits per tile


def render(ctx) -> None:
    op = ctx.node.op
    if op == "cross_entropy":
        _cross_entropy(ctx, ctx.sibling("cross_entropy_bwd"))
    elif op == "cross_entropy_bwd":
        _cross_entropy_bwd(ctx)
    elif op == "mse":
        _mse(ctx)
    elif op == "smooth_l1":
        _smooth_l1(ctx)
    else:
        raise KeyError(f"loss template: no kernel for op {op!r}")


class _Logits:
    """The (BLOCK_N, BLOCK_V) walk over logits z (N, V) and labels: declares the sizes;
    `zi`/`li` are the input indices of logits and labels on the kernel's anchor."""

    def __init__(self, ctx, zi: int, li: int):
        self.ctx, self.zi, self.li = ctx, zi, li
        n, v = ctx.in_shape(zi)
        self.n = n
        self.N, self.V = ctx.int("N", n), ctx.int("V", v)
        eps = ctx.attrs["label_smoothing"]
        self.HIT = ctx.float("HIT", 1.0 - eps)         # the target's weight on the label
        self.SPREAD = ctx.float("SPREAD", eps / v)     # ... and on every class
        bv = min(pow2(v), MAX_BLOCK)
        bn = max(1, min(pow2(n), MAX_ROWS, TILE // bv))
        ctx.const("BLOCK_V", bv)
        ctx.const("BLOCK_N", bn)
        self.block_v, self.block_n = bv, bn
        self.one = v <= bv                      # a row is one tile

    def rows(self, start: str) -> None:
        """rows, rmask (BLOCK_N,), lab (BLOCK_N,) int64, rbase (BLOCK_N,) int64."""
        e, ctx = self.ctx.emit, self.ctx
        e(f"rows = {start} + tl.arange(0, BLOCK_N)  # (BLOCK_N,)")
        e(f"rmask = rows < {self.N}")
        lab = ctx.load(self.li, "rows", "rows", "rmask", other="0")
        e(f"lab = {lab}.to(tl.int64)  # (BLOCK_N,) labels")
        e(f"rbase = rows.to(tl.int64) * {self.V}")

    def tile(self, start: str) -> str:
        """offs, mask, chan (BLOCK_N, BLOCK_V), cc/cmask (BLOCK_V,), hit (the label's column);
        returns the logits tile, -inf in the padding columns."""
        e, ctx = self.ctx.emit, self.ctx
        e(f"cc = {start} + tl.arange(0, BLOCK_V)  # (BLOCK_V,) classes")
        e(f"cmask = cc < {self.V}")
        e("offs = rbase[:, None] + cc[None, :]  # (BLOCK_N, BLOCK_V)")
        e("mask = rmask[:, None] & cmask[None, :]")
        e("chan = tl.zeros([BLOCK_N, BLOCK_V], dtype=tl.int32) + cc[None, :]")
        e("hit = cc[None, :].to(tl.int64) == lab[:, None]")
        z = ctx.load(self.zi, "offs", "chan", "mask")
        return ctx.let(f"tl.where(cmask[None, :], {z}, {NEG_INF})")

    def loop(self) -> str:
        """Opens a loop over the column tiles (the caller lowers ctx.indent)."""
        self.ctx.emit(f"for c0 in range(0, {self.V}, BLOCK_V):")
        self.ctx.indent += 1
        return self.tile("c0")

    def grad(self, p: str, gy: str, out: str) -> None:
        """Stores gy * (p - q) / N at offs: p the softmax tile (as the reference rounds)."""
        q = self.ctx.let(f"tl.where(hit, {self.HIT}, 0.0) + {self.SPREAD}")
        self.ctx.emit(f"tl.store({out} + offs, {gy} * ({p} - {q}) / {self.N}, mask=mask)")

    def stats(self, target: bool = True) -> tuple[str, str | None]:
        """(lse, smoothed target term) per row: the rows' log-sum-exp and, with `target`,
        (1 - eps) * z[y] + eps / V * sum z. A one-tile row leaves exp(z - max) and its sum
        in self.ex, self.s for the gradient."""
        e, ctx = self.ctx.emit, self.ctx
        if self.one:
            z = self.tile("0")
            m = ctx.let(f"tl.max({z}, axis=1)  # (BLOCK_N,)")
            ex = ctx.let(f"tl.exp({z} - {m}[:, None])")
            s = ctx.let(f"tl.sum({ex}, axis=1)")
            if target:
                zy = ctx.let(f"tl.sum(tl.where(hit, {z}, 0.0), axis=1)")
                zs = ctx.let(f"tl.sum(tl.where(mask, {z}, 0.0), axis=1)")
            self.ex, self.s = ex, s
        else:
            e(f"m = tl.full([BLOCK_N], {NEG_INF}, tl.float32)  # running max")
            e("s = tl.zeros([BLOCK_N], dtype=tl.float32)  # running sum of exp(z - m)")
            if target:
                e("zy = tl.zeros([BLOCK_N], dtype=tl.float32)  # z[label]")
                e("zs = tl.zeros([BLOCK_N], dtype=tl.float32)  # sum of z")
            z = self.loop()
            e(f"m_new = tl.maximum(m, tl.max({z}, axis=1))")
            e(f"s = s * tl.exp(m - m_new) + tl.sum(tl.exp({z} - m_new[:, None]), axis=1)")
            e("m = m_new")
            if target:
                e(f"zy += tl.sum(tl.where(hit, {z}, 0.0), axis=1)")
                e(f"zs += tl.sum(tl.where(mask, {z}, 0.0), axis=1)")
            ctx.indent -= 1
            m, s, zy, zs = "m", "s", "zy", "zs"
        lse = ctx.let(f"{m} + tl.log({s})  # (BLOCK_N,) log-sum-exp")
        if not target:
            return lse, None
        target = ctx.let(f"{self.HIT} * {zy} + {self.SPREAD} * {zs}")
        return lse, target

    def grad_rows(self, gy: str, out: str) -> None:
        """The gradient of the current row block (after `stats`): softmax = exp(z - max) /
        sum, from the row's final max and sum."""
        if self.one:
            self.grad(self.ctx.let(f"{self.ex} / {self.s}[:, None]"), gy, out)
            return
        z = self.loop()
        self.grad(self.ctx.let(f"tl.exp({z} - m[:, None]) / s[:, None]"), gy, out)
        self.ctx.indent -= 1


def _gy(ctx, gy, lg: _Logits) -> str:
    """The scalar gy: loaded, or a recomputed ones_like (1.0)."""
    return ctx.value(gy, ctx.in_shape(lg.zi), "0", "0", "True")


def _cross_entropy(ctx, sib) -> None:
    """The mean loss (output 0, through the epilogue); with the sibling, its gradient too."""
    lg = _Logits(ctx, 0, 1)
    ctx.grid = (1,)
    e = ctx.emit
    out = gy = None
    if sib is not None and ctx.stores(0, node=sib):
        out = ctx.out_ptr(0, node=sib)
        gy = _gy(ctx, sib.inputs[0], lg)
    e("acc = tl.zeros([BLOCK_N], dtype=tl.float32)  # loss per row slot")
    e(f"for r0 in range(0, {lg.N}, BLOCK_N):")
    ctx.indent += 1
    lg.rows("r0")
    lse, target = lg.stats()
    e(f"acc += tl.where(rmask, {lse} - {target}, 0.0)")
    if out is not None:
        lg.grad_rows(gy, out)
    ctx.indent -= 1
    loss = ctx.let(f"tl.sum(acc, axis=0) / {lg.N}")
    _scalar_epilogue(ctx, loss)


def _cross_entropy_bwd(ctx) -> None:
    """(gy, logits, labels) -> gy * (softmax - q) / N, one program per row block."""
    lg = _Logits(ctx, 1, 2)
    ctx.grid = (max(1, cdiv(lg.n, lg.block_n)),)
    if not ctx.stores(0):
        ctx.emit("pass")                        # the gradient is not used: nothing to do
        return
    gy = _gy(ctx, ctx.node.inputs[0], lg)
    lg.rows("tl.program_id(0) * BLOCK_N")
    lg.stats(target=False)
    lg.grad_rows(gy, ctx.out_ptr(0))


def _scalar_epilogue(ctx, val: str) -> None:
    """A scalar output as a one-element tile through the epilogue."""
    ctx.emit("o = tl.arange(0, 1)  # (1,) the scalar's offset")
    ctx.emit("omask = o < 1")
    res = ctx.let(f"tl.zeros([1], dtype=tl.float32) + {val}")
    ctx.epilogue(res, "o", "o", "omask")


def _mse(ctx) -> None:
    """mean((pred - target)^2) over every element."""
    shape = ctx.in_shape(0)
    count = ctx.int("COUNT", numel(shape))

    def term(offs, chan, mask):
        a = ctx.load(0, offs, chan, mask)
        b = ctx.load(1, offs, chan, mask)
        d = ctx.let(f"{a} - {b}")
        return ctx.let(f"{d} * {d}")

    reduction(ctx, shape, range(len(shape)), term, lambda s: ctx.let(f"{s} / {count}"))


def _smooth_l1(ctx) -> None:
    """mean over every element of 0.5 d^2 / beta where |d| < beta, |d| - 0.5 beta elsewhere
    (d = pred - target; beta 0: |d|), as F.smooth_l1_loss."""
    shape = ctx.in_shape(0)
    count = ctx.int("COUNT", numel(shape))
    beta = float(ctx.attrs["beta"])

    def term(offs, chan, mask):
        a = ctx.load(0, offs, chan, mask)
        b = ctx.load(1, offs, chan, mask)
        d = ctx.let(f"{a} - {b}")
        ad = ctx.let(f"tl.abs({d})")
        if beta <= 0:
            return ad
        return ctx.let(f"tl.where({ad} < {beta!r}, 0.5 * {d} * {d} / {beta!r}, "
                       f"{ad} - {0.5 * beta!r})")

    reduction(ctx, shape, range(len(shape)), term, lambda s: ctx.let(f"{s} / {count}"))

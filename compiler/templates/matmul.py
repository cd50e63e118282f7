"""Matrix multiplication kernels: `linear` (y = x @ w^T + b) and `matmul` (op(a) @ op(b) with
either operand transposed), with the elementwise chain after them fused as an epilogue and a
bias gradient fused as a sibling.

One tiled GEMM serves every case; transposition only changes the offsets of the loads:

    pid -> (pid_m, pid_n) (grouped order) -> rm, rn -> loop over K in BLOCK_K steps:
        a (BLOCK_M, BLOCK_K), b (BLOCK_K, BLOCK_N) masked at the tails
        acc += tl.dot(a, b)  (float32, IEEE precision)
    -> + bias -> ctx.epilogue(acc, rm * N + rn, chan = rn, mask)

    A stored (M, K), or (K, M) when transpose_a       B stored (K, N), or (N, K) when transpose_b
    linear: A = x (M, K), B = w stored (N, K), bias (N,) per column

Sibling `sum(A) {dims=[0]}` (the bias gradient db = sum_rows G beside dW = G^T X): A is
stored (K, M), so db[m] is the sum over K of op(A)'s row m. The programs with pid_n == 0 add
up the rows of the A tiles they already load and store them: every db entry comes from
exactly one program, no atomics.

Block sizes are tunables (`blocks` below, ctx.tunable): chosen per shape by the GPU
autotuner (runtime/autotune.py) among the listed choices, the largest one under the
interpreter. Every tl.dot block is at least 16 in each dimension, as NVIDIA GPUs need.

`load_tile` is shared with the convolution template (conv.py).
"""
from __future__ import annotations

from . import cdiv

DEFAULT_BLOCK = 32       # tile side on a GPU before tuning (16 for small sizes)
MAX_BLOCK = 128          # largest BLOCK_M / BLOCK_N the GPU autotuner tries
GROUP_M = 8              # row blocks that walk the columns together (L2 reuse)


def blocks(ctx, m: int, n: int, k: int) -> tuple[int, int, int]:
    """BLOCK_M, BLOCK_N, BLOCK_K for a GEMM of sizes (m, n, k): on a GPU 32 before tuning, 16
    where a size is at most 16 (a classifier's 10 columns, a depthwise conv's 9 taps); the
    autotuner picks BLOCK_M and BLOCK_N per shape among up to three powers of two up to 128
    (BLOCK_K stays: at most 9 configs). Under the interpreter ctx.tunable takes the largest
    choice (few programs). Every block is at least 16, as tl.dot needs on a GPU."""
    def default(size):
        return 16 if size <= 16 else DEFAULT_BLOCK

    def choices(size):
        out = [default(size)]
        while out[-1] < min(MAX_BLOCK, size):
            out.append(out[-1] * 2)
        return tuple(out[-3:])
    return (ctx.tunable("BLOCK_M", default(m), choices(m)),
            ctx.tunable("BLOCK_N", default(n), choices(n)),
            ctx.tunable("BLOCK_K", default(k), (default(k),)))


def load_tile(ctx, i: int, offs: str, chan: str, mask: str) -> str:
    """Input i at flat offsets `offs` (its own row-major layout, also for a view) as a tile
    that is 0.0 where `mask` is off, as tl.dot needs: a masked load, or for a recomputed
    producer (ones_like, a mask, an inlined chain) its value explicitly masked to 0.0."""
    base = ctx.p.base(ctx.node.inputs[i])
    prod = ctx.p.producer.get(id(base))
    val = ctx.load(i, offs, chan, mask)
    if prod is not None and (id(prod) in ctx.p.remat or id(base) in ctx.p.inlined):
        return ctx.let(f"tl.where({mask}, {val}, 0.0)")
    return val


def grouped_pids(ctx, m: str, n: str) -> None:
    """pid -> (pid_m, pid_n) in groups of GROUP_M row blocks, so that the programs running
    together share their B tiles (and A tiles) in the L2 cache."""
    ctx.emit("pid = tl.program_id(0)")
    ctx.emit(f"num_m = tl.cdiv({m}, BLOCK_M)")
    ctx.emit(f"num_n = tl.cdiv({n}, BLOCK_N)")
    ctx.emit("width = GROUP_M * num_n")
    ctx.emit("first_m = (pid // width) * GROUP_M")
    ctx.emit("group_rows = tl.minimum(num_m - first_m, GROUP_M)")
    ctx.emit("pid_m = first_m + (pid % width) % group_rows")
    ctx.emit("pid_n = (pid % width) // group_rows")


def render(ctx) -> None:
    node = ctx.node
    a_shape, b_shape = ctx.in_shape(0), ctx.in_shape(1)
    if node.op == "linear":
        ta, tb = False, True                             # w is stored (N, K)
    else:
        ta, tb = bool(ctx.attrs.get("transpose_a")), bool(ctx.attrs.get("transpose_b"))
    m_, k_ = (a_shape[1], a_shape[0]) if ta else a_shape
    n_ = b_shape[0] if tb else b_shape[1]
    m, n, k = ctx.int("M", m_), ctx.int("N", n_), ctx.int("K", k_)
    bm, bn, _ = blocks(ctx, m_, n_, k_)      # GPU autotuning picks these per shape
    ctx.const("GROUP_M", GROUP_M)
    ctx.grid = (max(1, cdiv(m_, bm) * cdiv(n_, bn)),)
    sib = ctx.sibling("sum")
    if sib is not None:
        assert ta and sib.inputs[0] is node.inputs[0] and tuple(sib.attrs["dims"]) == (0,)

    grouped_pids(ctx, m, n)
    ctx.emit("rm = pid_m.to(tl.int64) * BLOCK_M + tl.arange(0, BLOCK_M)   # (BLOCK_M,) rows")
    ctx.emit("rn = pid_n.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)   # (BLOCK_N,) columns")
    ctx.emit(f"m_ok = rm < {m}")
    ctx.emit(f"n_ok = rn < {n}")
    ctx.emit("acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)")
    if sib is not None:
        ctx.emit("rowsum = tl.zeros((BLOCK_M,), dtype=tl.float32)   # sibling: sum of op(A) rows")
    ctx.emit(f"for k0 in range(0, {k}, BLOCK_K):")
    ctx.indent += 1
    ctx.emit("rk = k0 + tl.arange(0, BLOCK_K)   # (BLOCK_K,)")
    ctx.emit(f"k_ok = rk < {k}")
    ctx.emit("a_mask = m_ok[:, None] & k_ok[None, :]   # (BLOCK_M, BLOCK_K)")
    if ta:                                                # A stored (K, M): chan is m
        a_offs, a_chan = f"rk[None, :] * {m} + rm[:, None]", "rm[:, None]"
    else:                                                 # A stored (M, K): chan is k
        a_offs, a_chan = f"rm[:, None] * {k} + rk[None, :]", "rk[None, :]"
    a = load_tile(ctx, 0, a_offs, f"tl.broadcast_to({a_chan}, (BLOCK_M, BLOCK_K))", "a_mask")
    ctx.emit("b_mask = k_ok[:, None] & n_ok[None, :]   # (BLOCK_K, BLOCK_N)")
    if tb:                                                # B stored (N, K): chan is k
        b_offs, b_chan = f"rn[None, :] * {k} + rk[:, None]", "rk[:, None]"
    else:                                                 # B stored (K, N): chan is n
        b_offs, b_chan = f"rk[:, None] * {n} + rn[None, :]", "rn[None, :]"
    b = load_tile(ctx, 1, b_offs, f"tl.broadcast_to({b_chan}, (BLOCK_K, BLOCK_N))", "b_mask")
    ctx.emit(f"acc += {ctx.dot(a, b)}   # (BLOCK_M, BLOCK_N)")
    if sib is not None:
        ctx.emit(f"rowsum += tl.sum({a}, axis=1)")
    ctx.indent -= 1

    if sib is not None and ctx.stores(0, node=sib):
        ctx.emit("if pid_n == 0:   # one program per row block stores its sums")
        ctx.emit(f"    tl.store({ctx.out_ptr(0, node=sib)} + rm, rowsum, mask=m_ok)")
    if node.op == "linear" and len(node.inputs) > 2:
        bias = load_tile(ctx, 2, "rn", "rn", "n_ok")             # (BLOCK_N,)
        ctx.emit(f"acc += {bias}[None, :]")
    ctx.emit("mask = m_ok[:, None] & n_ok[None, :]   # (BLOCK_M, BLOCK_N)")
    ctx.emit(f"offs = rm[:, None] * {n} + rn[None, :]")
    ctx.epilogue("acc", "offs", "tl.broadcast_to(rn[None, :], (BLOCK_M, BLOCK_N))", "mask")

"""Detection loss kernels: the YOLO v1, RPN and Fast R-CNN losses, forward (a scalar) and
gradient.

    yolo_loss      pred [N, S, S, D = 5B + C], gt [N, M, 5] -> sum(w (pred - t)^2) / N
    yolo_loss_bwd  (gy, pred, gt) -> gy * 2 w (pred - t) / N, shaped like pred
    rpn_loss       (objectness [N, K], deltas [N, K, 4], labels [N, K] i64, targets [N, K, 4])
                   -> (sum over sampled of BCE-with-logits
                       + box_weight * sum over positives of smooth-L1) / max(#sampled, 1)
    rpn_loss_bwd   (gy, the same four) -> d/d objectness, d/d deltas
    fast_rcnn_loss (scores [R, V = C+1], deltas [R, 4V], rois [N, P, 4], gt [N, M, 5])
                   -> (sum over counted RoIs of softmax CE + box_weight * sum over positives
                       of smooth-L1 of the class's deltas) / max(#counted, 1)
    fast_rcnn_loss_bwd (gy, the same four) -> d/d scores, d/d deltas

YOLO works per cell (N*S*S of them, BLOCK cells a program). A cell finds its object by looping
over its image's M ground-truth rows as yolo_targets does (compiler/ops/detection.py): a row
with class > 0 whose centre, truncated to the grid in float64 as the reference's Python floats
are, lands in the cell; a later row replaces an earlier one. Of the cell's B boxes (unrolled)
the one with the highest IoU with that gt (the first on ties, as torch.argmax) is responsible:
its x, y, sqrt w, sqrt h are weighted by `coord` against the gt's (computed in float64, rounded
to float32 as the reference's targets are), its confidence against its IoU (a constant); every
other confidence against 0 with weight `noobj`; the class scores of a cell with an object
against its one-hot class. The loss is one program looping over the cells in blocks, so the
sum is deterministic without atomics; the gradient runs one program per block of cells and
writes every value of its cells.

The RPN loss walks the N*K anchors in blocks of BLOCK in one program, summing the sampled
anchors' BCE, the positives' smooth-L1 and the count of sampled anchors. Its gradient needs
that count before it writes: each program counts every label first (a loop over the labels;
the interpreter runs one program), then writes its block of both gradients.

Fast R-CNN matches each RoI (BLOCK of them a program, their scores one (BLOCK, BV) tile) to
its image's gt rows as roi_targets does: the first gt of the highest IoU among rows of class
> 0, its class if IoU >= fg_iou, background from bg_low, left out below, background for every
RoI of an image without gt; the target is box_encode with weights 10, 10, 5, 5. The loss is
one program over the RoIs; the gradient counts the RoIs in every program (a loop over all of
them, the matching redone), then writes its block's score row and 4V delta row.
"""
from __future__ import annotations

from . import cdiv, numel, pow2
from .loss import _scalar_epilogue
from .reduce import NEG_INF, TILE

BLOCK = 128                    # cells a program on a GPU
RPN_BLOCK = 1024               # anchors a program on a GPU (each program counts every label)
INTERPRETER_BLOCK = 1024       # the interpreter's cost is per program: few, large ones


def render(ctx) -> None:
    {"yolo_loss": yolo_loss, "yolo_loss_bwd": yolo_loss_bwd,
     "rpn_loss": rpn_loss, "rpn_loss_bwd": rpn_loss_bwd,
     "fast_rcnn_loss": fast_rcnn_loss,
     "fast_rcnn_loss_bwd": fast_rcnn_loss_bwd}[ctx.node.op](ctx)


def _block(ctx, total: int, gpu: int = BLOCK) -> int:
    block = min(pow2(total), INTERPRETER_BLOCK if ctx.interpreted else gpu)
    ctx.const("BLOCK", block)
    return block


def _area(ctx, box) -> str:
    """(x1 - x0)+ (y1 - y0)+ of a box given as four variables, as boxes.iou computes it."""
    x0, y0, x1, y1 = box
    return ctx.let(f"tl.maximum({x1} - {x0}, 0.0) * tl.maximum({y1} - {y0}, 0.0)")


def _iou(ctx, a, area_a: str, b, area_b: str) -> str:
    """boxes.iou of two boxes given as four variables each (0 where the union is empty)."""
    iw = ctx.let(f"tl.maximum(tl.minimum({a[2]}, {b[2]}) - tl.maximum({a[0]}, {b[0]}), 0.0)")
    ih = ctx.let(f"tl.maximum(tl.minimum({a[3]}, {b[3]}) - tl.maximum({a[1]}, {b[1]}), 0.0)")
    inter = ctx.let(f"{iw} * {ih}")
    union = ctx.let(f"{area_a} + {area_b} - {inter}")
    return ctx.let(f"tl.where({union} > 0, {inter} / tl.maximum({union}, 1e-12), 0.0)")


# -- YOLO v1 ------------------------------------------------------------------------------------

class _Yolo:
    """The sizes of one yolo kernel; `pi`/`gi` are the indices of pred and gt on the anchor."""

    def __init__(self, ctx, pi: int, gi: int):
        self.ctx, self.pi, self.gi = ctx, pi, gi
        n, s, _, d = ctx.in_shape(pi)
        m = ctx.in_shape(gi)[1]
        self.b = ctx.attrs["boxes"]
        self.c = d - 5 * self.b
        self.cells = n * s * s
        hgt, wid = ctx.attrs["size"]
        ctx.int("CELLS", self.cells)
        ctx.const("S", s), ctx.const("D", d), ctx.const("M", m)
        ctx.float("HGT", float(hgt)), ctx.float("WID", float(wid))
        ctx.float("COORD", ctx.attrs["coord"]), ctx.float("NOOBJ", ctx.attrs["noobj"])
        ctx.float("NIMG", float(n))
        self.block = _block(ctx, self.cells)

    def cells_at(self, start: str) -> None:
        """cell, cmask, n, row, col (BLOCK,) and base, the cell's first value in pred."""
        e = self.ctx.emit
        e(f"cell = {start} + tl.arange(0, BLOCK).to(tl.int64)  # (BLOCK,) cells of the grid")
        e("cmask = cell < CELLS")
        e("n = cell // (S * S)")
        e("row = (cell // S) % S")
        e("col = cell % S")
        e("base = cell * D")

    def owner(self) -> None:
        """has (the cell holds an object), its class index k0 and, as float64, the box's
        corners gx0..gy1 (pixels) and centre cx, cy (fractions): the last gt row that owns
        the cell."""
        e, ctx = self.ctx.emit, self.ctx
        e("has = cmask & (cell < 0)")
        e("k0 = tl.zeros([BLOCK], dtype=tl.int32)")
        for v in ("gx0", "gy0", "gx1", "gy1", "cx", "cy"):
            e(f"{v} = tl.zeros([BLOCK], dtype=tl.float64)")
        e("for m in range(M):")
        ctx.indent += 1
        e("g = n * (M * 5) + m * 5")
        cls = ctx.load(self.gi, "g", "0", "cmask", other="-1.0")
        x0, y0, x1, y1 = (ctx.let(f"{ctx.load(self.gi, f'g + {k}', '0', 'cmask')}"
                                  ".to(tl.float64)") for k in range(1, 5))
        mx = ctx.let(f"({x0} + {x1}) / 2 / WID")
        my = ctx.let(f"({y0} + {y1}) / 2 / HGT")
        gc, gr = self._grid_index(mx), self._grid_index(my)
        e(f"hit = cmask & ({cls} > 0) & ({gc} == col) & ({gr} == row)")
        e("has = has | hit")
        e(f"k0 = tl.where(hit, {cls}.to(tl.int32) - 1, k0)")
        for v, x in (("gx0", x0), ("gy0", y0), ("gx1", x1), ("gy1", y1), ("cx", mx), ("cy", my)):
            e(f"{v} = tl.where(hit, {x}, {v})")
        ctx.indent -= 1

    def _grid_index(self, frac: str) -> str:
        """Python's min(int(frac * S), S - 1) (truncation; a negative index wraps)."""
        i = self.ctx.let(f"tl.minimum(({frac} * S).to(tl.int64), S - 1)")
        return self.ctx.let(f"tl.where({i} < 0, {i} + S, {i})")

    def targets(self) -> None:
        """tx, ty, tw, th (float32) and the gt box as fractions tx0..ty1 (float32)."""
        e = self.ctx.emit
        e("tx = (cx * S - col).to(tl.float32)")
        e("ty = (cy * S - row).to(tl.float32)")
        e("tw = tl.sqrt(tl.maximum((gx1 - gx0) / WID, 0.0)).to(tl.float32)")
        e("th = tl.sqrt(tl.maximum((gy1 - gy0) / HGT, 0.0)).to(tl.float32)")
        e("tx0 = (gx0 / WID).to(tl.float32)")
        e("ty0 = (gy0 / HGT).to(tl.float32)")
        e("tx1 = (gx1 / WID).to(tl.float32)")
        e("ty1 = (gy1 / HGT).to(tl.float32)")
        e(f"tarea = {_area(self.ctx, ('tx0', 'ty0', 'tx1', 'ty1'))}")

    def boxes(self) -> list[tuple]:
        """Per box j: its five values (loaded) and its IoU with the gt; then `best`, the
        responsible box (the first highest IoU)."""
        e, ctx = self.ctx.emit, self.ctx
        e("colf = col.to(tl.float32)")
        e("rowf = row.to(tl.float32)")
        out = []
        for j in range(self.b):
            p = [ctx.load(self.pi, f"base + {5 * j + k}", "0", "cmask") for k in range(5)]
            pcx = ctx.let(f"(colf + {p[0]}) / S")
            pcy = ctx.let(f"(rowf + {p[1]}) / S")
            hw = ctx.let(f"{p[2]} * {p[2]} / 2")
            hh = ctx.let(f"{p[3]} * {p[3]} / 2")
            bx0, by0 = ctx.let(f"{pcx} - {hw}"), ctx.let(f"{pcy} - {hh}")
            bx1, by1 = ctx.let(f"{pcx} + {hw}"), ctx.let(f"{pcy} + {hh}")
            box = (bx0, by0, bx1, by1)
            iou = _iou(ctx, box, _area(ctx, box), ("tx0", "ty0", "tx1", "ty1"), "tarea")
            out.append((p, iou))
        e(f"bestv = {out[0][1]}")
        e("best = tl.zeros([BLOCK], dtype=tl.int32)")
        for j, (_, iou) in enumerate(out[1:], 1):
            e(f"take = {iou} > bestv")
            e(f"best = tl.where(take, {j}, best)")
            e(f"bestv = tl.where(take, {iou}, bestv)")
        return out

    def terms(self):
        """Yields (offset in the cell, pred value, weight, target) for every value of a cell
        (the class scores inside a `for k in range(C)` loop the caller closes)."""
        for j, (p, iou) in enumerate(self.boxes()):
            resp = self.ctx.let(f"has & (best == {j})")
            for k, t in enumerate(("tx", "ty", "tw", "th")):
                yield f"{5 * j + k}", p[k], self.ctx.let(f"tl.where({resp}, COORD, 0.0)"), t
            yield (f"{5 * j + 4}", p[4], self.ctx.let(f"tl.where({resp}, 1.0, NOOBJ)"),
                   self.ctx.let(f"tl.where({resp}, {iou}, 0.0)"))
        self.ctx.emit(f"for k in range({self.c}):")
        self.ctx.indent += 1
        off = f"{5 * self.b} + k"
        p = self.ctx.load(self.pi, f"base + {off}", "0", "cmask")
        yield (off, p, self.ctx.let("tl.where(has, 1.0, 0.0)"),
               self.ctx.let("tl.where(k0 == k, 1.0, 0.0)"))

    def walk(self, start: str):
        self.cells_at(start)
        self.owner()
        self.targets()
        return self.terms()


def yolo_loss(ctx) -> None:
    """One program: acc (BLOCK,) += w (p - t)^2 over every value of every cell, / N."""
    y = _Yolo(ctx, 0, 1)
    ctx.grid = (1,)
    e = ctx.emit
    e("acc = tl.zeros([BLOCK], dtype=tl.float32)  # loss per cell slot")
    e("for c0 in range(0, CELLS, BLOCK):")
    ctx.indent += 1
    for _, p, w, t in y.walk("c0"):
        d = ctx.let(f"{p} - {t}")
        e(f"acc += tl.where(cmask, {w} * {d} * {d}, 0.0)")
    ctx.indent -= 2                                   # the class loop, the cell loop
    _scalar_epilogue(ctx, ctx.let("tl.sum(acc, axis=0) / NIMG"))


def yolo_loss_bwd(ctx) -> None:
    """One program per block of cells: gy * 2 w (p - t) / N at every value of its cells."""
    y = _Yolo(ctx, 1, 2)
    ctx.grid = (max(1, cdiv(y.cells, y.block)),)
    if not ctx.stores(0):
        ctx.emit("pass")
        return
    gy = ctx.value(ctx.node.inputs[0], ctx.in_shape(1), "0", "0", "True")
    out = ctx.out_ptr(0)
    for off, p, w, t in y.walk("tl.program_id(0).to(tl.int64) * BLOCK"):
        ctx.emit(f"tl.store({out} + base + {off}, {gy} * 2.0 * {w} * ({p} - {t}) / NIMG, "
                 "mask=cmask)")
    ctx.indent -= 1


# -- RPN ----------------------------------------------------------------------------------------

def _rpn_sizes(ctx, oi: int) -> int:
    total = numel(ctx.in_shape(oi))
    ctx.int("TOTAL", total)
    ctx.float("BOXW", ctx.attrs["box_weight"])
    return _block(ctx, total, RPN_BLOCK)


def _anchors(ctx, start: str, li: int) -> tuple[str, str]:
    """a, amask (BLOCK,) anchors; returns (sampled, positive) as float32 tiles."""
    ctx.emit(f"a = {start} + tl.arange(0, BLOCK).to(tl.int64)  # (BLOCK,) anchors")
    ctx.emit("amask = a < TOTAL")
    lab = ctx.load(li, "a", "0", "amask", other="-1")
    return (ctx.let(f"tl.where({lab} >= 0, 1.0, 0.0)"),
            ctx.let(f"tl.where({lab} > 0, 1.0, 0.0)"))


def _smooth_l1(ctx, d: str, beta: float | None = None) -> str:
    beta = float(ctx.attrs["beta"] if beta is None else beta)
    ad = ctx.let(f"tl.abs({d})")
    if beta <= 0:
        return ad
    return ctx.let(f"tl.where({ad} < {beta!r}, 0.5 * {d} * {d} / {beta!r}, {ad} - {0.5 * beta!r})")


def _smooth_l1_grad(ctx, d: str, beta: float | None = None) -> str:
    beta = float(ctx.attrs["beta"] if beta is None else beta)
    if beta <= 0:
        return ctx.let(f"tl.where({d} > 0, 1.0, tl.where({d} < 0, -1.0, 0.0))")
    return ctx.let(f"tl.minimum(tl.maximum({d} / {beta!r}, -1.0), 1.0)")


def _box_diffs(ctx, di: int, ti: int):
    """(k, deltas - targets) for the four values of the anchors a."""
    for k in range(4):
        d = ctx.load(di, f"a * 4 + {k}", "0", "amask")
        t = ctx.load(ti, f"a * 4 + {k}", "0", "amask")
        yield k, ctx.let(f"{d} - {t}")


def _two_terms(ctx) -> None:
    """The accumulators of a classification + box loss over counted items (one program)."""
    ctx.grid = (1,)
    ctx.emit("cls = tl.zeros([BLOCK], dtype=tl.float32)  # classification loss per slot")
    ctx.emit("box = tl.zeros([BLOCK], dtype=tl.float32)  # smooth-L1 of positives per slot")
    ctx.emit("cnt = tl.zeros([BLOCK], dtype=tl.float32)  # counted items per slot")


def _two_terms_total(ctx) -> None:
    """(sum cls) / n + box_weight * (sum box) / n, n = max(count, 1), through the epilogue."""
    num = ctx.let("tl.maximum(tl.sum(cnt, axis=0), 1.0)")
    _scalar_epilogue(ctx, ctx.let(f"tl.sum(cls, axis=0) / {num} + "
                                  f"BOXW * (tl.sum(box, axis=0) / {num})"))


def _count_first(ctx, total: str, count) -> list[bool] | None:
    """The head of a two-gradient kernel: which outputs are stored (None, and a `pass` body,
    if neither), then num, the items counted over all of them (`count(start)` emits a block's
    and returns its condition), computed in every program."""
    want = [ctx.stores(0), ctx.stores(1)]
    if not any(want):
        ctx.emit("pass")
        return None
    ctx.emit("cnt = tl.zeros([BLOCK], dtype=tl.float32)")
    ctx.emit(f"for c0 in range(0, {total}, BLOCK):   # the count, in every program")
    ctx.indent += 1
    ctx.emit(f"cnt += tl.where({count('c0')}, 1.0, 0.0)")
    ctx.indent -= 1
    ctx.emit("num = tl.maximum(tl.sum(cnt, axis=0), 1.0)")
    return want


def rpn_loss(ctx) -> None:
    _rpn_sizes(ctx, 0)
    _two_terms(ctx)
    e = ctx.emit
    e("for a0 in range(0, TOTAL, BLOCK):")
    ctx.indent += 1
    sampled, positive = _anchors(ctx, "a0", 2)
    z = ctx.load(0, "a", "0", "amask")
    mx = ctx.let(f"tl.maximum(-{z}, 0.0)")
    bce = ctx.let(f"(1.0 - {positive}) * {z} + {mx} + "
                  f"tl.log(tl.exp(-{mx}) + tl.exp(-{z} - {mx}))")
    e(f"cls += {sampled} * {bce}")
    e(f"cnt += {sampled}")
    for _, d in _box_diffs(ctx, 1, 3):
        e(f"box += {positive} * {_smooth_l1(ctx, d)}")
    ctx.indent -= 1
    _two_terms_total(ctx)


def _sampled(ctx, start: str) -> str:
    ctx.emit(f"aa = {start} + tl.arange(0, BLOCK).to(tl.int64)")
    return f"{ctx.load(3, 'aa', '0', 'aa < TOTAL', other='-1')} >= 0"


def rpn_loss_bwd(ctx) -> None:
    block = _rpn_sizes(ctx, 1)
    ctx.grid = (max(1, cdiv(numel(ctx.in_shape(1)), block)),)
    want = _count_first(ctx, "TOTAL", lambda start: _sampled(ctx, start))
    if want is None:
        return
    e = ctx.emit
    gy = ctx.value(ctx.node.inputs[0], ctx.in_shape(1), "0", "0", "True")
    sampled, positive = _anchors(ctx, "tl.program_id(0).to(tl.int64) * BLOCK", 3)
    if want[0]:
        z = ctx.load(1, "a", "0", "amask")
        g = ctx.let(f"{gy} * (1.0 / (1.0 + tl.exp(-{z})) - {positive}) * {sampled} / num")
        e(f"tl.store({ctx.out_ptr(0)} + a, {g}, mask=amask)")
    if want[1]:
        scale = ctx.let(f"{gy} * BOXW / num * {positive}")
        for k, d in _box_diffs(ctx, 2, 4):
            e(f"tl.store({ctx.out_ptr(1)} + a * 4 + {k}, {scale} * {_smooth_l1_grad(ctx, d)}, "
              "mask=amask)")


# -- Fast R-CNN ---------------------------------------------------------------------------------

class _FastRcnn:
    """The sizes of one fast_rcnn kernel over R = N*P RoIs; `si` the index of scores on the
    anchor (deltas, rois and gt follow it)."""

    def __init__(self, ctx, si: int):
        self.ctx, self.si, self.di, self.ri, self.gi = ctx, si, si + 1, si + 2, si + 3
        r, v = ctx.in_shape(si)
        n, p, _ = ctx.in_shape(self.ri)
        self.r = r
        ctx.int("R", r)
        ctx.const("V", v), ctx.const("P", p), ctx.const("M", ctx.in_shape(self.gi)[1])
        ctx.const("BV", pow2(v))
        ctx.const("BD", pow2(4 * v))
        ctx.float("FG", float(ctx.attrs["fg_iou"])), ctx.float("BGLOW", float(ctx.attrs["bg_low"]))
        ctx.float("BOXW", float(ctx.attrs["box_weight"]))
        cap = TILE if ctx.interpreted else 64      # the interpreter: few, large programs
        self.block = min(pow2(r), max(1, TILE // pow2(4 * v)), cap)
        ctx.const("BLOCK", self.block)

    def match(self, start: str) -> None:
        """rr, rmask (BLOCK,) RoIs; lab (int64: its best gt's class if IoU >= FG, 0 between
        BGLOW and FG or when the image has no gt, -1 below BGLOW) as roi_targets assigns it,
        and the encoded targets t0..t3 of its best gt (weights 10, 10, 5, 5)."""
        e, ctx = self.ctx.emit, self.ctx
        e(f"rr = {start} + tl.arange(0, BLOCK).to(tl.int64)  # (BLOCK,) RoIs")
        e("rmask = rr < R")
        e("img = rr // P")
        rx0, ry0, rx1, ry1 = (ctx.load(self.ri, f"rr * 4 + {k}", "0", "rmask") for k in range(4))
        e(f"rarea = {_area(ctx, (rx0, ry0, rx1, ry1))}")
        e("best = tl.full([BLOCK], -1.0, tl.float32)")
        e("bcls = tl.zeros([BLOCK], dtype=tl.int64)")
        for v in ("bx0", "by0", "bx1", "by1"):
            e(f"{v} = tl.zeros([BLOCK], dtype=tl.float32)")
        e("for m in range(M):")
        ctx.indent += 1
        e("g = img * (M * 5) + m * 5")
        cls = ctx.load(self.gi, "g", "0", "rmask", other="-1.0")
        x0, y0, x1, y1 = (ctx.load(self.gi, f"g + {k}", "0", "rmask") for k in range(1, 5))
        gt = (x0, y0, x1, y1)
        iou = _iou(ctx, (rx0, ry0, rx1, ry1), "rarea", gt, _area(ctx, gt))
        e(f"take = ({cls} > 0) & ({iou} > best)")
        e(f"best = tl.where(take, {iou}, best)")
        e(f"bcls = tl.where(take, {cls}.to(tl.int64), bcls)")
        for v, x in (("bx0", x0), ("by0", y0), ("bx1", x1), ("by1", y1)):
            e(f"{v} = tl.where(take, {x}, {v})")
        ctx.indent -= 1
        e("lab = tl.where(best >= FG, bcls, tl.where(best >= BGLOW, 0, -1))")
        e("lab = tl.where(best < 0, 0, lab)  # an image without gt: every RoI background")
        e(f"rw = {rx1} - {rx0}")
        e(f"rh = {ry1} - {ry0}")
        e("pos = rmask & (lab > 0)")
        e("gw = bx1 - bx0")
        e("gh = by1 - by0")
        e("sw = tl.where(pos, rw, 1.0)  # the targets of others are never read: kept finite")
        e("sh = tl.where(pos, rh, 1.0)")
        e(f"t0 = 10.0 * ((bx0 + 0.5 * gw) - ({rx0} + 0.5 * rw)) / sw")
        e(f"t1 = 10.0 * ((by0 + 0.5 * gh) - ({ry0} + 0.5 * rh)) / sh")
        e("t2 = 5.0 * tl.log(tl.where(pos, gw, sw) / sw)")
        e("t3 = 5.0 * tl.log(tl.where(pos, gh, sh) / sh)")
        e("counted = rmask & (lab >= 0)")

    def scores(self) -> str:
        """cc (BV,) classes, smask, the scores tile (BLOCK, BV) (0 in absent rows, -inf in
        padding columns); exp(z - max) in ex, its sum in s and the log-sum-exp lse."""
        e, ctx = self.ctx.emit, self.ctx
        e("cc = tl.arange(0, BV)")
        e("smask = rmask[:, None] & (cc < V)[None, :]")
        z = ctx.load(self.si, "rr[:, None] * V + cc[None, :]", "0", "smask")
        e(f"z = tl.where((cc < V)[None, :], {z}, {NEG_INF})")
        e("zmax = tl.max(z, axis=1)")
        e("ex = tl.exp(z - zmax[:, None])")
        e("s = tl.sum(ex, axis=1)")
        e("lse = zmax + tl.log(s)")
        return "z"

    def deltas(self) -> list[str]:
        """The four deltas of each RoI's class (its label, 0 for -1)."""
        col = self.ctx.let("rr * (4 * V) + tl.maximum(lab, 0) * 4")
        return [self.ctx.load(self.di, f"{col} + {k}", "0", "rmask") for k in range(4)]


def fast_rcnn_loss(ctx) -> None:
    f = _FastRcnn(ctx, 0)
    _two_terms(ctx)
    e = ctx.emit
    e("for r0 in range(0, R, BLOCK):")
    ctx.indent += 1
    f.match("r0")
    z = f.scores()
    e(f"zy = tl.sum(tl.where(cc[None, :] == lab[:, None], {z}, 0.0), axis=1)")
    e("cls += tl.where(counted, lse - zy, 0.0)")
    e("cnt += tl.where(counted, 1.0, 0.0)")
    for k, d in enumerate(f.deltas()):
        e(f"box += tl.where(pos, {_smooth_l1(ctx, ctx.let(f'{d} - t{k}'), 1.0)}, 0.0)")
    ctx.indent -= 1
    _two_terms_total(ctx)


def fast_rcnn_loss_bwd(ctx) -> None:
    f = _FastRcnn(ctx, 1)
    ctx.grid = (max(1, cdiv(f.r, f.block)),)
    want = _count_first(ctx, "R", lambda start: f.match(start) or "counted")
    if want is None:
        return
    e = ctx.emit
    gy = ctx.value(ctx.node.inputs[0], ctx.in_shape(1), "0", "0", "True")
    f.match("tl.program_id(0).to(tl.int64) * BLOCK")
    if want[0]:
        f.scores()
        e("onehot = tl.where(cc[None, :] == lab[:, None], 1.0, 0.0)")
        e(f"gs = {gy} * (ex / s[:, None] - onehot) * tl.where(counted, 1.0, 0.0)[:, None] / num")
        e(f"tl.store({ctx.out_ptr(0)} + rr[:, None] * V + cc[None, :], gs, mask=smask)")
    if want[1]:
        e("dc = tl.arange(0, BD)")
        e("dmask = rmask[:, None] & (dc < 4 * V)[None, :]")
        e("doffs = rr[:, None] * (4 * V) + dc[None, :]")
        d = ctx.load(2, "doffs", "0", "dmask")
        e("k4 = dc % 4")
        e("t = tl.where(k4 == 0, t0[:, None], tl.where(k4 == 1, t1[:, None], "
          "tl.where(k4 == 2, t2[:, None], t3[:, None])))")
        grad = _smooth_l1_grad(ctx, ctx.let(f"{d} - t"), 1.0)
        e("hit = pos[:, None] & ((dc // 4)[None, :] == lab[:, None])")
        e(f"gd = tl.where(hit, {gy} * BOXW / num * {grad}, 0.0)")
        e(f"tl.store({ctx.out_ptr(1)} + doffs, gd, mask=dmask)")

"""Detection losses and heads: smooth-L1, the RPN's objectness + box loss, YOLO v1's head, loss
and decoding.

    smooth_l1(pred, target)                                   -> scalar mean   {beta}
    rpn_loss(objectness [N, K], deltas [N, K, 4], labels [N, K] i64, targets [N, K, 4])
                                                              -> scalar        {beta, box_weight}
    yolo_head(x [N, S*S*(5B+C)])                              -> [N, S, S, 5B+C]   {grid, boxes,
                                                                                    classes}
    yolo_loss(pred [N, S, S, 5B+C], gt [N, M, 5])             -> scalar  {size, coord, noobj}
    yolo_decode(pred [N, S, S, 5B+C])   -> boxes [N, S*S*B, 4], scores [N, S*S*B],
                                           classes [N, S*S*B] i64            {size}

`labels`/`targets` of rpn_loss are assign_targets' outputs (compiler/ops/boxes.py): labels > 0
positives, 0 sampled negatives, -1 left out.  A YOLO cell holds B boxes (x, y, sqrt w, sqrt h,
confidence) then C class scores; x, y are offsets in the cell, w, h fractions of the image (the
network predicts their square roots, as the paper's loss asks).  Every gradient is written out
(a backward op beside its forward). smooth_l1 has Triton kernels (a reduction in
templates/loss.py, an elementwise gradient); rpn_loss, yolo_loss, fast_rcnn_loss and their
gradients have theirs in templates/detection.py; yolo_decode has none yet and runs on the
triton backend as a `torch` step (compiler/torch_call.py).
"""
from __future__ import annotations

from ._lazy import F, torch

from ..ir import TensorType
from .boxes import UNIT_WEIGHTS, decode, encode, iou, match
from .conv import pair
from .registry import Arg, FirstInputGrad, FirstInputGradBwd, Op, ShapeError, get, register

SCALAR = TensorType(())


def smooth_l1_grad(diff, beta: float):
    """d/d diff of smooth_l1: diff/beta inside |diff| < beta, sign(diff) outside."""
    if beta <= 0:
        return torch.sign(diff)
    return (diff / beta).clamp(-1.0, 1.0)


@register
class SmoothL1(FirstInputGrad):
    name = layer = "smooth_l1"
    triton = "loss"                    # a reduction over every element (templates/loss.py)
    triton_prologue = (0, 1)
    triton_epilogue = True
    n_inputs = 2
    args = (Arg("beta", 1.0, kind="float", doc="where the quadratic part turns linear"),)
    doc = ("Huber-like loss averaged over every element: 0.5 d^2/beta if |d| < beta, "
           "|d| - 0.5 beta otherwise (F.smooth_l1_loss).")

    def infer(self, ins, attrs):
        if ins[0].shape != ins[1].shape:
            raise ShapeError(f"smooth_l1 needs prediction and target of one shape, got {ins[0]} "
                             f"and {ins[1]}")
        if attrs["beta"] < 0:
            raise ShapeError(f"smooth_l1 beta must not be negative, got {attrs['beta']}")
        return [SCALAR]

    def flops(self, ins, outs, attrs):
        return 4 * (ins[0].per_sample() or 0)

    def forward(self, ins, attrs, ctx):
        return (F.smooth_l1_loss(ins[0], ins[1], beta=attrs["beta"]),)


@register
class SmoothL1Bwd(FirstInputGradBwd):
    name = "smooth_l1_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, pred, target), as smooth_l1_grad
        gy, pred, target = ins
        n = 1
        for d in e.in_shape(1):
            n *= d
        d = e.let(f"{pred} - {target}")
        beta = attrs["beta"]
        if beta <= 0:
            g = e.let(f"tl.where({d} > 0, 1.0, tl.where({d} < 0, -1.0, 0.0))")
        else:
            g = e.let(f"tl.minimum(tl.maximum({d} / {float(beta)!r}, -1.0), 1.0)")
        return [e.let(f"{gy} * {g} / {float(n)!r}")]

    def forward(self, ins, attrs, ctx):
        gy, pred, target = ins
        return (gy * smooth_l1_grad(pred - target, attrs["beta"]) / pred.numel(),)


# -- RPN ----------------------------------------------------------------------------------------

def _rpn_masks(labels, dtype):
    sampled = (labels >= 0).to(dtype)
    positive = (labels > 0).to(dtype)
    return sampled, positive, sampled.sum().clamp(min=1.0)


@register
class RpnLoss(Op):
    triton = "detection"  # one program summing over the anchors (templates/detection.py)
    triton_epilogue = True
    name = layer = "rpn_loss"
    n_inputs = 4
    args = (Arg("beta", None, kind="float", doc="smooth-L1 beta of the box term; 1/9"),
            Arg("box_weight", 1.0, kind="float", doc="weight of the box term (the paper's lambda)"))
    doc = ("Faster R-CNN's RPN loss: binary cross-entropy of the objectness of sampled anchors "
           "(mean) + box_weight * smooth-L1 of positives' deltas (sum / sampled).")

    def attrs(self, bound, in_types):
        beta = bound.get("beta")
        return {"beta": 1.0 / 9 if beta is None else float(beta),
                "box_weight": float(bound.get("box_weight", 1.0))}

    def infer(self, ins, attrs):
        obj, deltas, labels, targets = ins
        if obj.rank != 2 or deltas.shape != (*obj.shape, 4) or targets.shape != deltas.shape:
            raise ShapeError(f"rpn_loss expects objectness [N, K], deltas and targets [N, K, 4], "
                             f"got {obj}, {deltas} and {targets}")
        if labels.shape != obj.shape or labels.dtype != "i64":
            raise ShapeError(f"rpn_loss expects integer labels {list(obj.shape)}, got {labels}")
        return [SCALAR]

    # In a train section the loss reads the data's boxes and assigns its own targets:
    # `objectness = rpn_loss(deltas=rpn_deltas, anchors=anchors)` is lowered by the add-loss
    # pass to assign_targets(anchors, %boxes) -> rpn_loss(objectness, deltas, labels, targets).
    box_target = True
    reads = ("deltas", "anchors")
    term_args = (Arg("deltas", "rpn_deltas", kind="name",
                     doc="the RPN's deltas [N, K, 4] (an output or named value)"),
                 Arg("anchors", "anchors", kind="name",
                     doc="the anchors [K, 4] (a named value or output)"),
                 Arg("fg_iou", 0.7, kind="float", doc="IoU from which an anchor is an object"),
                 Arg("bg_iou", 0.3, kind="float", doc="IoU under which it is background"),
                 Arg("batch", 256, kind="int", doc="anchors sampled per image"),
                 Arg("positive_fraction", 0.5, kind="float", doc="most of them positive"),
                 *args)
    ASSIGN = ("fg_iou", "bg_iou", "batch", "positive_fraction")

    def term_attrs(self, bound) -> tuple[dict, dict]:
        """(assign_targets' attributes, rpn_loss's) of a train-section term."""
        full = {a.name: bound.get(a.name, a.default) for a in self.term_args}
        assign = {k: full[k] for k in self.ASSIGN}
        return ({**assign, "bg_low": 0.0, "low_quality": True, "weights": UNIT_WEIGHTS},
                self.attrs({k: full[k] for k in ("beta", "box_weight")}, []))

    def term_infer(self, ins, attrs):
        obj, deltas, anchors, gt = ins
        assign, own = self.term_attrs(attrs)
        labels, targets = get("assign_targets").infer([anchors, gt], assign)
        if anchors.rank == 2 and anchors.shape[0] != obj.shape[-1]:
            raise ShapeError(f"rpn_loss needs one anchor per objectness value: {obj} against "
                             f"anchors {anchors}")
        return self.infer([obj, deltas, labels, targets], own)

    def emit_term(self, b, ins, attrs):
        obj, deltas, anchors, gt = ins
        assign, own = self.term_attrs(attrs)
        labels, targets = b.emit("assign_targets", [anchors, gt], assign)
        return b.emit1("rpn_loss", [obj, deltas, labels, targets], own)

    def forward(self, ins, attrs, ctx):
        obj, deltas, labels, targets = ins
        sampled, positive, n = _rpn_masks(labels, obj.dtype)
        cls = (F.binary_cross_entropy_with_logits(obj, positive, reduction="none")
               * sampled).sum() / n
        box = (F.smooth_l1_loss(deltas, targets, beta=attrs["beta"], reduction="none")
               * positive[..., None]).sum() / n
        return (cls + attrs["box_weight"] * box,)

    def vjp(self, b, node, gouts, needs):
        obj, deltas, labels, targets = node.inputs
        g_obj, g_deltas = b.emit("rpn_loss_bwd", [gouts[0], obj, deltas, labels, targets],
                                 node.attrs)
        return [g_obj, g_deltas, None, None]


@register
class RpnLossBwd(Op):
    """d/d objectness = (sigmoid(z) - [positive]) sampled / n;
    d/d deltas = box_weight * smooth_l1'(d - t) positive / n."""
    triton = "detection"

    name = "rpn_loss_bwd"
    n_inputs = 5

    def infer(self, ins, attrs):
        return [ins[1], ins[2]]

    def forward(self, ins, attrs, ctx):
        gy, obj, deltas, labels, targets = ins
        sampled, positive, n = _rpn_masks(labels, obj.dtype)
        g_obj = gy * (torch.sigmoid(obj) - positive) * sampled / n
        g_box = (gy * attrs["box_weight"] / n * positive[..., None]
                 * smooth_l1_grad(deltas - targets, attrs["beta"]))
        return g_obj, g_box


# -- the RPN's per-anchor view --------------------------------------------------------------------

def _per_anchor_dims(t: TensorType, k: int, what: str) -> tuple:
    if t.rank != 4 or not all(isinstance(d, int) for d in t.shape[1:]):
        raise ShapeError(f"{what} needs a feature map [N, A*k, H, W] of static size, got {t}")
    if k < 1 or t.shape[1] % k:
        raise ShapeError(f"{what}({k}): the map's {t.shape[1]} channels are not a multiple of "
                         f"{k} values per anchor")
    return t.shape[0], t.shape[1] // k, t.shape[2], t.shape[3]


@register
class PerAnchor(Op):
    name = layer = "per_anchor"
    triton = "copy"                      # a permuting copy (templates/copy.py)
    args = (Arg("values", 1, kind="int", doc="values per anchor (k): 1 objectness, 4 deltas"),)
    doc = ("The RPN's conv outputs [N, A*k, H, W] (channel a*k + j: anchor a's value j) viewed "
           "per anchor in the `anchors` layer's order (cell row-major, then anchor): "
           "[N, H*W*A] for k = 1, [N, H*W*A, k] otherwise.")

    def infer(self, ins, attrs):
        k = attrs["values"]
        n, a, h, w = _per_anchor_dims(ins[0], k, "per_anchor")
        return [TensorType((n, h * w * a) if k == 1 else (n, h * w * a, k), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        x, k = ins[0], attrs["values"]
        n, c, h, w = x.shape
        y = x.reshape(n, c // k, k, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, k)
        return (y[..., 0] if k == 1 else y,)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("per_anchor_bwd", [gouts[0], node.inputs[0]], node.attrs)]


@register
class PerAnchorBwd(Op):
    """The inverse permutation: gy [N, H*W*A(, k)] back to the map's layout [N, A*k, H, W]."""
    name = "per_anchor_bwd"
    triton = "copy"
    n_inputs = 2
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        k = attrs["values"]
        n, c, h, w = x.shape
        g = gy.reshape(n, h, w, c // k, k).permute(0, 3, 4, 1, 2)
        return (g.reshape(n, c, h, w),)


# -- YOLO v1 ------------------------------------------------------------------------------------

def _yolo_dims(t: TensorType, what: str, boxes: int | None = None):
    if t.rank != 4 or t.shape[1] != t.shape[2] or not isinstance(t.shape[1], int):
        raise ShapeError(f"{what} expects a YOLO grid [N, S, S, 5B+C], got {t}")
    return t.shape[1], t.shape[3]


class _YoloOp(Op):
    triton = "torch"      # yolo_decode has no kernel: its reference forward runs in the step
    args = (Arg("boxes", 2, kind="int", doc="boxes per cell (B)"),
            Arg("size", None, kind="int2", doc="image size in pixels, s or [h, w]"))

    def attrs(self, bound, in_types):
        out = dict(bound)
        out["boxes"] = int(bound.get("boxes", 2))
        if bound.get("size") is not None:
            out["size"] = pair(bound["size"], f"{self.name} size")
        return out

    def grid_dims(self, t: TensorType, attrs) -> tuple[int, int, int]:
        s, depth = _yolo_dims(t, self.name)
        b = attrs["boxes"]
        if b < 1 or depth - 5 * b < 1:
            raise ShapeError(f"{self.name}: a cell of {depth} values cannot hold {b} boxes of 5 "
                             "values and at least one class score")
        if attrs.get("size") is None:
            raise ShapeError(f"{self.name} needs size=<image size in pixels>")
        return s, b, depth - 5 * b


@register
class YoloHead(Op):
    name = layer = "yolo_head"
    triton = "view"
    args = (Arg("grid", 7, kind="int", doc="cells per side (S)"),
            Arg("boxes", 2, kind="int", doc="boxes per cell (B)"),
            Arg("classes", 20, kind="int", doc="classes (C)"))
    doc = "YOLO v1's output layer: [N, S*S*(5B+C)] features viewed as the grid [N, S, S, 5B+C]."

    def infer(self, ins, attrs):
        s, b, c = attrs["grid"], attrs["boxes"], attrs["classes"]
        if min(s, b, c) < 1:
            raise ShapeError(f"yolo_head needs grid, boxes and classes of at least 1, got "
                             f"{s}, {b}, {c}")
        want = s * s * (5 * b + c)
        if ins[0].rank != 2 or ins[0].shape[1] != want:
            raise ShapeError(f"yolo_head(grid={s}, boxes={b}, classes={c}) needs [N, {want}] "
                             f"features (S*S*(5B+C)), got {ins[0]}; end with linear({want})")
        return [TensorType((ins[0].shape[0], s, s, 5 * b + c), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        s = attrs["grid"]
        return (ins[0].reshape(ins[0].shape[0], s, s, -1),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("reshape", [gouts[0]], {"shape": node.inputs[0].type.shape[1:]})]


def _yolo_boxes(pred, s: int, b: int):
    """Predicted boxes [N, S, S, B, 4] as (x0, y0, x1, y1) fractions of the image."""
    n = pred.shape[0]
    p = pred[..., :5 * b].reshape(n, s, s, b, 5)
    col = torch.arange(s, dtype=pred.dtype, device=pred.device)[None, None, :, None]
    row = torch.arange(s, dtype=pred.dtype, device=pred.device)[None, :, None, None]
    cx, cy = (col + p[..., 0]) / s, (row + p[..., 1]) / s
    w, h = p[..., 2] ** 2, p[..., 3] ** 2
    return torch.stack((cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2), dim=-1)


def yolo_targets(pred, gt, s: int, b: int, size, coord: float, noobj: float):
    """(target, weight), both shaped like pred, such that the loss is
    sum(weight * (pred - target)^2) / N.  A gt box belongs to the cell holding its centre (a
    later box in the same cell replaces an earlier one); of that cell's B boxes the one with the
    highest IoU is responsible (coord-weighted x, y, sqrt w, sqrt h; confidence target its IoU);
    every other box's confidence is pushed to 0 with weight noobj."""
    n, c = pred.shape[0], pred.shape[3] - 5 * b
    hgt, wid = size
    target = torch.zeros_like(pred)
    weight = torch.zeros_like(pred)
    box_w = weight[..., :5 * b].view(n, s, s, b, 5)
    box_t = target[..., :5 * b].view(n, s, s, b, 5)
    box_w[..., 4] = noobj
    with torch.no_grad():
        boxes = _yolo_boxes(pred, s, b)
    for i in range(n):
        for cls, x0, y0, x1, y1 in gt[i].tolist():
            if cls <= 0:
                continue
            cx, cy = (x0 + x1) / 2 / wid, (y0 + y1) / 2 / hgt
            col, row = min(int(cx * s), s - 1), min(int(cy * s), s - 1)
            truth = torch.tensor([[x0 / wid, y0 / hgt, x1 / wid, y1 / hgt]], dtype=pred.dtype,
                                 device=pred.device)
            overlaps = iou(boxes[i, row, col], truth)[:, 0]            # (B,)
            j = int(torch.argmax(overlaps))
            box_w[i, row, col, :, :] = 0.0
            box_w[i, row, col, :, 4] = noobj
            box_w[i, row, col, j] = torch.tensor([coord] * 4 + [1.0], dtype=pred.dtype)
            box_t[i, row, col, :] = 0.0
            box_t[i, row, col, j] = torch.tensor(
                [cx * s - col, cy * s - row, ((x1 - x0) / wid) ** 0.5, ((y1 - y0) / hgt) ** 0.5,
                 float(overlaps[j])], dtype=pred.dtype)
            weight[i, row, col, 5 * b:] = 1.0
            target[i, row, col, 5 * b:] = F.one_hot(torch.tensor(int(cls) - 1), c).to(pred.dtype)
    return target, weight


def _targets_of(pred, gt, attrs):
    return yolo_targets(pred, gt, pred.shape[1], attrs["boxes"], attrs["size"], attrs["coord"],
                        attrs["noobj"])


@register
class YoloLoss(FirstInputGrad, _YoloOp):
    name = layer = "yolo_loss"
    triton = "detection"  # one program over the cells (templates/detection.py)
    triton_epilogue = True
    n_inputs = 2
    args = _YoloOp.args + (
        Arg("coord", 5.0, kind="float", doc="weight of the box coordinates (lambda_coord)"),
        Arg("noobj", 0.5, kind="float", doc="weight of confidences with no object (lambda_noobj)"))
    doc = "YOLO v1's sum-squared loss, summed over the grid and averaged over the batch."
    box_target = True        # a train section's target: the data's boxes [N, M, 5]

    def attrs(self, bound, in_types):
        return {**super().attrs(bound, in_types), "coord": float(bound.get("coord", 5.0)),
                "noobj": float(bound.get("noobj", 0.5))}

    def infer(self, ins, attrs):
        self.grid_dims(ins[0], attrs)
        gt = ins[1]
        if gt.rank != 3 or gt.shape[2] != 5 or gt.shape[0] != ins[0].shape[0]:
            raise ShapeError(f"yolo_loss expects ground truth [N, M, 5] (class, x0, y0, x1, y1), "
                             f"got {gt}")
        return [SCALAR]

    def forward(self, ins, attrs, ctx):
        pred, gt = ins
        target, weight = _targets_of(pred, gt, attrs)
        return ((weight * (pred - target) ** 2).sum() / pred.shape[0],)

    def num_classes(self, t: TensorType, attrs) -> int:
        return self.grid_dims(t, attrs)[2]

    def detect(self, pred, attrs, tensors=None):
        """The boxes the grid it scores predicts (yolo_decode): boxes [N, K, 4] in pixels,
        class-specific scores [N, K], classes [N, K] (1..C), before NMS."""
        return YoloDecode().forward([pred], attrs, None)


@register
class YoloLossBwd(FirstInputGradBwd):
    """d loss / d pred = 2 weight (pred - target) / N (the IoU target is a constant)."""
    triton = "detection"  # one program per block of cells (templates/detection.py)

    name = "yolo_loss_bwd"

    def forward(self, ins, attrs, ctx):
        gy, pred, gt = ins
        target, weight = _targets_of(pred, gt, attrs)
        return (gy * 2.0 * weight * (pred - target) / pred.shape[0],)


@register
class YoloDecode(_YoloOp):
    name = layer = "yolo_decode"
    differentiable = False
    doc = ("YOLO v1's detections: every predicted box in pixels, its class-specific score "
           "(confidence x class probability) and its class (1..C).")

    def infer(self, ins, attrs):
        s, b, _ = self.grid_dims(ins[0], attrs)
        n, k = ins[0].shape[0], s * s * b
        return [TensorType((n, k, 4), ins[0].dtype), TensorType((n, k), ins[0].dtype),
                TensorType((n, k), "i64")]

    def forward(self, ins, attrs, ctx):
        pred = ins[0]
        n, s, b = pred.shape[0], pred.shape[1], attrs["boxes"]
        hgt, wid = attrs["size"]
        scale = torch.tensor([wid, hgt, wid, hgt], dtype=pred.dtype, device=pred.device)
        boxes = _yolo_boxes(pred, s, b) * scale                       # (N, S, S, B, 4)
        conf = pred[..., :5 * b].reshape(n, s, s, b, 5)[..., 4]
        prob, cls = pred[..., 5 * b:].max(dim=-1)                     # (N, S, S)
        scores = conf * prob[..., None]
        classes = (cls + 1)[..., None].expand(n, s, s, b)
        return boxes.reshape(n, -1, 4), scores.reshape(n, -1), classes.reshape(n, -1)


# -- Fast R-CNN's multi-task loss ---------------------------------------------------------------

FAST_RCNN_WEIGHTS = (10.0, 10.0, 5.0, 5.0)     # the box coding weights of the RoI head


def roi_targets(rois, gt, fg_iou: float, bg_low: float, weights):
    """Each RoI's class (its best gt's if IoU >= fg_iou, 0 background if bg_low <= IoU <
    fg_iou, -1 left out below bg_low) and regression target (box_encode of its gt, 0 unless
    positive): labels [N*P] i64, targets [N*P, 4], RoIs [N, P, 4], gt [N, M, 5]."""
    labels, targets = [], []
    for r, g in zip(rois, gt):
        lab, which, real = match(r, g, fg_iou, fg_iou, bg_low, False)
        t = torch.zeros_like(r)
        pos = lab > 0
        if bool(pos.any()):
            t[pos] = encode(real[which[pos], 1:], r[pos], weights)
        labels.append(lab)
        targets.append(t)
    return torch.cat(labels), torch.cat(targets)


def _fast_rcnn_terms(scores, deltas, rois, gt, attrs):
    """(labels, the class-specific deltas [R, 4] of each RoI's class, targets, positives,
    number of RoIs counted)."""
    labels, targets = roi_targets(rois, gt, attrs["fg_iou"], attrs["bg_low"], FAST_RCNN_WEIGHTS)
    r = scores.shape[0]
    picked = deltas.reshape(r, -1, 4)[torch.arange(r), labels.clamp(min=0)]    # (R, 4)
    positive = (labels > 0).to(scores.dtype)[:, None]
    return labels, picked, targets, positive, (labels >= 0).sum().clamp(min=1)


@register
class FastRcnnLoss(Op):
    name = layer = "fast_rcnn_loss"
    n_inputs = 4
    triton = "detection"  # one program matching every RoI (templates/detection.py)
    triton_epilogue = True
    box_target = True     # a train section's target: the data's boxes [N, M, 5]
    reads = ("deltas", "rois")   # the other tensors the loss reads, by output or input name
    args = (Arg("deltas", "deltas", kind="name", doc="the output of class-specific box deltas"),
            Arg("rois", "proposals", kind="name", doc="the input (or output) of RoIs [N, P, 4]"),
            Arg("fg_iou", 0.5, kind="float", doc="IoU with a gt box from which a RoI is an object"),
            Arg("bg_low", 0.1, kind="float", doc="IoU below which a RoI is left out"),
            Arg("box_weight", 1.0, kind="float", doc="lambda, the weight of the box term"))
    doc = ("Fast R-CNN's multi-task loss over RoIs: softmax cross-entropy of scores [R, C+1] "
           "against each RoI's class by IoU + box_weight * smooth-L1 of its class's deltas.")

    def attrs(self, bound, in_types):
        return {a.name: bound.get(a.name, a.default) for a in self.args}

    def infer(self, ins, attrs):
        scores, deltas, rois, gt = ins
        if scores.rank != 2 or scores.shape[1] < 2:
            raise ShapeError(f"fast_rcnn_loss scores RoIs [R, C+1] (background first), "
                             f"got {scores}")
        if deltas.shape != (scores.shape[0], 4 * scores.shape[1]):
            raise ShapeError(f"fast_rcnn_loss needs deltas [R, 4(C+1)] = "
                             f"[{scores.shape[0]}, {4 * scores.shape[1]}] beside scores "
                             f"{scores}, got {deltas}")
        if rois.rank != 3 or rois.shape[2] != 4 or not isinstance(rois.shape[1], int):
            raise ShapeError(f"fast_rcnn_loss needs RoIs per image [N, P, 4], got {rois}")
        if gt.rank != 3 or gt.shape[2] != 5:
            raise ShapeError(f"fast_rcnn_loss expects ground truth [N, M, 5], got {gt}")
        if not 0.0 <= attrs["bg_low"] <= attrs["fg_iou"] <= 1.0:
            raise ShapeError("fast_rcnn_loss needs 0 <= bg_low <= fg_iou <= 1")
        return [SCALAR]

    def num_classes(self, t: TensorType, attrs) -> int:
        return t.shape[1] - 1

    def forward(self, ins, attrs, ctx):
        scores, deltas, rois, gt = ins
        labels, picked, targets, positive, n = _fast_rcnn_terms(scores, deltas, rois, gt, attrs)
        cls = F.cross_entropy(scores, labels, ignore_index=-1, reduction="sum") / n
        box = (F.smooth_l1_loss(picked, targets, beta=1.0, reduction="none") * positive).sum() / n
        return (cls + attrs["box_weight"] * box,)

    def vjp(self, b, node, gouts, needs):
        g_scores, g_deltas = b.emit("fast_rcnn_loss_bwd", [gouts[0], *node.inputs], node.attrs)
        return [g_scores, g_deltas, None, None]

    def detect(self, scores, attrs, tensors):
        """Per RoI and object class: its box (the RoI moved by that class's deltas), scored by
        the softmax probability of the class: boxes [N, P*C, 4], scores, classes (1..C)."""
        rois = tensors[attrs["rois"]]                              # (N, P, 4)
        n, p, _ = rois.shape
        c = scores.shape[1] - 1
        prob = torch.softmax(scores, dim=1)[:, 1:].reshape(n, p * c)
        deltas = tensors[attrs["deltas"]].reshape(n, p, c + 1, 4)[:, :, 1:]
        boxes = decode(deltas, rois[:, :, None, :], FAST_RCNN_WEIGHTS).clamp(min=0)
        classes = torch.arange(1, c + 1, device=scores.device).repeat(n, p)
        return boxes.reshape(n, p * c, 4), prob, classes.reshape(n, p * c)


@register
class FastRcnnLossBwd(Op):
    """d/d scores = (softmax - onehot(label)) / n for counted RoIs; d/d deltas: the class's
    four columns get box_weight * smooth_l1'(d - t) / n for positives, 0 elsewhere."""

    name = "fast_rcnn_loss_bwd"
    n_inputs = 5
    triton = "detection"

    def infer(self, ins, attrs):
        return [ins[1], ins[2]]

    def forward(self, ins, attrs, ctx):
        gy, scores, deltas, rois, gt = ins
        labels, picked, targets, positive, n = _fast_rcnn_terms(scores, deltas, rois, gt, attrs)
        counted = (labels >= 0).to(scores.dtype)[:, None]
        onehot = F.one_hot(labels.clamp(min=0), scores.shape[1]).to(scores.dtype)
        g_scores = gy * (torch.softmax(scores, dim=1) - onehot) * counted / n
        r = scores.shape[0]
        g_deltas = torch.zeros_like(deltas).reshape(r, -1, 4)
        g_deltas[torch.arange(r), labels.clamp(min=0)] = (
            gy * attrs["box_weight"] / n * positive * smooth_l1_grad(picked - targets, 1.0))
        return g_scores, g_deltas.reshape(deltas.shape)

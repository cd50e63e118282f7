"""Boxes for detection: IoU, Faster R-CNN's box coding, anchors, non-maximum suppression, and
target assignment by IoU with seeded sampling.

A box is (x0, y0, x1, y1) in pixels, x1/y1 exclusive (width = x1 - x0), the last axis of size 4.
Ground truth comes as the `shapes` data set gives it: boxes [N, M, 5] = (class, x0, y0, x1, y1),
classes 1..C (0 is background), unused rows of class -1.

    box_iou(a [.., A, 4], b [.., B, 4])            -> [.., A, B]
    box_encode(boxes [.., 4], anchors [.., 4])     -> deltas [.., 4]   {weights}
    box_decode(deltas [.., 4], anchors [.., 4])    -> boxes [.., 4]    {weights, clip}
    anchors(feature [N, C, H, W])                  -> [H*W*A, 4]       {sizes, ratios, stride}
    nms(boxes [.., K, 4], scores [.., K], classes [.., K])  -> keep [.., K] (1.0 kept)  {iou}
    assign_targets(anchors [K, 4] | [N, K, 4], gt [N, M, 5]) -> labels [N, K] i64, deltas [N, K, 4]
    propose(objectness [N, K], deltas [N, K, 4], anchors [K, 4]) -> proposals [N, P, 4]
                                                   {count, pre_nms, iou, size, min_size, gt}
    add_gt_boxes(proposals [N, P, 4], gt [N, M, 5]) -> [N, P, 4]   (training: gt-proposals pass)

None of them is trained through (their outputs are constants to autodiff), and none has Triton
kernels: on the triton backend each runs as a `torch` step, its reference forward between the
kernels (compiler/torch_call.py).
"""
from __future__ import annotations

import math

import numpy as np

from ._lazy import torch

from ..ir import TensorType
from .conv import pair
from .registry import REQUIRED, Arg, Op, ShapeError, register

DEFAULT_CLIP = math.log(1000.0 / 16)          # torchvision's bound on decoded dw, dh
UNIT_WEIGHTS = (1.0, 1.0, 1.0, 1.0)


def _boxes(t: TensorType, what: str) -> None:
    if t.rank < 1 or t.shape[-1] != 4:
        raise ShapeError(f"{what} expects boxes [..., 4] (x0, y0, x1, y1), got {t}")


def _weights(attrs) -> tuple[float, float, float, float]:
    w = tuple(float(v) for v in attrs.get("weights") or UNIT_WEIGHTS)
    if len(w) != 4 or min(w) <= 0:
        raise ShapeError(f"box weights must be four positive numbers (wx, wy, ww, wh), got {w}")
    return w


# -- the functions, shared by the ops and by whoever needs them at run time ---------------------

def iou(a, b):
    """IoU of every box in a [.., A, 4] with every box in b [.., B, 4] -> [.., A, B]; 0 where
    the union is empty."""
    area_a = (a[..., 2] - a[..., 0]).clamp(min=0) * (a[..., 3] - a[..., 1]).clamp(min=0)
    area_b = (b[..., 2] - b[..., 0]).clamp(min=0) * (b[..., 3] - b[..., 1]).clamp(min=0)
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])      # (.., A, B, 2)
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-12), torch.zeros_like(inter))


def _centre_size(boxes):
    w = boxes[..., 2] - boxes[..., 0]
    h = boxes[..., 3] - boxes[..., 1]
    return boxes[..., 0] + 0.5 * w, boxes[..., 1] + 0.5 * h, w, h


def encode(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Faster R-CNN's deltas: (wx (x-xa)/wa, wy (y-ya)/ha, ww log(w/wa), wh log(h/ha))."""
    wx, wy, ww, wh = weights
    x, y, w, h = _centre_size(boxes)
    xa, ya, wa, ha = _centre_size(anchors)
    return torch.stack((wx * (x - xa) / wa, wy * (y - ya) / ha,
                        ww * torch.log(w / wa), wh * torch.log(h / ha)), dim=-1)


def decode(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), clip=DEFAULT_CLIP):
    """The inverse of `encode`; dw, dh are clamped at `clip` before the exponential."""
    wx, wy, ww, wh = weights
    xa, ya, wa, ha = _centre_size(anchors)
    x = deltas[..., 0] / wx * wa + xa
    y = deltas[..., 1] / wy * ha + ya
    w = torch.exp((deltas[..., 2] / ww).clamp(max=clip)) * wa
    h = torch.exp((deltas[..., 3] / wh).clamp(max=clip)) * ha
    return torch.stack((x - 0.5 * w, y - 0.5 * h, x + 0.5 * w, y + 0.5 * h), dim=-1)


def make_anchors(h: int, w: int, sizes, ratios, stride: int, dtype=None):
    """[h*w*A, 4] anchors: per cell (row-major), per ratio, per size, a box of area size^2 and
    height/width = ratio, centred on the cell's centre ((j + 0.5) stride, (i + 0.5) stride)."""
    dtype = dtype or torch.float32
    r = torch.tensor(ratios, dtype=torch.float64)
    s = torch.tensor(sizes, dtype=torch.float64)
    hs = (s[None, :] * r.sqrt()[:, None]).reshape(-1)                # (A,) ratio-major
    ws = (s[None, :] / r.sqrt()[:, None]).reshape(-1)
    base = torch.stack((-ws, -hs, ws, hs), dim=1) / 2                 # (A, 4)
    cy = (torch.arange(h, dtype=torch.float64) + 0.5) * stride
    cx = (torch.arange(w, dtype=torch.float64) + 0.5) * stride
    yy, xx = torch.meshgrid(cy, cx, indexing="ij")
    centres = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)  # (h*w, 1, 4)
    return (centres + base[None]).reshape(-1, 4).to(dtype)


def nms_keep(boxes, scores, classes, iou_threshold: float):
    """Greedy per-class NMS of one image: a 0/1 mask over the K boxes. In score order, a box is
    kept unless a kept box of its class overlaps it with IoU > iou_threshold; boxes of class < 0
    (padding) are never kept.  (The greedy walk runs over a NumPy copy of the overlaps: one
    host loop of K cheap steps instead of K tensor operations.)"""
    keep = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    valid = classes >= 0
    if not bool(valid.any()):
        return keep
    overlap = iou(boxes, boxes) > iou_threshold
    overlap &= classes[:, None] == classes[None, :]
    over = overlap.cpu().numpy()
    suppressed = (~valid).cpu().numpy().copy()
    kept = np.zeros(suppressed.shape, dtype=bool)
    for i in torch.argsort(scores, descending=True, stable=True).tolist():
        if not suppressed[i]:
            kept[i] = True
            suppressed |= over[i]
    return torch.from_numpy(kept).to(scores.device)


def propose_boxes(objectness, deltas, anchors, count: int, pre_nms: int, iou_threshold: float,
                  size, min_size: float):
    """Faster R-CNN's proposal layer for one image: the pre_nms anchors of highest objectness
    (stable order), moved by their deltas, clipped to the image (h, w), those with a side under
    min_size dropped, class-agnostic greedy NMS at iou_threshold, the `count` best kept;
    fewer are padded with the whole image.  -> [count, 4]"""
    h, w = size
    order = torch.argsort(objectness, descending=True, stable=True)[:pre_nms]
    boxes = decode(deltas[order], anchors[order])
    limit = torch.tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
    boxes = torch.minimum(boxes.clamp(min=0), limit)
    big = ((boxes[:, 2] - boxes[:, 0]) >= min_size) & ((boxes[:, 3] - boxes[:, 1]) >= min_size)
    classes = torch.where(big, 0, -1)
    keep = nms_keep(boxes, objectness[order], classes, iou_threshold)
    kept = boxes[keep][:count]                      # score order: `order` is sorted
    pad = limit.new_tensor([0.0, 0.0, w, h]).expand(count - kept.shape[0], 4)
    return torch.cat([kept, pad]).to(objectness.dtype)


def match(anchors, gt, fg_iou: float, bg_iou: float, bg_low: float, low_quality: bool):
    """Labels of K anchors against one image's gt [M, 5]: (class of the best gt if IoU >= fg_iou,
    0 if bg_low <= IoU < bg_iou, -1 otherwise) and the index of the best gt.  With low_quality,
    each gt's best anchors (ties included) are positives too (Faster R-CNN's RPN rule)."""
    k = anchors.shape[0]
    real = gt[gt[:, 0] > 0]
    labels = torch.zeros(k, dtype=torch.int64, device=anchors.device)
    if real.shape[0] == 0:
        labels[:] = 0
        return labels, torch.zeros(k, dtype=torch.int64, device=anchors.device), real
    ious = iou(anchors, real[:, 1:])                                  # (K, M)
    best, which = ious.max(dim=1)
    labels = torch.full((k,), -1, dtype=torch.int64, device=anchors.device)
    labels[(best >= bg_low) & (best < bg_iou)] = 0
    fg = best >= fg_iou
    if low_quality:
        top = ious.max(dim=0).values                                  # (M,)
        fg |= ((ious == top[None, :]) & (top[None, :] > 0)).any(dim=1)
    labels[fg] = real[which[fg], 0].to(torch.int64)
    return labels, which, real


def sample(labels, batch: int, positive_fraction: float, generator):
    """Keep at most batch*positive_fraction positives and fill to `batch` with negatives, each
    drawn uniformly at random; the rest become -1."""
    pos = torch.nonzero(labels > 0).flatten()
    neg = torch.nonzero(labels == 0).flatten()
    n_pos = min(pos.numel(), int(batch * positive_fraction))
    n_neg = min(neg.numel(), batch - n_pos)
    out = torch.full_like(labels, -1)
    dev = generator.device
    pos = pos[torch.randperm(pos.numel(), generator=generator, device=dev)[:n_pos].to(pos.device)]
    neg = neg[torch.randperm(neg.numel(), generator=generator, device=dev)[:n_neg].to(neg.device)]
    out[pos] = labels[pos]
    out[neg] = 0
    return out


# -- the ops ------------------------------------------------------------------------------------

class _BoxOp(Op):
    triton = "torch"      # no kernel yet: its reference forward runs in the step
    differentiable = False


@register
class BoxIou(_BoxOp):
    name = "box_iou"
    layer = "box_iou"
    n_inputs = 2
    doc = "IoU of every box of a [.., A, 4] with every box of b [.., B, 4]: [.., A, B]."

    def infer(self, ins, attrs):
        a, b = ins
        _boxes(a, "box_iou")
        _boxes(b, "box_iou")
        if a.rank != b.rank or a.shape[:-2] != b.shape[:-2]:
            raise ShapeError(f"box_iou needs the same leading sizes, got {a} and {b}")
        return [TensorType((*a.shape[:-1], b.shape[-2]), a.dtype)]

    def flops(self, ins, outs, attrs):
        return 10 * (outs[0].per_sample() or 0)

    def forward(self, ins, attrs, ctx):
        return (iou(ins[0], ins[1]),)


class _Coding(_BoxOp):
    n_inputs = 2
    args = (Arg("weights", None, doc="(wx, wy, ww, wh) scales of the deltas; [1, 1, 1, 1]"),)

    def attrs(self, bound, in_types):
        return {**bound, "weights": _weights(bound)}

    def infer(self, ins, attrs):
        _boxes(ins[0], self.name)
        _boxes(ins[1], self.name)
        if ins[0].rank < ins[1].rank or ins[0].shape[ins[0].rank - ins[1].rank:] != ins[1].shape:
            raise ShapeError(f"{self.name}: anchors {ins[1]} do not broadcast to {ins[0]}")
        _weights(attrs)
        return [ins[0]]


@register
class BoxEncode(_Coding):
    name = layer = "box_encode"
    doc = "Regression targets of boxes relative to anchors (Faster R-CNN's dx, dy, dw, dh)."

    def forward(self, ins, attrs, ctx):
        return (encode(ins[0], ins[1], attrs["weights"]),)


@register
class BoxDecode(_Coding):
    name = layer = "box_decode"
    args = _Coding.args + (Arg("clip", None, kind="float",
                                doc="upper bound of dw, dh before exp; log(1000/16)"),)
    doc = "Boxes from deltas and anchors (the inverse of box_encode)."

    def attrs(self, bound, in_types):
        return {**super().attrs(bound, in_types), "clip": float(DEFAULT_CLIP if bound.get("clip") is None else bound["clip"])}

    def forward(self, ins, attrs, ctx):
        return (decode(ins[0], ins[1], attrs["weights"], attrs["clip"]),)


@register
class Anchors(_BoxOp):
    name = layer = "anchors"
    triton_loads = False
    args = (Arg("sizes", None, doc="anchor sides in pixels (sqrt of the area); [32]"),
            Arg("ratios", None, doc="height/width ratios; [0.5, 1, 2]"),
            Arg("stride", REQUIRED, kind="int",
                doc="pixels per feature-map cell"))
    doc = ("Anchors of a feature map [N, C, H, W]: A = len(sizes)*len(ratios) boxes per cell, "
           "[H*W*A, 4], centred on the cells.")

    def attrs(self, bound, in_types):
        def floats(v, default):
            v = default if v is None else v
            return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else (v,)))
        return {"sizes": floats(bound.get("sizes"), (32,)),
                "ratios": floats(bound.get("ratios"), (0.5, 1.0, 2.0)),
                "stride": bound.get("stride")}

    def infer(self, ins, attrs):
        t = ins[0]
        if t.rank != 4 or not all(isinstance(d, int) for d in t.shape[2:]):
            raise ShapeError(f"anchors needs a feature map [N, C, H, W] of static size, got {t}")
        stride = attrs["stride"]
        if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
            raise ShapeError(f"anchors needs stride=<pixels per cell>, a positive integer, "
                             f"got {stride}")
        if not attrs["sizes"] or not attrs["ratios"] or min(attrs["sizes"] + attrs["ratios"]) <= 0:
            raise ShapeError("anchors needs positive sizes and ratios")
        a = len(attrs["sizes"]) * len(attrs["ratios"])
        return [TensorType((t.shape[2] * t.shape[3] * a, 4), "f32")]

    def forward(self, ins, attrs, ctx):
        x = ins[0]
        out = make_anchors(x.shape[2], x.shape[3], attrs["sizes"], attrs["ratios"],
                           attrs["stride"], x.dtype)
        return (out.to(x.device),)


@register
class Nms(_BoxOp):
    name = layer = "nms"
    n_inputs = 3
    args = (Arg("iou", 0.5, kind="float", doc="suppress a box overlapping a kept one above this"),)
    doc = ("Per-class greedy non-maximum suppression (inference only): boxes [.., K, 4], scores "
           "[.., K], classes [.., K] -> a keep mask [.., K] (1.0 kept).")

    def infer(self, ins, attrs):
        boxes, scores, classes = ins
        _boxes(boxes, "nms")
        if scores.shape != boxes.shape[:-1] or classes.shape != scores.shape:
            raise ShapeError(f"nms needs scores and classes of shape {list(boxes.shape[:-1])}, "
                             f"got {scores} and {classes}")
        if not 0.0 <= attrs["iou"] <= 1.0:
            raise ShapeError(f"nms iou threshold must be in [0, 1], got {attrs['iou']}")
        return [TensorType(scores.shape, "f32")]

    def forward(self, ins, attrs, ctx):
        boxes, scores, classes = ins                  # (.., K, 4), (.., K), (.., K)
        k = scores.shape[-1]
        images = scores.numel() // k if k else 0
        flat = zip(boxes.reshape(images, k, 4), scores.reshape(images, k),
                   classes.reshape(images, k))
        keep = [nms_keep(b, s, c, attrs["iou"]) for b, s, c in flat]
        out = torch.stack(keep) if keep else torch.zeros(scores.shape, dtype=torch.bool)
        return (out.reshape(scores.shape).to(scores.dtype),)


@register
class AssignTargets(_BoxOp):
    name = layer = "assign_targets"
    n_inputs = 2
    samples = True                       # draws its sample from the run's generator
    args = (Arg("fg_iou", 0.7, kind="float", doc="IoU at or above which a box is a positive"),
            Arg("bg_iou", 0.3, kind="float", doc="IoU below which a box is a negative"),
            Arg("bg_low", 0.0, kind="float", doc="IoU below which it is ignored (Fast R-CNN: 0.1)"),
            Arg("low_quality", True, kind="bool", doc="each gt's best anchors are positives"),
            Arg("batch", 256, kind="int", doc="boxes sampled per image"),
            Arg("positive_fraction", 0.5, kind="float", doc="most of the batch that is positive"),
            Arg("weights", None, doc="box coding weights of the targets; [1, 1, 1, 1]"))
    doc = ("Match anchors or proposals to ground truth by IoU and sample a batch per image: "
           "labels [N, K] (gt class, 0 background, -1 not sampled) and deltas [N, K, 4].")

    def attrs(self, bound, in_types):
        out = {a.name: bound.get(a.name, a.default) for a in self.args}
        out["weights"] = _weights(out)
        return out

    def infer(self, ins, attrs):
        anchors, gt = ins
        _boxes(anchors, "assign_targets")
        if anchors.rank not in (2, 3):
            raise ShapeError(f"assign_targets expects anchors [K, 4] or [N, K, 4], got {anchors}")
        if gt.rank != 3 or gt.shape[-1] != 5:
            raise ShapeError(f"assign_targets expects ground truth [N, M, 5] (class, x0, y0, x1, "
                             f"y1), got {gt}")
        if not attrs["bg_low"] <= attrs["bg_iou"] <= attrs["fg_iou"] <= 1.0:
            raise ShapeError("assign_targets needs bg_low <= bg_iou <= fg_iou <= 1, got "
                             f"{attrs['bg_low']}, {attrs['bg_iou']}, {attrs['fg_iou']}")
        if attrs["batch"] < 1 or not 0.0 < attrs["positive_fraction"] <= 1.0:
            raise ShapeError("assign_targets needs batch >= 1 and positive_fraction in (0, 1]")
        n, k = gt.shape[0], anchors.shape[-2]
        return [TensorType((n, k), "i64"), TensorType((n, k, 4), anchors.dtype)]

    def forward(self, ins, attrs, ctx):
        anchors, gt = ins                                   # (K, 4) | (N, K, 4), (N, M, 5)
        gen = ctx.generator if ctx.generator is not None else torch.Generator().manual_seed(0)
        labels, deltas = [], []
        for i in range(gt.shape[0]):
            a = anchors if anchors.dim() == 2 else anchors[i]
            lab, which, real = match(a, gt[i], attrs["fg_iou"], attrs["bg_iou"],
                                     attrs["bg_low"], attrs["low_quality"])
            lab = sample(lab, attrs["batch"], attrs["positive_fraction"], gen)
            d = torch.zeros_like(a)
            pos = lab > 0
            if bool(pos.any()):
                d[pos] = encode(real[which[pos], 1:], a[pos], attrs["weights"])
            labels.append(lab)
            deltas.append(d)
        return torch.stack(labels), torch.stack(deltas)


@register
class Propose(_BoxOp):
    name = layer = "propose"
    n_inputs = 3
    args = (Arg("count", REQUIRED, kind="int", doc="proposals kept per image (P)"),
            Arg("size", REQUIRED, kind="int2", doc="image size in pixels, s or [h, w]"),
            Arg("pre_nms", 0, kind="int", doc="best anchors decoded before NMS; 0: all"),
            Arg("iou", 0.7, kind="float", doc="NMS threshold between proposals"),
            Arg("min_size", 1.0, kind="float", doc="proposals with a side under this are dropped"),
            Arg("gt", True, kind="bool", doc="in training, the true boxes join the proposals "
                                             "(the gt-proposals pass)"))
    doc = ("Faster R-CNN's proposal layer: per image the anchors of highest objectness moved by "
           "their deltas, clipped to the image, NMS'd (class-agnostic) and the best `count` "
           "kept: [N, count, 4] boxes (padded with the whole image).")

    def attrs(self, bound, in_types):
        out = {a.name: bound.get(a.name, a.default) for a in self.args}
        out["size"] = pair(out["size"], "propose size")
        return out

    def infer(self, ins, attrs):
        obj, deltas, anchors = ins
        if obj.rank != 2 or deltas.shape != (*obj.shape, 4):
            raise ShapeError(f"propose expects objectness [N, K] and deltas [N, K, 4], got {obj} "
                             f"and {deltas}")
        if anchors.rank != 2 or anchors.shape != (obj.shape[1], 4):
            raise ShapeError(f"propose needs anchors [K, 4] = [{obj.shape[1]}, 4], one per "
                             f"objectness value, got {anchors}")
        count, pre = attrs["count"], attrs["pre_nms"]
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ShapeError(f"propose needs count >= 1, got {count}")
        if pre < 0:
            raise ShapeError(f"propose needs pre_nms >= 0 (0: every anchor), got {pre}")
        if not 0.0 <= attrs["iou"] <= 1.0 or attrs["min_size"] < 0:
            raise ShapeError("propose needs iou in [0, 1] and min_size >= 0")
        if min(attrs["size"]) < 1:
            raise ShapeError(f"propose needs a positive image size, got {list(attrs['size'])}")
        return [TensorType((obj.shape[0], count, 4), deltas.dtype)]

    def forward(self, ins, attrs, ctx):
        obj, deltas, anchors = ins
        k = obj.shape[1]
        pre = attrs["pre_nms"] or k
        out = [propose_boxes(o, d, anchors, attrs["count"], min(pre, k), attrs["iou"],
                             attrs["size"], attrs["min_size"]) for o, d in zip(obj, deltas)]
        if not out:
            return (deltas.new_zeros((0, attrs["count"], 4)),)
        return (torch.stack(out),)


def with_gt_boxes(proposals, gt):
    """One image's proposals [P, 4] with its real gt boxes [M, 5] first (at most P // 2 of
    them), then the proposals in their order, P in all."""
    p = proposals.shape[0]
    real = gt[gt[:, 0] > 0][: p // 2, 1:].to(proposals.dtype)
    return torch.cat([real, proposals])[:p]


@register
class AddGtBoxes(_BoxOp):
    name = "add_gt_boxes"
    n_inputs = 2
    doc = ("Training's proposals for the RoI head: each image's real ground-truth boxes (at "
           "most P/2) first, then the RPN's proposals, P in all.")

    def infer(self, ins, attrs):
        props, gt = ins
        if props.rank != 3 or props.shape[2] != 4 or gt.rank != 3 or gt.shape[2] != 5:
            raise ShapeError(f"add_gt_boxes expects proposals [N, P, 4] and ground truth "
                             f"[N, M, 5], got {props} and {gt}")
        return [props]

    def forward(self, ins, attrs, ctx):
        props, gt = ins
        if props.shape[0] == 0:
            return (props.clone(),)
        return (torch.stack([with_gt_boxes(p, g) for p, g in zip(props, gt)]),)

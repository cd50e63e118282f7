"""Helpers of the detection-op tests: run one IR op on the reference backend, take its IR
gradients, and literal transcriptions of torchvision.ops' algorithms.

torchvision cannot be installed beside this project's torch 2.13.0 CPU build (PyPI's wheel fails
to import: "operator torchvision::nms does not exist"), so the tests compare with these
transcriptions of its C++ CPU kernels (torchvision/csrc/ops/cpu/{roi_align,roi_pool,nms}_kernel.cpp)
instead.  They are written with scalar loops, independent of the vectorised ops under test, and
work on NumPy arrays (`xp=np`) and, for gradients through torch.autograd, on torch tensors.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.runtime.reference import ReferenceProgram


def _type(v: torch.Tensor) -> TensorType:
    return TensorType(tuple(v.shape), "i64" if v.dtype == torch.int64 else "f32")


def run_op(op: str, feeds: dict, attrs: dict, seed: int = 0) -> list:
    """The op's outputs on the reference backend."""
    g = Graph("t")
    vals = [g.add_input(k, _type(v)) for k, v in feeds.items()]
    g.outputs = Builder(g).emit(op, vals, attrs)
    return ReferenceProgram(g, training=True, seed=seed).run({}, feeds)[0]


def ir_grads(op: str, feeds: dict, attrs: dict, wrt: list[str], target=None):
    """(loss, IR gradients w.r.t. `wrt`) of mse(op(...), target), or of the op's scalar output
    when no target is given."""
    g = Graph("t")
    vals = {k: g.add_input(k, _type(v)) for k, v in feeds.items()}
    b = Builder(g)
    y = b.emit(op, list(vals.values()), attrs)[0]
    loss = y
    extra = {}
    if target is not None:
        loss = b.emit1("mse", [y, g.add_input("target", y.type)])
        extra["target"] = target
    grads = backward(g, loss, [vals[k] for k in wrt])
    g.outputs = [loss, *(grads[id(vals[k])] for k in wrt)]
    outs = ReferenceProgram(g, training=True).run({}, {**feeds, **extra})[0]
    return outs[0], outs[1:]


def iou_np(a, b):
    out = np.zeros((len(a), len(b)))
    for i, (ax0, ay0, ax1, ay1) in enumerate(a):
        for j, (bx0, by0, bx1, by1) in enumerate(b):
            iw = max(0.0, min(ax1, bx1) - max(ax0, bx0))
            ih = max(0.0, min(ay1, by1) - max(ay0, by0))
            union = (ax1 - ax0) * (ay1 - ay0) + (bx1 - bx0) * (by1 - by0) - iw * ih
            out[i, j] = iw * ih / union if union > 0 else 0.0
    return out


def nms_np(boxes, scores, iou_threshold):
    """torchvision's nms_kernel: indices kept, in descending score order."""
    order = np.argsort(-scores, kind="stable")
    suppressed = np.zeros(len(scores), bool)
    keep = []
    ious = iou_np(boxes, boxes)
    for _i, i in enumerate(order):
        if suppressed[i]:
            continue
        keep.append(int(i))
        for j in order[_i + 1:]:
            if ious[i, j] > iou_threshold:
                suppressed[j] = True
    return keep


def _c_round(v):
    return math.copysign(math.floor(abs(v) + 0.5), v)


def roi_pool_loops(x, rois, oh, ow, scale, stack):
    """torchvision roi_pool_forward_kernel_impl, one RoI and bin at a time; x [N, C, H, W]."""
    _, c, h, w = x.shape
    out = []
    for roi in rois.tolist():
        b = int(roi[0])
        sw, sh, ew, eh = (int(_c_round(v * scale)) for v in roi[1:])
        rh, rw = max(eh - sh + 1, 1), max(ew - sw + 1, 1)
        bh, bw = rh / oh, rw / ow
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                hs = min(max(math.floor(ph * bh) + sh, 0), h)
                he = min(max(math.ceil((ph + 1) * bh) + sh, 0), h)
                ws = min(max(math.floor(pw * bw) + sw, 0), w)
                we = min(max(math.ceil((pw + 1) * bw) + sw, 0), w)
                if he <= hs or we <= ws:
                    bins.append(x[b, :, 0, 0] * 0)
                else:
                    bins.append(x[b, :, hs:he, ws:we].reshape(c, -1).max(-1)
                                if isinstance(x, np.ndarray) else
                                x[b, :, hs:he, ws:we].reshape(c, -1).max(-1).values)
        out.append(stack(bins).T.reshape(c, oh, ow))
    return stack(out) if out else x[:0, :, :oh, :ow] * 0


def _bilinear(x, b, y, xx, h, w):
    """torchvision's bilinear_interpolate at (y, x) of every channel of image b."""
    if y < -1.0 or y > h or xx < -1.0 or xx > w:
        return x[b, :, 0, 0] * 0
    y, xx = max(y, 0.0), max(xx, 0.0)
    yl, xl = int(y), int(xx)
    if yl >= h - 1:
        yh = yl = h - 1
        y = float(yl)
    else:
        yh = yl + 1
    if xl >= w - 1:
        xh = xl = w - 1
        xx = float(xl)
    else:
        xh = xl + 1
    ly, lx = y - yl, xx - xl
    hy, hx = 1 - ly, 1 - lx
    return (hy * hx * x[b, :, yl, xl] + hy * lx * x[b, :, yl, xh]
            + ly * hx * x[b, :, yh, xl] + ly * lx * x[b, :, yh, xh])


def roi_align_loops(x, rois, oh, ow, scale, sampling_ratio, aligned, stack):
    """torchvision roi_align_forward_kernel_impl, one RoI, bin and sample point at a time."""
    _, c, h, w = x.shape
    off = 0.5 if aligned else 0.0
    out = []
    for roi in rois.tolist():
        b = int(roi[0])
        sw, sh, ew, eh = (v * scale - off for v in roi[1:])
        rw, rh = ew - sw, eh - sh
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / oh, rw / ow
        gh = sampling_ratio if sampling_ratio > 0 else math.ceil(rh / oh)
        gw = sampling_ratio if sampling_ratio > 0 else math.ceil(rw / ow)
        count = max(gh * gw, 1)
        bins = []
        for ph in range(oh):
            for pw in range(ow):
                acc = x[b, :, 0, 0] * 0
                for iy in range(gh):
                    y = sh + ph * bh + (iy + 0.5) * bh / gh
                    for ix in range(gw):
                        xx = sw + pw * bw + (ix + 0.5) * bw / gw
                        acc = acc + _bilinear(x, b, y, xx, h, w)
                bins.append(acc / count)
        out.append(stack(bins).T.reshape(c, oh, ow))
    return stack(out) if out else x[:0, :, :oh, :ow] * 0

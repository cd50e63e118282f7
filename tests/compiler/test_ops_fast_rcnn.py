"""fast_rcnn_loss against a term-by-term NumPy transcription of Fast R-CNN's multi-task loss,
its backward against torch.autograd, and its decoding against box_decode by hand."""
from __future__ import annotations

import math

import numpy as np
import torch

from dlc.compiler.ops import get as get_op

ATTRS = {"deltas": "deltas", "rois": "proposals", "fg_iou": 0.5, "bg_low": 0.1, "box_weight": 2.0}
W = (10.0, 10.0, 5.0, 5.0)


def _case():
    g = torch.Generator().manual_seed(0)
    rois = torch.tensor([[[0., 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 40, 45, 45]],
                         [[5, 5, 15, 25], [30, 0, 40, 10], [0, 0, 64, 64], [6, 4, 16, 24]]])
    gt = torch.tensor([[[1., 0, 0, 10, 10], [3, 19, 21, 31, 29]],
                       [[2, 5, 5, 15, 25], [-1, 0, 0, 0, 0]]])
    scores = torch.randn(8, 4, generator=g, dtype=torch.float64)
    deltas = torch.randn(8, 16, generator=g, dtype=torch.float64)
    return scores, deltas, rois.double(), gt.double()


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _encode(box, roi):
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    w, h = box[2] - box[0], box[3] - box[1]
    rx, ry = (roi[0] + roi[2]) / 2, (roi[1] + roi[3]) / 2
    rw, rh = roi[2] - roi[0], roi[3] - roi[1]
    return [W[0] * (cx - rx) / rw, W[1] * (cy - ry) / rh, W[2] * math.log(w / rw),
            W[3] * math.log(h / rh)]


def _reference(scores, deltas, rois, gt, box_weight):
    """L = 1/n sum over counted RoIs [-log p_u + box_weight [u >= 1] sum smooth_l1(t^u - v)]."""
    s, d = scores.numpy(), deltas.numpy()
    total, counted, r = 0.0, 0, 0
    for img_rois, img_gt in zip(rois.numpy(), gt.numpy()):
        real = [row for row in img_gt if row[0] > 0]
        for roi in img_rois:
            overlaps = [_iou(roi, row[1:]) for row in real]
            best = max(overlaps) if overlaps else 0.0
            u = int(real[int(np.argmax(overlaps))][0]) if best >= 0.5 else 0
            if best >= 0.1 or u > 0:
                counted += 1
                p = np.exp(s[r] - s[r].max())
                total += -math.log(p[u] / p.sum())
                if u > 0:
                    t = _encode(real[int(np.argmax(overlaps))][1:], roi)
                    diff = np.abs(d[r, 4 * u:4 * u + 4] - t)
                    total += box_weight * np.where(diff < 1, 0.5 * diff ** 2, diff - 0.5).sum()
            r += 1
    return total / max(counted, 1)


def test_fast_rcnn_loss_matches_the_equation():
    scores, deltas, rois, gt = _case()
    got = get_op("fast_rcnn_loss").forward([scores, deltas, rois, gt], ATTRS, None)[0]
    assert abs(float(got) - _reference(scores, deltas, rois, gt, 2.0)) < 1e-9


def test_fast_rcnn_loss_backward_matches_autograd():
    scores, deltas, rois, gt = _case()
    s, d = scores.clone().requires_grad_(), deltas.clone().requires_grad_()
    loss = get_op("fast_rcnn_loss").forward([s, d, rois, gt], ATTRS, None)[0]
    loss.backward()
    gy = torch.tensor(1.5, dtype=torch.float64)
    gs, gd = get_op("fast_rcnn_loss_bwd").forward([gy, scores, deltas, rois, gt], ATTRS, None)
    torch.testing.assert_close(gs, 1.5 * s.grad)
    torch.testing.assert_close(gd, 1.5 * d.grad)


def test_fast_rcnn_detections_decode_each_class_box():
    scores, deltas, rois, gt = _case()
    boxes, probs, classes = get_op("fast_rcnn_loss").detect(
        scores, ATTRS, {"deltas": deltas, "proposals": rois})
    assert boxes.shape == (2, 12, 4) and probs.shape == (2, 12) and classes.shape == (2, 12)
    p = torch.softmax(scores, dim=1)
    # image 1, RoI 2, class 3: entry 2 * 3 + 2
    torch.testing.assert_close(probs[1, 8], p[6, 3])
    assert int(classes[1, 8]) == 3
    dx, dy, dw, dh = (deltas[6, 12:16] / torch.tensor(W, dtype=torch.float64)).tolist()
    x0, y0, x1, y1 = rois[1, 2].tolist()
    cx, cy = (x0 + x1) / 2 + dx * (x1 - x0), (y0 + y1) / 2 + dy * (y1 - y0)
    w, h = (x1 - x0) * math.exp(dw), (y1 - y0) * math.exp(dh)
    want = torch.tensor([max(0, cx - w / 2), max(0, cy - h / 2), cx + w / 2, cy + h / 2],
                        dtype=torch.float64)
    torch.testing.assert_close(boxes[1, 8], want)

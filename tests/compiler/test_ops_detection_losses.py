"""Smooth-L1, the RPN loss and YOLO v1's loss against straightforward transcriptions of their
equations, written with scalar loops (run on NumPy for the value, on torch leaves for the
gradient through torch.autograd); YOLO's head and decoding; shape errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from det_refs import iou_np, ir_grads, run_op
from dlc.compiler.ir import TensorType
from dlc.compiler.ops import ShapeError, get

DT = torch.float64


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


@pytest.mark.parametrize("beta", [1.0, 1.0 / 9, 0.0])
def test_smooth_l1_and_gradient_match_torch(beta):
    p, t = _rand(4, 6, seed=1), _rand(4, 6, seed=2)
    loss, (gp,) = ir_grads("smooth_l1", {"p": p, "t": t}, {"beta": beta}, ["p"])
    leaf = p.clone().requires_grad_(True)
    want = F.smooth_l1_loss(leaf, t, beta=beta)
    torch.testing.assert_close(loss, want.detach())
    torch.testing.assert_close(gp, torch.autograd.grad(want, [leaf])[0])


# -- RPN ----------------------------------------------------------------------------------------

def _val(v) -> float:
    return float(v.detach()) if isinstance(v, torch.Tensor) else float(v)


def _smooth_l1(d, beta, xp):
    return 0.5 * d * d / beta if abs(_val(d)) < beta else xp.abs(d) - 0.5 * beta


def rpn_loss_loops(obj, deltas, labels, targets, beta, box_weight, xp):
    """Faster R-CNN: L = 1/N_s sum_sampled BCE(z, p*) + lambda/N_s sum_pos smooth_l1(t - t*)."""
    cls, box, count = 0.0, 0.0, 0
    for i in range(labels.shape[0]):
        for k in range(labels.shape[1]):
            lab = int(labels[i, k])
            if lab < 0:
                continue
            count += 1
            z = obj[i, k]
            cls = cls + (xp.log1p(xp.exp(-z)) + (0.0 if lab > 0 else z))   # -log sigma / 1-sigma
            if lab > 0:
                for j in range(4):
                    box = box + _smooth_l1(deltas[i, k, j] - targets[i, k, j], beta, xp)
    count = max(count, 1)
    return cls / count + box_weight * box / count


def _rpn_case():
    labels = torch.tensor([[1, 0, -1, 2, 0, -1], [0, -1, -1, 0, 3, 0]])
    return (_rand(2, 6, seed=3), _rand(2, 6, 4, seed=4), labels, _rand(2, 6, 4, seed=5) * 0.2)


@pytest.mark.parametrize("beta,box_weight", [(1.0 / 9, 1.0), (1.0, 2.5)])
def test_rpn_loss_and_gradients_match_transcription(beta, box_weight):
    obj, deltas, labels, targets = _rpn_case()
    feeds = {"o": obj, "d": deltas, "l": labels, "t": targets}
    a = {"beta": beta, "box_weight": box_weight}
    loss, (go, gd) = ir_grads("rpn_loss", feeds, a, ["o", "d"])
    want = rpn_loss_loops(obj.numpy(), deltas.numpy(), labels.numpy(), targets.numpy(),
                          beta, box_weight, np)
    assert math.isclose(float(loss), float(want), rel_tol=1e-10)
    lo, ld = obj.clone().requires_grad_(True), deltas.clone().requires_grad_(True)
    ref = rpn_loss_loops(lo, ld, labels, targets, beta, box_weight, torch)
    wo, wd = torch.autograd.grad(ref, [lo, ld])
    torch.testing.assert_close(go, wo)
    torch.testing.assert_close(gd, wd)
    assert not go[labels < 0].any() and not gd[labels <= 0].any()


def test_rpn_loss_shape_errors():
    op = get("rpn_loss")
    o, d = TensorType(("N", 6)), TensorType(("N", 6, 4))
    with pytest.raises(ShapeError, match="integer labels"):
        op.infer([o, d, TensorType(("N", 6)), d], {})
    with pytest.raises(ShapeError, match=r"deltas and targets \[N, K, 4\]"):
        op.infer([o, TensorType(("N", 5, 4)), TensorType(("N", 6), "i64"), d], {})


# -- YOLO v1 ------------------------------------------------------------------------------------

S, B, C, SIZE = 3, 2, 3, 48.0


def yolo_loss_loops(pred, gt, coord, noobj, xp):
    """The paper's sum-squared loss, term by term, / N.  A gt's cell holds its centre (the last
    gt wins a shared cell); its responsible box has the highest IoU; its confidence target is
    that IoU; every other box's confidence is pushed to 0 with weight noobj."""
    n = pred.shape[0]
    owner = {}
    for i in range(n):
        for cls, x0, y0, x1, y1 in np.asarray(gt[i]).tolist():
            if cls > 0:
                cx, cy = (x0 + x1) / 2 / SIZE, (y0 + y1) / 2 / SIZE
                owner[(i, min(int(cy * S), S - 1), min(int(cx * S), S - 1))] = (
                    int(cls), cx, cy, (x1 - x0) / SIZE, (y1 - y0) / SIZE, x0, y0, x1, y1)
    total = 0.0
    for i in range(n):
        for r in range(S):
            for c in range(S):
                cell = pred[i, r, c]
                hit = owner.get((i, r, c))
                best = -1
                if hit is not None:
                    cls, cx, cy, w, h, x0, y0, x1, y1 = hit
                    ious = []
                    for j in range(B):
                        px, py = (c + _val(cell[5 * j])) / S, (r + _val(cell[5 * j + 1])) / S
                        pw, ph = _val(cell[5 * j + 2]) ** 2, _val(cell[5 * j + 3]) ** 2
                        box = [[px - pw / 2, py - ph / 2, px + pw / 2, py + ph / 2]]
                        ious.append(iou_np(box, [[x0 / SIZE, y0 / SIZE, x1 / SIZE,
                                                  y1 / SIZE]])[0, 0])
                    best = int(np.argmax(ious))
                    p = cell[5 * best: 5 * best + 5]
                    total = total + coord * ((p[0] - (cx * S - c)) ** 2 + (p[1] - (cy * S - r)) ** 2)
                    total = total + coord * ((p[2] - math.sqrt(w)) ** 2 + (p[3] - math.sqrt(h)) ** 2)
                    total = total + (p[4] - ious[best]) ** 2
                    for k in range(C):
                        total = total + (cell[5 * B + k] - (1.0 if k == cls - 1 else 0.0)) ** 2
                for j in range(B):
                    if j != best:
                        total = total + noobj * cell[5 * j + 4] ** 2
    return total / n


def _yolo_case():
    pred = torch.rand(2, S, S, 5 * B + C, generator=torch.Generator().manual_seed(8), dtype=DT)
    gt = torch.tensor([[[1, 2, 3, 14, 12], [3, 20, 18, 44, 40], [-1, 0, 0, 0, 0]],
                       [[2, 30, 1, 47, 15], [1, 0, 30, 10, 47], [2, 3, 33, 9, 45]]], dtype=DT)
    return pred, gt                               # image 2's last two share a cell


@pytest.mark.parametrize("coord,noobj", [(5.0, 0.5), (1.0, 1.0)])
def test_yolo_loss_and_gradient_match_transcription(coord, noobj):
    pred, gt = _yolo_case()
    a = get("yolo_loss").attrs({"boxes": B, "size": 48, "coord": coord,
                                "noobj": noobj}, [])
    loss, (gp,) = ir_grads("yolo_loss", {"p": pred, "g": gt}, a, ["p"])
    want = yolo_loss_loops(pred.numpy(), gt.numpy(), coord, noobj, np)
    assert math.isclose(float(loss), float(want), rel_tol=1e-10)
    leaf = pred.clone().requires_grad_(True)
    ref = yolo_loss_loops(leaf, gt, coord, noobj, torch)
    torch.testing.assert_close(gp, torch.autograd.grad(ref, [leaf])[0])


def test_yolo_head_decode_and_errors():
    x = _rand(2, S * S * (5 * B + C), seed=9)
    head = {"grid": S, "boxes": B, "classes": C}
    grid = run_op("yolo_head", {"x": x}, head)[0]
    assert grid.shape == (2, S, S, 5 * B + C) and torch.equal(grid.flatten(1), x)
    pred = torch.rand(2, S, S, 5 * B + C, generator=torch.Generator().manual_seed(10), dtype=DT)
    a = get("yolo_decode").attrs({"boxes": B, "size": 48}, [])
    boxes, scores, classes = run_op("yolo_decode", {"p": pred}, a)
    p = pred.numpy()
    i, r, c, j = 1, 2, 0, 1                      # one box, written out
    cell = p[i, r, c]
    cx, cy = (c + cell[5 * j]) / S * SIZE, (r + cell[5 * j + 1]) / S * SIZE
    w, h = cell[5 * j + 2] ** 2 * SIZE, cell[5 * j + 3] ** 2 * SIZE
    k = (r * S + c) * B + j
    np.testing.assert_allclose(boxes[i, k].numpy(), [cx - w / 2, cy - h / 2, cx + w / 2,
                                                     cy + h / 2], rtol=1e-12)
    assert math.isclose(float(scores[i, k]), cell[5 * j + 4] * cell[5 * B:].max())
    assert int(classes[i, k]) == int(np.argmax(cell[5 * B:])) + 1
    with pytest.raises(ShapeError, match=r"needs \[N, 117\] features"):
        get("yolo_head").infer([TensorType(("N", 98))], head)
    with pytest.raises(ShapeError, match="needs size="):
        get("yolo_loss").infer([TensorType(("N", S, S, 13)), TensorType(("N", 3, 5))],
                               get("yolo_loss").attrs({"boxes": 2}, []))
    with pytest.raises(ShapeError, match="cannot hold 3 boxes"):
        get("yolo_decode").infer([TensorType(("N", S, S, 13))],
                                 get("yolo_decode").attrs({"boxes": 3, "size": 48}, []))

"""The detection loss kernels (templates/detection.py): YOLO v1's loss and the RPN's loss and
their gradients against the reference backend's ops and against torch.autograd through the
reference forwards (themselves checked against NumPy transcriptions in tests/compiler)."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.ops import get as get_op
from dlc.compiler.plan import format_plan

from .kernel_check import op_graph, run_both

# Image 0 (48 x 60 pixels, S = 3: cells of 16 x 20): two boxes in the cell (0, 0) (the later
# one owns it), a padding row between them, a box over the whole image (centre cell (1, 1)),
# one whose centre lies exactly on a grid line (x0 + x1 = 40: cx * S = 1, the cell to its
# right), one at the bottom right border; image 1: no box at all (padding only).
YOLO_GT = torch.tensor([[[1, 2, 3, 15, 12], [-1, 0, 0, 0, 0], [3, 4, 1, 18, 14],
                         [2, 0, 0, 60, 48], [4, 10, 20, 30, 40], [1, 40, 33, 60, 48]],
                        [[-1, 0, 0, 0, 0]] * 6], dtype=torch.float32)
YOLO_SIZE = (48, 60)


def _yolo_attrs(b: int) -> dict:
    return {"boxes": b, "size": YOLO_SIZE, "coord": 5.0, "noobj": 0.5}


@pytest.mark.parametrize("n", [1, 2])
@pytest.mark.parametrize("b", [1, 2])
def test_yolo_loss_and_gradient_kernels(n, b):
    """No torch step; the loss and d/d pred against the reference backend, and d/d pred
    against torch.autograd of the reference forward (the IoU target a constant)."""
    c = 4
    shape = (n, 3, 3, 5 * b + c)
    attrs = _yolo_attrs(b)
    gt = YOLO_GT[:n]
    g = op_graph("yolo_loss", [shape, tuple(gt.shape)], attrs, grad_wrt=(0,))
    gen = torch.Generator().manual_seed(10 * n + b)
    pred, r = torch.rand(*shape, generator=gen), torch.tensor(0.7)
    out = []
    plan = run_both(g, {"x0": pred, "x1": gt, "r": r}, rtol=1e-5, atol=1e-6, outputs=out)
    assert plan.torch_steps == 0
    assert [k.anchor.op for k in plan.kernels if k.family == "detection"] == [
        "yolo_loss", "yolo_loss_bwd"]
    p = pred.clone().requires_grad_()
    loss = get_op("yolo_loss").forward([p, gt], attrs, None)[0]
    (loss * r).backward()
    torch.testing.assert_close(out[0], loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], p.grad, rtol=1e-5, atol=1e-7)
    assert out[1][0].abs().sum() > 0


def test_yolo_responsible_box_is_the_first_of_equal_ious():
    """Both boxes of a cell predicted alike (equal IoU): the first is responsible, as
    torch.argmax picks; a cell with an object whose boxes miss it (IoU 0 for both) too."""
    shape = (1, 3, 3, 5 * 2 + 4)
    pred = torch.rand(*shape, generator=torch.Generator().manual_seed(4))
    pred[..., 5:10] = pred[..., 0:5]
    pred[0, 1, 1, 0:4] = torch.tensor([0.0, 0.0, 0.01, 0.01])      # far from the whole-image box
    pred[0, 1, 1, 5:9] = torch.tensor([0.0, 0.0, 0.01, 0.01])
    attrs = _yolo_attrs(2)
    g = op_graph("yolo_loss", [shape, (1, 6, 5)], attrs, grad_wrt=(0,))
    out = []
    run_both(g, {"x0": pred, "x1": YOLO_GT[:1], "r": torch.tensor(1.0)}, outputs=out)
    p = pred.clone().requires_grad_()
    get_op("yolo_loss").forward([p, YOLO_GT[:1]], attrs, None)[0].backward()
    torch.testing.assert_close(out[1], p.grad, rtol=1e-5, atol=1e-7)


def _rpn_inputs(labels: torch.Tensor, seed: int):
    gen = torch.Generator().manual_seed(seed)
    n, k = labels.shape
    return {"x0": torch.randn(n, k, generator=gen) * 3, "x1": torch.randn(n, k, 4, generator=gen),
            "x2": labels, "x3": torch.randn(n, k, 4, generator=gen) * 0.5,
            "r": torch.tensor(1.3)}


RPN_LABELS = {
    "mixed": torch.tensor([[1, 0, -1, 0, 1, -1, 0], [-1, 0, 1, 1, -1, 0, 0]]),
    "no_positive": torch.tensor([[0, -1, 0, -1, 0, 0, -1]]),
    "nothing_sampled": torch.tensor([[-1] * 5, [-1] * 5]),
}


@pytest.mark.parametrize("case", sorted(RPN_LABELS))
@pytest.mark.parametrize("beta,box_weight", [(1.0 / 9, 1.0), (0.0, 2.5)])
def test_rpn_loss_and_gradient_kernels(case, beta, box_weight):
    labels = RPN_LABELS[case]
    n, k = labels.shape
    attrs = {"beta": beta, "box_weight": box_weight}
    g = op_graph("rpn_loss", [(n, k), (n, k, 4), (n, k), (n, k, 4)], attrs, grad_wrt=(0, 1),
                 dtypes=("f32", "f32", "i64", "f32"))
    inputs = _rpn_inputs(labels, len(case))
    out = []
    plan = run_both(g, inputs, rtol=1e-5, atol=1e-6, outputs=out)
    assert plan.torch_steps == 0
    assert "torch steps" not in format_plan(plan) or "torch steps: 0" in format_plan(plan)
    obj = inputs["x0"].clone().requires_grad_()
    deltas = inputs["x1"].clone().requires_grad_()
    loss = get_op("rpn_loss").forward([obj, deltas, labels, inputs["x3"]], attrs, None)[0]
    (loss * inputs["r"]).backward()
    torch.testing.assert_close(out[0], loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], obj.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[2], deltas.grad, rtol=1e-5, atol=1e-7)
    assert (out[1] != 0).any() == (labels >= 0).any()
    assert (out[2] != 0).any() == (labels > 0).any()


# Image 0: a RoI on a gt (positive), one half over it (IoU between bg_low and fg_iou), one far
# away (below bg_low: left out), one across the image border, one overlapping two gt boxes
# equally (the first wins); a padding row among the gt. Image 1: no gt at all (every RoI
# background).
FR_ROIS = torch.tensor([[[2, 2, 14, 12], [8, 2, 20, 12], [40, 40, 44, 44], [30, 28, 52, 50],
                         [14, 0, 26, 12]],
                        [[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4], [10, 10, 30, 30],
                         [0, 0, 48, 48]]], dtype=torch.float32)
FR_GT = torch.tensor([[[2, 2, 2, 14, 12], [-1, 0, 0, 0, 0], [1, 26, 0, 38, 12],
                       [3, 28, 30, 48, 48]],
                      [[-1, 0, 0, 0, 0]] * 4], dtype=torch.float32)


@pytest.mark.parametrize("n", [1, 2])
def test_fast_rcnn_loss_and_gradient_kernels(n):
    c = 3
    rois, gt = FR_ROIS[:n], FR_GT[:n]
    r = n * rois.shape[1]
    attrs = get_op("fast_rcnn_loss").attrs({}, [])
    g = op_graph("fast_rcnn_loss", [(r, c + 1), (r, 4 * (c + 1)), tuple(rois.shape),
                                    tuple(gt.shape)], attrs, grad_wrt=(0, 1))
    gen = torch.Generator().manual_seed(n)
    scores, deltas = torch.randn(r, c + 1, generator=gen), torch.randn(r, 4 * (c + 1),
                                                                        generator=gen)
    inputs = {"x0": scores, "x1": deltas, "x2": rois, "x3": gt, "r": torch.tensor(0.9)}
    out = []
    plan = run_both(g, inputs, rtol=1e-5, atol=1e-6, outputs=out)
    assert plan.torch_steps == 0
    s, d = scores.clone().requires_grad_(), deltas.clone().requires_grad_()
    loss = get_op("fast_rcnn_loss").forward([s, d, rois, gt], attrs, None)[0]
    (loss * inputs["r"]).backward()
    torch.testing.assert_close(out[0], loss.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[1], s.grad, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(out[2], d.grad, rtol=1e-5, atol=1e-7)
    assert (out[2] != 0).any()

"""The region pooling kernels (templates/roi.py): SPP-Net's spatial pyramid against the
reference backend and torch's adaptive max pooling and its autograd; the RoI forwards and
their gradients against the reference backend and torch.autograd through the reference ops
(themselves checked against torchvision's loops in tests/compiler/test_ops_roi.py)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlc.compiler.ops import get as get_op
from dlc.runtime.triton_backend import TritonProgram

from .kernel_check import DEVICE, op_graph, run_both


def _torch_spp(x, levels):
    return torch.cat([F.adaptive_max_pool2d(x, lv).flatten(1) for lv in levels], dim=1)


@pytest.mark.parametrize("shape,levels", [((2, 3, 8, 8), (1, 2, 4)),
                                          ((1, 2, 7, 5), (1, 3)),       # uneven windows
                                          ((2, 1, 3, 2), (4,)),         # more bins than rows
                                          ((1, 2, 5, 3), (2, 3, 5, 7)),
                                          ((1, 1, 1, 1), (1, 2))])
def test_spp_and_its_gradient(shape, levels):
    g = op_graph("spp", [shape], {"levels": levels}, grad_wrt=(0,))
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen)
    width = shape[1] * sum(lv * lv for lv in levels)
    r = torch.randn(shape[0], width, generator=gen)
    plan = run_both(g, {"x0": x, "r": r}, rtol=1e-6, atol=1e-6)   # gradient: sum order
    assert {k.anchor.op for k in plan.kernels if k.family == "roi"} == {"spp", "spp_bwd"}
    assert plan.torch_steps == 0
    if DEVICE != "cpu":
        return
    (y, gx), _, _ = TritonProgram(g, training=False).run({}, {"x0": x, "r": r})
    xx = x.clone().requires_grad_()
    want = _torch_spp(xx, levels)
    (want * r).sum().backward()
    torch.testing.assert_close(y, want.detach(), rtol=0, atol=0)
    torch.testing.assert_close(gx, xx.grad, rtol=1e-6, atol=1e-7)


def test_spp_ties_and_nan_follow_torch():
    """Equal values: the gradient goes to the first in row-major order; a NaN wins its bin."""
    x = torch.zeros(1, 1, 4, 4)
    x[0, 0, 3, 3] = float("nan")
    g = op_graph("spp", [(1, 1, 4, 4)], {"levels": (1, 2)}, grad_wrt=(0,))
    r = torch.arange(1.0, 6.0)[None]
    (y, gx), _, _ = TritonProgram(g, training=False).run({}, {"x0": x, "r": r})
    xx = x.clone().requires_grad_()
    want = _torch_spp(xx, (1, 2))
    (want * r).sum().backward()
    torch.testing.assert_close(y, want.detach(), equal_nan=True)
    torch.testing.assert_close(gx, xx.grad)


@pytest.mark.parametrize("op,attrs", [("roi_pool", {"output": (3, 2), "spatial_scale": 0.5}),
                                      ("roi_spp", {"levels": (1, 2, 3), "spatial_scale": 0.5}),
                                      ("roi_align", {"output": (3, 2), "spatial_scale": 0.5,
                                                     "sampling_ratio": -1, "aligned": False}),
                                      ("roi_align", {"output": (2, 4), "spatial_scale": 0.5,
                                                     "sampling_ratio": 2, "aligned": True})])
@pytest.mark.parametrize("layout", ["rois", "boxes"])
def test_roi_forward_kernels(layout, op, attrs):
    """Fast R-CNN's RoI pooling, SPP-Net's pyramid over RoIs and RoI align: RoIs partly off the map,
    smaller than a bin, and half-pixel corners that round away from zero; [R, 5] RoIs and
    [N, P, 4] boxes per image."""
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 10, 12, generator=gen)
    boxes = torch.tensor([[[0.0, 0.0, 23.0, 19.0], [5.0, 3.0, 9.0, 7.0], [-8.0, -4.0, 6.0, 5.0]],
                          [[14.0, 12.0, 30.0, 40.0], [1.0, 1.0, 2.0, 2.0], [4.5, 2.5, 17.0, 9.5]]])
    if layout == "rois":
        index = torch.arange(2.0).repeat_interleave(3)[:, None]
        rois = torch.cat([index, boxes.reshape(6, 4)], 1)
    else:
        rois = boxes
    g = op_graph(op, [tuple(x.shape), tuple(rois.shape)], attrs)
    exact = op != "roi_align"               # align: the reference sums separable weights
    plan = run_both(g, {"x0": x, "x1": rois}, rtol=0 if exact else 1e-5, atol=0 if exact else 1e-6)
    assert [k.family for k in plan.kernels] == ["roi"]


# -- the RoI gradients ---------------------------------------------------------------------------
# Image 0: a RoI over the whole map and past it, a small one, one partly off the map (negative
# corners), one on half pixels; image 1: one past the bottom right, one smaller than a bin, one
# wholly off the map, one overlapping the others (a pixel in several RoIs and several bins).
GRAD_BOXES = torch.tensor([[[0.0, 0.0, 23.0, 19.0], [5.0, 3.0, 9.0, 7.0],
                            [-8.0, -4.0, 6.0, 5.0], [4.5, 2.5, 17.0, 9.5]],
                           [[14.0, 12.0, 30.0, 40.0], [1.0, 1.0, 2.0, 2.0],
                            [40.0, 30.0, 52.0, 44.0], [3.0, 1.0, 21.0, 17.0]]])
GRAD_CASES = [("roi_pool", {"output": (3, 2), "spatial_scale": 0.5}),
              ("roi_spp", {"levels": (1, 2, 3), "spatial_scale": 0.5}),
              ("roi_align", {"output": (3, 2), "spatial_scale": 0.5, "sampling_ratio": -1,
                             "aligned": False}),
              ("roi_align", {"output": (2, 4), "spatial_scale": 0.5, "sampling_ratio": 2,
                             "aligned": True})]


def _grad_rois(layout: str) -> torch.Tensor:
    """GRAD_BOXES as [N, P, 4] boxes, or as [R, 5] RoIs in a mixed image order."""
    if layout == "boxes":
        return GRAD_BOXES
    index = torch.arange(2.0).repeat_interleave(4)[:, None]
    rois = torch.cat([index, GRAD_BOXES.reshape(8, 4)], 1)
    return rois[[4, 0, 1, 5, 2, 6, 7, 3]]


def _autograd_of_reference(op, attrs, x, rois, r):
    """dL/dx of sum(op(x) * r) by torch.autograd through the op's reference forward."""
    xx = x.clone().requires_grad_()
    (get_op(op).forward([xx, rois], attrs, None)[0] * r).sum().backward()
    return xx.grad


@pytest.mark.parametrize("op,attrs", GRAD_CASES)
@pytest.mark.parametrize("layout", ["rois", "boxes"])
def test_roi_gradient_kernels(layout, op, attrs):
    """Every RoI gradient is a kernel (no torch step); against the reference backend's
    backward op, and against torch.autograd of the reference forward."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 3, 10, 12, generator=gen)
    rois = _grad_rois(layout)
    g = op_graph(op, [tuple(x.shape), tuple(rois.shape)], attrs, grad_wrt=(0,))
    r = torch.randn(g.inputs[2].type.shape, generator=gen)
    # max pooling: the same sums in the same order as the reference's index_add_ on the CPU
    exact = op != "roi_align" and DEVICE == "cpu"
    out = []
    plan = run_both(g, {"x0": x, "x1": rois, "r": r}, rtol=0 if exact else 1e-5,
                    atol=0 if exact else 1e-6, outputs=out)
    assert [k.family for k in plan.kernels] == ["roi", "roi"] and plan.torch_steps == 0
    assert plan.kernels[1].anchor.op == op + "_bwd"
    gx, want = out[1], _autograd_of_reference(op, attrs, x, rois, r)
    torch.testing.assert_close(gx, want, rtol=1e-5, atol=1e-6)
    assert gx.abs().sum() > 0


@pytest.mark.parametrize("op,attrs", GRAD_CASES[:2])
def test_roi_max_gradient_follows_the_reference_argmax_on_ties(op, attrs):
    """A map of few distinct values (ties in most bins) and a constant plane (every bin a
    tie): each bin's gradient goes to its first maximum in row-major order, as autograd
    through the reference routes it; integer gy, so sums in any order are exact and the
    comparison is exact."""
    gen = torch.Generator().manual_seed(11)
    x = torch.randint(0, 3, (2, 3, 10, 12), generator=gen).float()
    x[1, 2] = 1.0
    rois = _grad_rois("rois")
    g = op_graph(op, [tuple(x.shape), tuple(rois.shape)], attrs, grad_wrt=(0,))
    r = torch.randint(-4, 5, g.inputs[2].type.shape, generator=gen).float()
    out = []
    plan = run_both(g, {"x0": x, "x1": rois, "r": r}, rtol=0, atol=0, outputs=out)
    assert plan.torch_steps == 0
    torch.testing.assert_close(out[1], _autograd_of_reference(op, attrs, x, rois, r),
                               rtol=0, atol=0)
    assert (out[1][1, 2] != 0).sum() < out[1][1, 2].numel() / 2    # first of each tie only


@pytest.mark.parametrize("op,attrs", [GRAD_CASES[0], GRAD_CASES[2]])
def test_roi_gradient_of_no_rois_is_zero(op, attrs):
    x = torch.randn(1, 2, 5, 6, generator=torch.Generator().manual_seed(3))
    g = op_graph(op, [tuple(x.shape), (0, 5)], attrs, grad_wrt=(0,))
    out = []
    plan = run_both(g, {"x0": x, "x1": torch.zeros(0, 5), "r": torch.zeros(0, 2, 3, 2)},
                    rtol=0, atol=0, outputs=out)
    assert plan.torch_steps == 0 and out[1].shape == x.shape and not out[1].any()

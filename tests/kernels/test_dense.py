"""Dense-prediction kernels against the reference backend: conv_transpose (the conv
template's input-gradient GEMM plus a bias; its gradients are conv2d kernels), bilinear
resizing (factor and to another tensor's size, align_corners both ways, up and down),
crop, adaptive average pooling and per-pixel cross-entropy, each with its gradient."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.kernels import eval_dim
from dlc.compiler.ops import get

from .kernel_check import op_graph, run_both

TOL = {"rtol": 1e-4, "atol": 1e-5}


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def anchors(plan) -> set[str]:
    return {k.anchor.op for k in plan.kernels if k.anchor is not None}


def run_op(op, shapes, attrs, grad_wrt=(0,), batch=2, dtypes=(), extra=None):
    """op on random inputs (N = batch) with the gradients `grad_wrt`, on both backends."""
    types = None
    full = get(op).attrs(attrs, types)
    g = op_graph(op, shapes, full, grad_wrt=grad_wrt, dtypes=dtypes)
    ins = {f"x{i}": rnd(*[eval_dim(d, {"N": batch}) for d in s], seed=i)
           for i, s in enumerate(shapes)}
    ins.update(extra or {})
    if grad_wrt:
        ins["r"] = rnd(*[eval_dim(d, {"N": batch}) for d in g.outputs[0].type.shape], seed=9)
    return run_both(g, ins, **TOL)


@pytest.mark.parametrize("c, out, kernel, stride, padding, out_pad, groups, bias", [
    (3, 5, 4, 2, 1, 0, 1, True),          # FCN's 2x upsampling
    (4, 6, 3, 2, 1, 1, 2, True),          # output_padding, groups
    (3, 4, [3, 2], [1, 2], 0, 0, 1, False),
])
def test_conv_transpose(c, out, kernel, stride, padding, out_pad, groups, bias):
    k = (kernel, kernel) if isinstance(kernel, int) else tuple(kernel)
    shapes = [("N", c, 5, 6), (c, out // groups, *k)] + ([(out,)] if bias else [])
    attrs = {"out": out, "kernel": kernel, "stride": stride, "padding": padding,
             "output_padding": out_pad, "groups": groups, "bias": bias}
    plan = run_op("conv_transpose2d", shapes, attrs, grad_wrt=tuple(range(len(shapes))))
    assert "conv_transpose2d" in anchors(plan)


@pytest.mark.parametrize("offset", [0, [2, 1]])
def test_crop(offset):
    plan = run_op("crop", [("N", 3, 7, 8), ("N", 1, 4, 5)], {"offset": offset})
    assert {"crop", "crop_bwd"} <= anchors(plan)


@pytest.mark.parametrize("scale, align", [(2, False), (8, True)])
def test_resize_by_factor(scale, align):
    plan = run_op("resize_bilinear", [("N", 2, 3, 4)], {"scale": scale, "align_corners": align})
    assert {"resize_bilinear", "resize_bilinear_bwd"} <= anchors(plan)


@pytest.mark.parametrize("size, align", [((11, 7), False), ((3, 2), True), ((1, 1), False)])
def test_resize_to(size, align):
    run_op("resize_bilinear_to", [("N", 2, 5, 6), ("N", 1, *size)], {"align_corners": align})


@pytest.mark.parametrize("size", [[2, 3], [9, 7]])
def test_adaptive_avg_pool(size):
    plan = run_op("adaptive_avg_pool", [("N", 3, 5, 6)], {"size": size})
    assert {"adaptive_avg_pool", "adaptive_avg_pool_bwd"} <= anchors(plan)


def test_pixel_cross_entropy():
    gen = torch.Generator().manual_seed(5)
    masks = torch.randint(0, 5, (3, 7, 9), generator=gen)
    masks[0, :2] = 255
    g = op_graph("pixel_cross_entropy", [("N", 5, 7, 9), ("N", 7, 9)], {"ignore": 255},
                 grad_wrt=(0,), dtypes=("f32", "i64"))
    plan = run_both(g, {"x0": rnd(3, 5, 7, 9), "x1": masks, "r": torch.tensor(1.5)}, **TOL)
    assert {"pixel_cross_entropy", "pixel_cross_entropy_bwd"} <= anchors(plan)

"""SPP-Net's spatial pyramid pooling kernels (templates/roi.py) against the reference backend
and against torch's adaptive max pooling and its autograd directly."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

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

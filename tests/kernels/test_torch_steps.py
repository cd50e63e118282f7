"""Ops without Triton kernels run as `torch` steps of a Triton plan (compiler/torch_call.py):
their reference forward on the plan's buffers. These tests check the plumbing against the
reference backend — views, several outputs, integer outputs, gradients, a value the plan
recomputes instead of storing — and that the plan shows the steps."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder, get
from dlc.compiler.plan import format_plan
from dlc.runtime.triton_backend import TritonProgram

from .kernel_check import op_graph, run_both


def _rois(n_images: int, r: int, size: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(r, 2, generator=g) * size * 0.6
    wh = torch.rand(r, 2, generator=g) * size * 0.4 + 1
    index = torch.randint(0, n_images, (r, 1), generator=g).float()
    return torch.cat([index, xy, xy + wh], 1)                        # (R, 5)


def test_a_gradient_without_a_kernel_runs_as_a_torch_step_between_kernels(monkeypatch):
    """roi_pool_bwd has a kernel (templates/roi.py); taken away here, it is the torch step
    between the forward's kernel (with its fused epilogue) and the graph's end."""
    monkeypatch.setattr(get("roi_pool_bwd"), "triton", "torch")
    g = op_graph("roi_pool", [(2, 3, 12, 12), (5, 5)],
                 {"output": (3, 3), "spatial_scale": 0.5}, grad_wrt=(0,))
    gen = torch.Generator().manual_seed(1)
    inputs = {"x0": torch.randn(2, 3, 12, 12, generator=gen), "x1": _rois(2, 5, 24),
              "r": torch.randn(5, 3, 3, 3, generator=gen)}
    plan = run_both(g, inputs)
    assert [k.anchor.op for k in plan.kernels if k.family == "torch"] == ["roi_pool_bwd"]
    assert plan.torch_steps == 1 and [k.family for k in plan.kernels] == ["roi", "torch"]
    assert [n.op for n in plan.kernels[0].nodes()][:2] == ["roi_pool", "mul"]   # an epilogue
    text = format_plan(plan)
    assert "torch (the op's reference forward, no Triton kernel)" in text
    assert "torch steps: 1 (roi_pool_bwd)" in text


def test_decode_then_nms_keep_their_several_and_integer_outputs():
    """yolo_decode gives boxes, scores and i64 classes; nms reads all three."""
    g = Graph("t")
    pred = g.add_input("pred", TensorType((2, 3, 3, 5 * 2 + 4), "f32"))
    b = Builder(g)
    boxes, scores, classes = b.emit("yolo_decode", [pred], {"boxes": 2, "size": (48, 48)})
    keep = b.emit1("nms", [boxes, scores, classes], {"iou": 0.3})
    g.outputs = [boxes, scores, classes, keep]
    x = torch.rand(2, 3, 3, 14, generator=torch.Generator().manual_seed(2))
    plan = run_both(g, {"pred": x}, rtol=0, atol=0)
    assert plan.torch_steps == 2
    assert plan.buffers[id(classes)].dtype == "i64"


@pytest.mark.parametrize("kernels", [True, False])
def test_a_loss_gradient_reads_the_recomputed_seed_of_autodiff(kernels, monkeypatch):
    """d yolo_loss / d pred: the backward reads autodiff's seed `ones_like(loss)`, a value the
    plan never stores (remat): its kernel (templates/detection.py) or, with the kernels taken
    away, its torch step recomputes it."""
    if not kernels:
        for op in ("yolo_loss", "yolo_loss_bwd"):
            monkeypatch.setattr(get(op), "triton", "torch")
    g = Graph("t")
    pred = g.add_input("pred", TensorType((2, 3, 3, 5 * 2 + 4), "f32"))
    gt = g.add_input("gt", TensorType((2, 2, 5), "f32"))
    b = Builder(g)
    loss = b.emit1("yolo_loss", [pred, gt], {"boxes": 2, "size": (48, 48), "coord": 5.0,
                                             "noobj": 0.5})
    grads = backward(g, loss, [pred])
    g.outputs = [loss, grads[id(pred)]]
    gen = torch.Generator().manual_seed(3)
    boxes = torch.tensor([[[1, 4, 4, 20, 30], [3, 25, 10, 44, 40]],
                          [[2, 0, 0, 47, 47], [-1, 0, 0, 0, 0]]], dtype=torch.float32)
    inputs = {"pred": torch.rand(2, 3, 3, 14, generator=gen), "gt": boxes}
    tol = 1e-6 if kernels else 0                # the kernel sums the loss in its own order
    plan = run_both(g, inputs, rtol=tol, atol=tol)
    bwd = next(n for n in plan.nodes if n.op == "yolo_loss_bwd")
    assert id(plan.producer[id(bwd.inputs[0])]) in plan.remat      # the seed is recomputed
    assert plan.torch_steps == (0 if kernels else 2)
    p = inputs["pred"].clone().requires_grad_()
    get("yolo_loss").forward([p, boxes], bwd.attrs, None)[0].backward()
    (_, got), _, _ = TritonProgram(g, training=False).run({}, inputs)
    torch.testing.assert_close(got, p.grad)               # torch.autograd of the forward

"""Loss kernels: label-smoothed cross-entropy (one and several row blocks, a class count
that is not a power of two, rows longer than a tile), cross-entropy with its gradient in
one kernel as the planner fuses it in a training graph, the standalone gradient, and mean
squared error with its gradient, against the reference ops (and F.cross_entropy)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.compiler.templates import loss as loss_t
from dlc.runtime.triton_backend import TritonProgram

from .kernel_check import DEVICE, op_graph, run_both, cpu_only

gen = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


def labels(n, v):
    return torch.randint(0, v, (n,), generator=gen)


def _train_graph(eps: float, v: int, chain: str = "") -> Graph:
    """logits (N, V) [-> * t] -> cross_entropy -> the gradient w.r.t. the logits."""
    g = Graph("t")
    z = g.add_input("z", TensorType(("N", v)))
    y = g.add_input("y", TensorType(("N",), "i64"))
    b = Builder(g)
    if chain == "mul":
        t = g.add_input("t", TensorType(("N", v)))
    logits = b.emit1("mul", [z, t]) if chain == "mul" else z
    loss = b.emit1("cross_entropy", [logits, y], {"label_smoothing": eps})
    grads = backward(g, loss, [z])
    g.outputs = [loss, grads[id(z)]]
    return g


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,v", [(5, 10), (5, 37), (70, 10), (70, 37)])
@cpu_only
def test_cross_entropy(eps, n, v):
    """The loss alone (its own kernel, one program), against the reference and torch."""
    g = op_graph("cross_entropy", [("N", v), ("N",)], {"label_smoothing": eps},
                 dtypes=("f32", "i64"))
    z, y = 3 * rnd(n, v), labels(n, v)
    z[0] += 40.0                                  # large logits: stable log-sum-exp
    plan = run_both(g, {"x0": z, "x1": y})
    assert plan.launches == 1 and plan.kernels[0].grid == (1,)
    (out,) = TritonProgram(g, training=False).run({}, {"x0": z, "x1": y})[0]
    torch.testing.assert_close(out, F.cross_entropy(z, y, label_smoothing=eps))


@pytest.mark.parametrize("eps", [0.0, 0.1])
@pytest.mark.parametrize("n,v", [(5, 10), (70, 37), (3, 1100)])
@cpu_only
def test_cross_entropy_and_gradient_in_one_kernel(eps, n, v):
    """The training pattern: gy = ones_like(loss), so cross_entropy_bwd is the loss kernel's
    sibling; loss and gradient match the reference (and torch's autograd)."""
    g = _train_graph(eps, v)
    z, y = 3 * rnd(n, v), labels(n, v)
    plan = run_both(g, {"z": z, "y": y})
    assert plan.launches == 1
    k = plan.kernels[0]
    assert k.anchor.op == "cross_entropy" and [s.op for s in k.siblings] == ["cross_entropy_bwd"]
    loss, grad = TritonProgram(g, training=False).run({}, {"z": z, "y": y})[0]
    zt = z.clone().requires_grad_()
    ref = F.cross_entropy(zt, y, label_smoothing=eps)
    ref.backward()
    torch.testing.assert_close(loss, ref.detach())
    torch.testing.assert_close(grad, zt.grad)


def test_cross_entropy_fused_with_an_inlined_chain_on_the_logits():
    """logits = z * t feed only the loss and its gradient: recomputed in the fused kernel's
    loads, never stored; the gradient w.r.t. z (* t) is a second kernel."""
    g = _train_graph(0.1, 37, chain="mul")
    plan = run_both(g, {"z": 2 * rnd(70, 37), "t": rnd(70, 37), "y": labels(70, 37)})
    assert plan.launches == 2
    k = plan.kernels[0]
    assert k.anchor.op == "cross_entropy" and [s.op for s in k.siblings] == ["cross_entropy_bwd"]
    assert [n.op for n in plan.inlined.values()] == ["mul"]
    assert not any(id(v) in plan.inlined for v in k.writes)


def test_cross_entropy_multi_tile_rows(monkeypatch):
    """BLOCK_V < V forced on small rows: online log-sum-exp, gradient in a second sweep."""
    monkeypatch.setattr(loss_t, "MAX_BLOCK", 8)
    g = _train_graph(0.1, 37)
    plan = run_both(g, {"z": 3 * rnd(70, 37), "y": labels(70, 37)})
    assert plan.launches == 1 and "for c0 in range" in plan.kernels[0].source


@pytest.mark.parametrize("eps", [0.0, 0.2])
@pytest.mark.parametrize("n,v", [(5, 10), (70, 37), (3, 1100)])
def test_cross_entropy_bwd_standalone(eps, n, v):
    """gy a loaded scalar (not ones_like): its own kernel, one program per row block."""
    g = Graph("t")
    gy = g.add_input("gy", TensorType(()))
    z = g.add_input("z", TensorType(("N", v)))
    y = g.add_input("y", TensorType(("N",), "i64"))
    b = Builder(g)
    g.outputs = [b.emit1("cross_entropy_bwd", [gy, z, y], {"label_smoothing": eps})]
    plan = run_both(g, {"gy": torch.tensor(1.7), "z": 3 * rnd(n, v), "y": labels(n, v)})
    assert plan.launches == 1 and plan.kernels[0].anchor.op == "cross_entropy_bwd"


def test_cross_entropy_through_autodiff_with_a_scaled_seed():
    """op_graph's objective loss * r: gy = ones * r is not ones_like, so the gradient is a
    kernel of its own (the loss kernel's epilogue computes loss * r)."""
    g = op_graph("cross_entropy", [("N", 37), ("N",)], {"label_smoothing": 0.1},
                 grad_wrt=(0,), dtypes=("f32", "i64"))
    plan = run_both(g, {"x0": rnd(70, 37), "x1": labels(70, 37), "r": torch.tensor(0.6)})
    ops = [k.anchor.op for k in plan.kernels if k.anchor is not None]
    assert ops == ["cross_entropy", "cross_entropy_bwd"]


def test_cross_entropy_of_flattened_logits():
    """Logits that are a view (flatten of (N, V, 1, 1)): loaded through the base buffer."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 37, 1, 1)))
    y = g.add_input("y", TensorType(("N",), "i64"))
    b = Builder(g)
    h = b.emit1("mul", [x, x])                    # stored: its consumer is a view
    logits = b.emit1("flatten", [h])
    loss = b.emit1("cross_entropy", [logits, y], {"label_smoothing": 0.1})
    grads = backward(g, loss, [logits])
    g.outputs = [loss, grads[id(logits)]]
    plan = run_both(g, {"x": rnd(6, 37, 1, 1), "y": labels(6, 37)})
    assert [k.family for k in plan.kernels] == ["elementwise", "loss"]


@pytest.mark.parametrize("shape", [(7, 5), (3, 4, 5, 6), (70, 37)])
def test_mse_and_gradient(shape):
    g = op_graph("mse", [("N",) + shape[1:]] * 2, {}, grad_wrt=(0,))
    plan = run_both(g, {"x0": rnd(*shape), "x1": rnd(*shape), "r": torch.tensor(0.7)})
    assert any(k.anchor is not None and k.anchor.op == "mse" for k in plan.kernels)


@pytest.mark.parametrize("penalty_first", [True, False])
def test_loss_plus_penalty_with_gradients(penalty_first):
    """cross_entropy + l2_penalty, differentiated (the pipeline adds the penalty after the
    loss): the add joins the loss kernel's scalar epilogue and the gradient stays its
    sibling (gy = ones_like(the sum)), whichever is computed first."""
    g = Graph("t")
    z = g.add_input("z", TensorType(("N", 10)))
    y = g.add_input("y", TensorType(("N",), "i64"))
    w = g.add_input("w", TensorType((10, 20)))
    b = Builder(g)
    if penalty_first:
        pen = b.emit1("l2_penalty", [w], {"strength": 0.01})
    loss = b.emit1("cross_entropy", [z, y], {"label_smoothing": 0.1})
    if not penalty_first:
        pen = b.emit1("l2_penalty", [w], {"strength": 0.01})
    total = b.emit1("add", [loss, pen])
    grads = backward(g, total, [z, w])
    g.outputs = [total, grads[id(z)], grads[id(w)]]
    plan = run_both(g, {"z": rnd(9, 10), "y": labels(9, 10), "w": rnd(10, 20)})
    ks = [[n.op for n in k.nodes()] for k in plan.kernels]
    assert len(ks) == 3 and ["cross_entropy", "cross_entropy_bwd", "add"] in ks


@pytest.mark.parametrize("beta", [1.0, 0.3, 0.0])
@pytest.mark.parametrize("shape", [(7, 4), (3, 5, 4), (300, 4)])
def test_smooth_l1_and_gradient_against_torch(shape, beta):
    """Fast R-CNN's box loss as a reduction kernel and an elementwise gradient: against the
    reference backend, and against F.smooth_l1_loss and torch.autograd directly."""
    g = op_graph("smooth_l1", [("N",) + shape[1:]] * 2, {"beta": beta}, grad_wrt=(0,))
    pred, target, r = rnd(*shape) * 2, rnd(*shape), torch.tensor(0.7)
    plan = run_both(g, {"x0": pred, "x1": target, "r": r})
    assert plan.torch_steps == 0
    assert any(k.anchor is not None and k.anchor.op == "smooth_l1" for k in plan.kernels)
    if DEVICE != "cpu":
        return
    (loss, grad), _, _ = TritonProgram(g, training=False).run({}, {"x0": pred, "x1": target,
                                                                 "r": r})
    p = pred.clone().requires_grad_()
    want = F.smooth_l1_loss(p, target, beta=beta)
    (want * r).backward()
    torch.testing.assert_close(loss, want.detach(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(grad, p.grad, rtol=1e-6, atol=1e-8)

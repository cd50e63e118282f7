"""Elementwise kernels: every elementwise op's Triton expression against its reference
forward (fused chains, per-channel and scalar operands, odd sizes with a tail)."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder

from .kernel_check import op_graph, plan_of, run_both, cpu_only

gen = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


@pytest.mark.parametrize("op,attrs", [("relu", {}), ("sigmoid", {}), ("tanh", {}),
                                      ("leaky_relu", {"slope": 0.2})])
def test_activation_and_backward(op, attrs):
    x = 3 * rnd(3, 5, 7, 3)                       # 315 elements: a partial block
    g = op_graph(op, [("N", 5, 7, 3)], attrs, grad_wrt=(0,))
    plan = run_both(g, {"x0": x, "r": rnd(3, 5, 7, 3)})
    assert plan.launches == 1                     # forward, product and backward fused


def test_add_mul_chain_with_bn_eval_per_channel():
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 4, 3, 3)))
    st = {n: g.add_input(n, TensorType((4,))) for n in ("w", "b", "m", "v")}
    b = Builder(g)
    y = b.emit1("batch_norm", [x, st["w"], st["b"], st["m"], st["v"]],
                {"eps": 1e-5, "momentum": 0.1})
    z = b.emit1("add", [y, x, x])
    g.outputs = [b.emit1("mul", [z, y])]
    ins = {"x": rnd(2, 4, 3, 3), "w": rnd(4), "b": rnd(4), "m": rnd(4), "v": rnd(4).abs() + .1}
    plan = run_both(g, ins)
    assert plan.launches == 1


def test_penalty_and_mse_gradients_with_scalar_operand():
    g = Graph("t")
    gy = g.add_input("gy", TensorType(()))
    w = g.add_input("w", TensorType((6, 5)))
    t = g.add_input("t", TensorType((6, 5)))
    b = Builder(g)
    g.outputs = [b.emit1("l2_penalty_bwd", [gy, w], {"strength": 0.3}),
                 b.emit1("l1_penalty_bwd", [gy, w], {"strength": 0.2}),
                 b.emit1("mse_bwd", [gy, w, t])]
    ins = {"gy": torch.tensor(1.7), "w": rnd(6, 5), "t": rnd(6, 5)}
    ins["w"][0, 0] = 0.0                          # sign(0) = 0
    run_both(g, ins)


@cpu_only
def test_dropout_mask_regenerated_in_backward():
    """The mask is recomputed from the seed where it is used: forward and backward agree,
    about p of the values are dropped, the kept ones are scaled by 1/(1-p)."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 4000)))
    b = Builder(g)
    m = b.emit1("dropout_mask", [x], {"p": 0.25})
    y = b.emit1("mul", [x, m])
    gx = b.emit1("mul", [b.emit1("ones_like", [y]), m])
    g.outputs = [y, gx]
    from dlc.runtime.triton_backend import TritonProgram
    x_t = rnd(2, 4000).abs() + 0.5
    prog = TritonProgram(g, training=True, seed=3)
    y_t, gx_t = prog.run({}, {"x": x_t})[0]
    kept = gx_t != 0
    assert torch.equal(kept, y_t != 0)
    assert abs(kept.float().mean().item() - 0.75) < 0.02
    torch.testing.assert_close(gx_t[kept], torch.full_like(gx_t[kept], 1 / 0.75))
    torch.testing.assert_close(y_t, x_t * gx_t)
    plan = prog.compiled({"x": (2, 4000)}).plan
    assert all(n.op != "dropout_mask" for k in plan.kernels for n in k.nodes())  # never stored


def test_pending_producer_of_another_shape_runs_before_its_consumer():
    """A scalar chain (mul of the seed and r) feeding a vector gradient: the scalar's kernel
    must be placed before the kernel that reads it (a planner ordering regression)."""
    g = op_graph("l2_penalty", [(7,)], {"strength": 0.03}, grad_wrt=(0,))
    plan = run_both(g, {"x0": rnd(7), "r": torch.tensor(1.3)})
    made = {}
    for k in plan.kernels:
        for v in k.reads:
            assert made.get(id(v), -1) < k.index
        for v in k.writes:
            made[id(v)] = k.index


@cpu_only
def test_dropout_after_flatten_fuses_into_the_pool_epilogue():
    """pool -> flatten -> dropout: the mask and product run in the pool kernel at flat
    offsets; every value is 0 or the pooled value / (1-p)."""
    import torch.nn.functional as F
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 8, 6, 6)))
    b = Builder(g)
    pooled = b.emit1("max_pool2d", [x], {"kernel": [2, 2], "stride": [2, 2], "padding": [0, 0],
                                         "ceil": False})
    flat = b.emit1("flatten", [pooled])
    y = b.emit1("mul", [flat, b.emit1("dropout_mask", [flat], {"p": 0.5})])
    g.outputs = [y]
    from dlc.runtime.triton_backend import TritonProgram
    xs = rnd(4, 8, 6, 6).abs() + 0.1
    prog = TritonProgram(g, training=True, seed=5)
    (got,), _, _ = prog.run({}, {"x": xs})
    want = F.max_pool2d(xs, 2).flatten(1)
    kept = got != 0
    torch.testing.assert_close(got[kept], want[kept] / 0.5)
    assert 0.35 < kept.float().mean().item() < 0.65
    plan = prog.compiled({"x": (4, 8, 6, 6)}).plan
    assert sum(1 for k in plan.kernels if k.anchor is not None) == 1
    assert [n.op for n in plan.kernels[0].body] == ["mul"]

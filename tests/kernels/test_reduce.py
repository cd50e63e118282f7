"""Reduce kernels: sums over every kind of dimension set (row, column, per-channel planes,
everything), the inlined prologue and the fused epilogue of a sum, the L1/L2 penalties, and
softmax over dim 1 with its backward (one-tile rows, rows longer than a tile, per pixel of
an NCHW tensor), against the reference ops."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.compiler.templates import reduce as reduce_t

from .kernel_check import op_graph, run_both, cpu_only

gen = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


def _inline_ops(plan, k):
    return [plan.inlined[id(v)].op for n in k.nodes() for v in n.inputs
            if id(plan.base(v)) in plan.inlined]


@pytest.mark.parametrize("shape,dims", [
    ((37, 45), (0,)),                  # column sums (bias gradient): kept side contiguous
    ((37, 45), (1,)),                  # row sums: reduced side contiguous
    ((70, 3), (0,)),                   # more rows than a tile, few columns
    ((3, 5, 7, 6), (0, 2, 3)),         # per channel: R K R, a loop over N and H*W
    ((5, 3, 15, 15), (0, 2, 3)),       # per channel: planes longer than a tile, with a tail
    ((6, 7, 1, 1), (0, 2, 3)),         # H = W = 1: channels contiguous
    ((3, 5, 7, 6), (2, 3)),            # per (n, c) plane
    ((3, 5, 7, 6), (0, 1, 2, 3)),      # everything to a scalar
    ((3, 5, 7, 6), (1, 3)),            # K R K R: two reduced and two kept groups
    ((4, 9, 11), (1,)),                # rank 3, middle dimension
    ((300,), (0,)),                    # rank 1
])
def test_sum(shape, dims):
    g = op_graph("sum", [("N",) + shape[1:]], {"dims": dims})
    x = rnd(*shape) + 0.5
    plan = run_both(g, {"x0": x}, rtol=1e-5, atol=1e-4)
    assert plan.launches == 1 and plan.kernels[0].family == "reduce"


@cpu_only
def test_sum_is_deterministic():
    """No atomics: the same input gives bit-identical sums, run after run."""
    from dlc.runtime.triton_backend import TritonProgram
    g = op_graph("sum", [(5, 3, 15, 15)], {"dims": (0, 2, 3)})
    x = rnd(5, 3, 15, 15) * 1e3
    a = TritonProgram(g, training=False).run({}, {"x0": x})[0][0]
    b = TritonProgram(g, training=False).run({}, {"x0": x})[0][0]
    assert torch.equal(a, b)


@pytest.mark.parametrize("shape,dims", [((37, 45), (0,)), ((3, 5, 7, 6), (0, 2, 3))])
def test_relu_bwd_is_recomputed_in_the_sum(shape, dims):
    """relu_bwd whose only consumer is the sum: inlined in the sum's loads, one kernel;
    the padding lanes of the tile are zeroed after the chain."""
    g = Graph("t")
    gy = g.add_input("gy", TensorType(("N",) + shape[1:]))
    y = g.add_input("y", TensorType(("N",) + shape[1:]))
    b = Builder(g)
    g.outputs = [b.emit1("sum", [b.emit1("relu_bwd", [gy, y])], {"dims": dims})]
    plan = run_both(g, {"gy": rnd(*shape), "y": rnd(*shape)}, atol=1e-4)
    assert plan.launches == 1
    assert _inline_ops(plan, plan.kernels[0]) == ["relu_bwd"]


def test_inlined_chain_that_is_nonzero_at_padding():
    """sigmoid(x) is 0.5 where the tile pads x with 0: the sum must not count it."""
    g = Graph("t")
    x = g.add_input("x", TensorType((7, 5, 3, 3)))
    b = Builder(g)
    g.outputs = [b.emit1("sum", [b.emit1("sigmoid", [x])], {"dims": (0, 2, 3)})]
    plan = run_both(g, {"x": rnd(7, 5, 3, 3)}, atol=1e-5)
    assert plan.launches == 1


def test_sum_epilogue():
    """sum over (0, 2, 3) then * w (C,) then relu: one kernel, only the end stored."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 6, 4, 5)))
    w = g.add_input("w", TensorType((6,)))
    b = Builder(g)
    s = b.emit1("sum", [x], {"dims": (0, 2, 3)})
    g.outputs = [b.emit1("relu", [b.emit1("mul", [s, w])])]
    plan = run_both(g, {"x": rnd(3, 6, 4, 5), "w": rnd(6)}, atol=1e-4)
    assert plan.launches == 1
    k = plan.kernels[0]
    assert [n.op for n in k.body] == ["mul", "relu"] and len(k.writes) == 1


def test_sum_epilogue_per_channel_of_the_output():
    """sum over dim 0 of (N, 2, 5, 3, 4) -> (2, 5, 3, 4), then an eval batch norm with (5,)
    statistics: the epilogue's channel index is the output's dim 1."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 2, 5, 3, 4)))
    st = [g.add_input(n, TensorType((5,))) for n in ("w", "b", "m", "v")]
    b = Builder(g)
    s = b.emit1("sum", [x], {"dims": (0,)})
    g.outputs = [b.emit1("batch_norm", [s] + st, {"eps": 1e-5, "momentum": 0.1})]
    ins = {"x": rnd(3, 2, 5, 3, 4), "w": rnd(5), "b": rnd(5), "m": rnd(5),
           "v": rnd(5).abs() + 0.5}
    plan = run_both(g, ins, atol=1e-5)
    assert plan.launches == 1


@pytest.mark.parametrize("op,strength", [("l1_penalty", 0.2), ("l2_penalty", 0.03)])
@pytest.mark.parametrize("shape", [(37, 45), (16, 3, 3, 3), (7,)])
def test_penalty_and_gradient(op, strength, shape):
    """The penalty (one program over the whole tensor) and, through dlc's autodiff, its
    gradient (gy = ones_like(penalty), recomputed)."""
    g = Graph("t")
    w = g.add_input("w", TensorType(shape))
    b = Builder(g)
    pen = b.emit1(op, [w], {"strength": strength})
    g.outputs = [pen, backward(g, pen, [w])[id(w)]]
    x = rnd(*shape)
    x.view(-1)[::5] = 0.0                         # sign(0) = 0 in the L1 gradient
    plan = run_both(g, {"w": x}, atol=1e-5)
    assert [k.anchor.op for k in plan.kernels if k.anchor is not None] == [op]
    assert plan.kernels[0].grid == (1,)


def test_penalties_added_to_a_loss():
    """mse + l1(w) + l2(v): the penalties store their scalars (no epilogue: an add fused
    into a penalty kernel would read the loss and keep the loss kernel from taking its
    gradient as a sibling); the add joins the loss kernel's scalar epilogue."""
    g = Graph("t")
    w = g.add_input("w", TensorType((20, 30)))
    v = g.add_input("v", TensorType((8, 3, 3, 3)))
    a = g.add_input("a", TensorType(("N", 7)))
    t = g.add_input("t", TensorType(("N", 7)))
    b = Builder(g)
    pens = [b.emit1("l1_penalty", [w], {"strength": 0.1}),
            b.emit1("l2_penalty", [v], {"strength": 0.5})]
    loss = b.emit1("mse", [a, t])
    g.outputs = [b.emit1("add", [loss] + pens)]
    plan = run_both(g, {"w": rnd(20, 30), "v": rnd(8, 3, 3, 3), "a": rnd(5, 7),
                        "t": rnd(5, 7)}, atol=1e-5)
    assert [[n.op for n in k.nodes()] for k in plan.kernels] == \
        [["l1_penalty"], ["l2_penalty"], ["mse", "add"]]


@pytest.mark.parametrize("shape", [(5, 10), (70, 37), (3, 1100), (4, 5, 3, 3), (2, 7, 5, 6)])
def test_softmax_and_backward(shape):
    """(N, C) rows in one tile, with row blocks, longer than a tile (online max/sum), and
    softmax over C at every pixel of NCHW; gradient through dlc's autodiff."""
    g = op_graph("softmax", [("N",) + shape[1:]], {}, grad_wrt=(0,))
    x = 4 * rnd(*shape)
    x[0] += 50.0                                  # large logits: the max must be subtracted
    plan = run_both(g, {"x0": x, "r": rnd(*shape)}, atol=1e-5)
    ops = [k.anchor.op for k in plan.kernels if k.anchor is not None]
    assert ops == ["softmax", "softmax_bwd"]
    bwd = plan.kernels[-1]
    assert "mul" in _inline_ops(plan, bwd)       # gy = ones * r recomputed in its loads


def test_softmax_multi_tile_path_on_short_rows(monkeypatch):
    """Force BLOCK_C < C (the online path) on a small NCHW tensor."""
    monkeypatch.setattr(reduce_t, "MAX_BLOCK", 4)
    g = op_graph("softmax", [(3, 11, 2, 3)], {}, grad_wrt=(0,))
    plan = run_both(g, {"x0": 3 * rnd(3, 11, 2, 3), "r": rnd(3, 11, 2, 3)})
    assert all("for c0 in range" in k.source for k in plan.kernels if k.family == "reduce")


@pytest.mark.parametrize("shape", [(33, 9), (3, 9, 4, 5)])
def test_softmax_epilogue(shape):
    """softmax -> eval batch norm (per-channel statistics) -> relu: one kernel."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N",) + shape[1:]))
    st = [g.add_input(n, TensorType((9,))) for n in ("w", "b", "m", "v")]
    b = Builder(g)
    y = b.emit1("batch_norm", [b.emit1("softmax", [x])] + st, {"eps": 1e-5, "momentum": 0.1})
    g.outputs = [b.emit1("relu", [y])]
    ins = {"x": rnd(*shape), "w": rnd(9), "b": rnd(9), "m": 0.1 * rnd(9),
           "v": rnd(9).abs() + 0.5}
    plan = run_both(g, ins)
    assert plan.launches == 1

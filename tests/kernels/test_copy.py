"""Copy kernels: concat along every axis (its gradient is one slice per input) and slice,
against the reference; a chain before the slices is inlined, one after concat is fused."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder

from .kernel_check import op_graph, run_both

gen = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


@pytest.mark.parametrize("axis,sizes", [(1, (2, 3, 5)), (2, (1, 4, 2)), (3, (3, 1, 5))],
                         ids=["axis1", "axis2", "axis3"])
def test_concat_of_three_and_its_gradient(axis, sizes):
    shapes = []
    for s in sizes:
        shape = [2, 3, 5, 7]
        shape[axis] = s
        shapes.append(shape)
    g = op_graph("concat", [("N", *s[1:]) for s in shapes], {"axis": axis}, grad_wrt=(0, 1, 2))
    out = list(shapes[0])
    out[axis] = sum(sizes)
    xs = {f"x{i}": rnd(*s) for i, s in enumerate(shapes)}
    plan = run_both(g, {**xs, "r": rnd(*out)})
    slices = [k for k in plan.kernels if k.anchor is not None and k.anchor.op == "slice"]
    assert [k.anchor.attrs["start"] for k in slices] == [0, sizes[0], sizes[0] + sizes[1]]
    # the gradient r * ones is recomputed in each slice's loads, never stored
    assert all(n.op != "mul" for k in slices for n in k.nodes())


def test_concat_of_features():
    """(N, F) inputs along the feature axis: the channel of each element is its feature."""
    g = Graph("t")
    xs = [g.add_input(f"x{i}", TensorType(("N", f))) for i, f in enumerate((5, 11))]
    st = {n: g.add_input(n, TensorType((16,))) for n in ("w", "b", "m", "v")}
    b = Builder(g)
    y = b.emit1("concat", xs, {"axis": 1})
    g.outputs = [b.emit1("batch_norm", [y, st["w"], st["b"], st["m"], st["v"]],  # per feature
                         {"eps": 1e-5, "momentum": 0.1})]
    ins = {"w": rnd(16), "b": rnd(16), "m": rnd(16), "v": rnd(16).abs() + .1}
    plan = run_both(g, {"x0": rnd(3, 5), "x1": rnd(3, 11), **ins})
    assert plan.launches == 1


@pytest.mark.parametrize("axis,start,stop", [(1, 2, 5), (1, 0, 1), (3, 1, 6), (2, 4, 5)])
def test_slice(axis, start, stop):
    g = op_graph("slice", [("N", 6, 5, 7)], {"axis": axis, "start": start, "stop": stop})
    run_both(g, {"x0": rnd(2, 6, 5, 7)})


def test_relu_fused_after_concat_and_relu_bwd_inlined_into_slices():
    g = Graph("t")
    xs = [g.add_input(f"x{i}", TensorType(("N", c, 3, 5))) for i, c in enumerate((2, 3))]
    b = Builder(g)
    y = b.emit1("relu", [b.emit1("concat", xs, {"axis": 1})])
    r = g.add_input("r", y.type)
    grads = backward(g, b.emit1("mul", [y, r]), xs)
    g.outputs = [y] + [grads[id(x)] for x in xs]
    plan = run_both(g, {"x0": rnd(2, 2, 3, 5), "x1": rnd(2, 3, 3, 5), "r": rnd(2, 5, 3, 5)})
    assert [[n.op for n in k.nodes()] for k in plan.kernels][0][:2] == ["concat", "relu"]
    assert [k.anchor.op for k in plan.kernels[1:]] == ["slice", "slice"]
    assert all(plan.inlined[id(k.anchor.inputs[0])].op == "relu_bwd" for k in plan.kernels[1:])


@pytest.mark.parametrize("axis", [1, 3])
def test_per_channel_chain_inlined_into_slice(axis):
    """Inference batch norm recomputed in the slice's loads: per-channel operands read at the
    input's channel (start + position along axis 1)."""
    g = Graph("t")
    x = g.add_input("x0", TensorType(("N", 6, 3, 5)))
    st = {n: g.add_input(n, TensorType((6,))) for n in ("w", "b", "m", "v")}
    b = Builder(g)
    y = b.emit1("batch_norm", [x, st["w"], st["b"], st["m"], st["v"]],
                {"eps": 1e-5, "momentum": 0.1})
    g.outputs = [b.emit1("slice", [y], {"axis": axis, "start": 2, "stop": 5})]
    ins = {"w": rnd(6), "b": rnd(6), "m": rnd(6), "v": rnd(6).abs() + .1}
    plan = run_both(g, {"x0": rnd(2, 6, 3, 5), **ins})
    assert plan.launches == 1


def test_concat_of_flattened_views():
    """concat of flatten views: each input is read at its own flat offsets in its base."""
    g = Graph("t")
    xs = [g.add_input(f"x{i}", TensorType(("N", c, 3, 2))) for i, c in enumerate((2, 3))]
    b = Builder(g)
    g.outputs = [b.emit1("concat", [b.emit1("flatten", [x]) for x in xs], {"axis": 1})]
    run_both(g, {"x0": rnd(2, 2, 3, 2), "x1": rnd(2, 3, 3, 2)})


@pytest.mark.parametrize("k", [1, 4])
def test_per_anchor_and_its_gradient(k):
    """The RPN's per-anchor view, a permuting copy, and its inverse as the gradient."""
    g = op_graph("per_anchor", [("N", 3 * k, 4, 5)], {"values": k}, grad_wrt=(0,))
    out = (2, 4 * 5 * 3) if k == 1 else (2, 4 * 5 * 3, k)
    plan = run_both(g, {"x0": rnd(2, 3 * k, 4, 5), "r": rnd(*out)}, rtol=0, atol=0)
    ops = [k.anchor.op for k in plan.kernels if k.anchor is not None]
    assert "per_anchor" in ops and "per_anchor_bwd" in ops

"""Matmul kernels: linear (with and without bias) and matmul with every transpose combination
at odd sizes (tails in M, N and K, several K steps, grouped program order), the epilogue
fusion of an activation, the bias-gradient sibling inside the weight-gradient matmul, the
backward of linear, and inputs that are views or recomputed constants."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder

from .kernel_check import op_graph, plan_of, run_both

gen = torch.Generator().manual_seed(0)
TOL = {"rtol": 1e-4, "atol": 1e-4}            # fp32, summation order differs from torch


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


@pytest.mark.parametrize("bias", [True, False])
def test_linear(bias):
    m, k, n = 37, 45, 29                          # tails in every dimension, 2 K steps
    shapes = [("N", k), (n, k)] + ([(n,)] if bias else [])
    g = op_graph("linear", shapes, {"out": n, "bias": bias})
    ins = {"x0": rnd(m, k), "x1": rnd(n, k)}
    if bias:
        ins["x2"] = rnd(n)
    plan = run_both(g, ins, **TOL)
    assert plan.launches == 1 and plan.kernels[0].family == "matmul"


# (M, K, N): odd sizes; one tile with tails; 2 x 2 tiles; 9 x 2 tiles (grouped program order
# with a partial last group of row blocks); a small N (blocks of 16). Under the interpreter
# the tiles are the largest autotuning choice (up to 128).
SIZES = [(37, 45, 29), (150, 45, 140), (1100, 20, 140), (5, 70, 11)]


@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("size", SIZES)
def test_matmul_transposes(ta, tb, size):
    m, k, n = size
    a_shape = (k, m) if ta else (m, k)
    b_shape = (n, k) if tb else (k, n)
    attrs = {}                                    # absent attributes mean False
    if ta:
        attrs["transpose_a"] = True
    if tb:
        attrs["transpose_b"] = True
    g = op_graph("matmul", [a_shape, b_shape], attrs)
    assert tuple(g.outputs[0].type.shape) == (m, n)
    run_both(g, {"x0": rnd(*a_shape), "x1": rnd(*b_shape)}, **TOL)


def test_matmul_explicit_false_attrs():
    g = op_graph("matmul", [(19, 33), (33, 21)], {"transpose_a": False, "transpose_b": False})
    run_both(g, {"x0": rnd(19, 33), "x1": rnd(33, 21)}, **TOL)


def test_linear_relu_epilogue():
    """linear -> relu: one kernel, the relu applied to the tile before it is stored; the
    pre-activation is not stored (nothing outside reads it)."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 45)))
    w = g.add_input("w", TensorType((29, 45)))
    bias = g.add_input("b", TensorType((29,)))
    b = Builder(g)
    y = b.emit1("linear", [x, w, bias], {"out": 29, "bias": True})
    g.outputs = [b.emit1("relu", [y])]
    plan = run_both(g, {"x": rnd(37, 45), "w": rnd(29, 45), "b": rnd(29)}, **TOL)
    assert plan.launches == 1
    k = plan.kernels[0]
    assert k.anchor.op == "linear" and [n.op for n in k.body] == ["relu"]
    assert k.writes == [g.outputs[0]]
    assert "tl.maximum" in k.source or "tl.where" in k.source


def test_matmul_transpose_a_with_bias_gradient_sibling():
    """dW = G^T X and db = sum_rows G in one kernel: db is summed from the A tiles of the
    programs with pid_n == 0, over several K steps with a tail; several column blocks."""
    g = Graph("t")
    gy = g.add_input("g", TensorType(("N", 37)))
    x = g.add_input("x", TensorType(("N", 150)))
    b = Builder(g)
    dw = b.emit1("matmul", [gy, x], {"transpose_a": True})
    db = b.emit1("sum", [gy], {"dims": (0,)})
    g.outputs = [dw, db]
    plan = run_both(g, {"g": rnd(45, 37), "x": rnd(45, 150)}, **TOL)
    assert plan.launches == 1
    k = plan.kernels[0]
    assert k.anchor is dw.node and k.siblings == [db.node]
    assert k.grid[0] >= 2                         # several column blocks


def test_linear_backward():
    """The backward of linear: dx = G W (matmul), dW = G^T X with db = sum_rows G as its
    sibling (matmul transpose_a + sum)."""
    g = op_graph("linear", [("N", 45), (29, 45), (29,)], {"out": 29, "bias": True},
                 grad_wrt=(0, 1, 2))
    ins = {"x0": rnd(37, 45), "x1": rnd(29, 45), "x2": rnd(29), "r": rnd(37, 29)}
    plan = run_both(g, ins, **TOL)
    ops = [(k.anchor.op, [s.op for s in k.siblings]) for k in plan.kernels]
    assert ("matmul", ["sum"]) in ops
    assert all(k.family == "matmul" for k in plan.kernels)


def test_flatten_linear_backward_through_views():
    """x [N, 3, 4, 5] -> flatten -> linear: the linear and the weight-gradient matmul read x
    through a view of another shape, and the input gradient is reshaped back."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 3, 4, 5)))
    w = g.add_input("w", TensorType((17, 60)))
    bias = g.add_input("b", TensorType((17,)))
    r = g.add_input("r", TensorType(("N", 17)))
    b = Builder(g)
    f = b.emit1("flatten", [x])
    y = b.emit1("linear", [f, w, bias], {"out": 17, "bias": True})
    obj = b.emit1("mul", [y, r])
    grads = backward(g, obj, [x, w])
    g.outputs = [y, grads[id(x)], grads[id(w)]]
    run_both(g, {"x": rnd(6, 3, 4, 5), "w": rnd(17, 60), "b": rnd(17), "r": rnd(6, 17)}, **TOL)


def test_recomputed_constant_operand_is_masked():
    """matmul(ones_like(a), b): the constant is recomputed in the load and must be 0.0 outside
    the tile's mask, or the K tail would add garbage."""
    g = Graph("t")
    a = g.add_input("a", TensorType((21, 45)))
    c = g.add_input("c", TensorType((45, 19)))
    b = Builder(g)
    ones = b.emit1("ones_like", [a])
    g.outputs = [b.emit1("matmul", [ones, c])]
    plan = run_both(g, {"a": rnd(21, 45), "c": rnd(45, 19)}, **TOL)
    assert plan.launches == 1


def test_blocks_are_gpu_sized_and_source_is_size_free():
    """Every tl.dot block is >= 16; two linears of different sizes share one source."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 45)))
    b = Builder(g)
    h = b.emit1("linear", [x, g.add_input("w1", TensorType((29, 45)))], {"out": 29, "bias": False})
    y = b.emit1("linear", [h, g.add_input("w2", TensorType((10, 29)))], {"out": 10, "bias": False})
    g.outputs = [y]
    plan = plan_of(g, {"x": torch.zeros(37, 45)})
    assert plan.kernels[0].name == plan.kernels[1].name
    for k in plan.kernels:
        names = [p.split(":")[0] for p in k.source.split("(", 1)[1].split(")", 1)[0].split(", ")]
        consts = dict(zip(names, k.argv))
        assert all(int(consts[b]) >= 16 for b in ("BLOCK_M", "BLOCK_N", "BLOCK_K"))
        assert set(k.tunables) == {"BLOCK_M", "BLOCK_N", "BLOCK_K"}

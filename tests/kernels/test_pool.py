"""Pool kernels: max and average pooling (every window attribute, ceil mode, ties, divisor
rules), global average pooling and nearest upsampling, forward and backward against the
reference; elementwise chains inlined into their loads and fused after them."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.compiler.kernels import eval_dim

from .kernel_check import op_graph, run_both

gen = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


def ints(*shape):
    """Small integers: windows hold equal maxima, so the argmax tie rule matters."""
    return torch.randint(-2, 3, shape, generator=gen).float()


def run_op(op, shape, attrs, x):
    """op on x (batch N = x.shape[0]) with its gradient, on both backends."""
    g = op_graph(op, [("N",) + tuple(shape[1:])], attrs, grad_wrt=(0,))
    out = [eval_dim(d, {"N": shape[0]}) for d in g.outputs[0].type.shape]
    return run_both(g, {"x0": x, "r": ints(*out)})


def chain_graph(ops: list[tuple[str, dict]], shape: tuple, grad: bool = True) -> Graph:
    """x -> ops... -> y, plus dx of sum(y * r) when `grad`, like op_graph."""
    g = Graph("t")
    x = g.add_input("x0", TensorType(shape))
    b = Builder(g)
    y = x
    for op, attrs in ops:
        y = b.emit1(op, [y], attrs)
    g.outputs = [y]
    if grad:
        r = g.add_input("r", y.type)
        obj = b.emit1("mul", [y, r])
        g.outputs.append(backward(g, obj, [x])[id(x)])
    return g


def window(k, s, p, ceil):
    return {"kernel": k, "stride": s, "padding": p, "ceil": ceil}


# (input H, W), kernel, stride, padding, ceil: odd sizes, overlapping and gapped windows,
# ceil-mode tails (a last window running past the padded border), asymmetric windows
WINDOWS = [
    ((7, 9), (2, 2), (2, 2), (0, 0), False),
    ((7, 9), (2, 2), (2, 2), (0, 0), True),
    ((7, 9), (3, 3), (2, 2), (1, 1), False),
    ((7, 9), (3, 3), (2, 2), (1, 1), True),
    ((5, 5), (3, 3), (1, 1), (1, 1), False),
    ((8, 7), (3, 3), (3, 3), (0, 0), True),
    ((8, 7), (3, 3), (3, 3), (1, 1), True),
    ((6, 9), (3, 2), (2, 1), (1, 0), True),
    ((5, 7), (2, 3), (1, 3), (1, 1), False),
]
IDS = [f"{h}x{w}-k{k[0]}{k[1]}-s{s[0]}{s[1]}-p{p[0]}{p[1]}-{'ceil' if c else 'floor'}"
       for (h, w), k, s, p, c in WINDOWS]


@pytest.mark.parametrize("hw,k,s,p,ceil", WINDOWS, ids=IDS)
def test_max_pool_forward_backward_with_ties(hw, k, s, p, ceil):
    x = ints(2, 3, *hw)
    plan = run_op("max_pool2d", (2, 3) + hw, window(k, s, p, ceil), x)
    assert [k.anchor.op for k in plan.kernels if k.anchor] == ["max_pool2d", "max_pool2d_bwd"]


def test_max_pool_all_equal_and_negative_windows():
    """Every value equal (gradient to each window's first in-image pixel), and windows of
    -inf only (padding never wins, the first pixel still gets the gradient)."""
    x = torch.full((1, 2, 5, 5), 1.5)
    x[0, 1] = float("-inf")
    run_op("max_pool2d", (1, 2, 5, 5), window((3, 3), (2, 2), (1, 1), True), x)


@pytest.mark.parametrize("count_pad", [True, False], ids=["count_pad", "no_count_pad"])
@pytest.mark.parametrize("hw,k,s,p,ceil", WINDOWS[2:], ids=IDS[2:])
def test_avg_pool_forward_backward(hw, k, s, p, ceil, count_pad):
    x = rnd(2, 3, *hw)
    run_op("avg_pool2d", (2, 3) + hw, {**window(k, s, p, ceil), "count_include_pad": count_pad},
           x)


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (3, 7, 9, 11)])  # one loop step; tails
def test_global_avg_pool_forward_backward(shape):
    run_op("global_avg_pool", shape, {}, rnd(*shape))


@pytest.mark.parametrize("scale", [2, 3])
def test_upsample_nearest_forward_backward(scale):
    run_op("upsample_nearest", (2, 3, 5, 7), {"scale": scale}, rnd(2, 3, 5, 7))


POOLS = [("max_pool2d", window((3, 3), (2, 2), (1, 1), True)),
         ("avg_pool2d", {**window((3, 3), (2, 2), (1, 1), True), "count_include_pad": False}),
         ("global_avg_pool", {}),
         ("upsample_nearest", {"scale": 2})]


@pytest.mark.parametrize("op,attrs", POOLS, ids=[p[0] for p in POOLS])
def test_relu_bwd_inlined_into_gradient_and_relu_fused_after(op, attrs):
    """x -> pool -> relu: relu joins the pool kernel (epilogue); its gradient relu_bwd is
    recomputed in the backward pool's gy loads (prologue): two launches in all."""
    g = chain_graph([(op, attrs), ("relu", {})], ("N", 3, 7, 9))
    x = rnd(2, 3, 7, 9)
    x[0, 0, :3, :3] = -0.5                        # equal negatives: ties and zero gradients
    shape = [2] + list(g.outputs[0].type.shape[1:])
    plan = run_both(g, {"x0": x, "r": rnd(*shape)})
    fwd, bwd = plan.kernels
    assert [n.op for n in fwd.nodes()][:2] == [op, "relu"]
    assert bwd.anchor.op == op + "_bwd"
    gy = bwd.anchor.inputs[0]
    assert plan.inlined[id(gy)].op == "relu_bwd"


@pytest.mark.parametrize("op,attrs", POOLS, ids=[p[0] for p in POOLS])
def test_relu_inlined_into_forward(op, attrs):
    """Inference: x -> relu -> pool is one launch, relu recomputed in the pool's loads (for
    max pooling: in-image zeros still beat the -inf padding)."""
    g = chain_graph([("relu", {}), (op, attrs)], ("N", 3, 7, 9), grad=False)
    x = rnd(2, 3, 7, 9)
    x[:, :, :4, :4] = -1.0                        # windows of relu zeros only
    plan = run_both(g, {"x0": x})
    assert plan.launches == 1
    assert plan.kernels[0].anchor.op == op


def test_global_avg_pool_gradient_of_a_reshaped_view():
    """flatten's gradient hands global_avg_pool_bwd a (N, C, 1, 1) view of an (N, C) buffer:
    read at the same flat offsets."""
    g = Graph("t")
    gy = g.add_input("gy", TensorType(("N", 6)))
    x = g.add_input("x", TensorType(("N", 6, 5, 7)))
    b = Builder(g)
    view = b.emit1("reshape", [gy], {"shape": (6, 1, 1)})
    g.outputs = [b.emit1("global_avg_pool_bwd", [view, x])]
    plan = run_both(g, {"gy": rnd(3, 6), "x": rnd(3, 6, 5, 7)})
    assert plan.launches == 1

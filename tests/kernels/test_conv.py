"""Convolution kernels: conv2d and its input and weight gradients (implicit GEMMs) against the
reference for every geometry attribute: stride 1 and 2 (and unequal), padding 0, 1 and
asymmetric, dilation, groups and depthwise, 1x1 and 3x5 kernels, with and without bias;
the epilogue fusion of an activation; gradients arriving through a view (flatten)."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder, get
from dlc.compiler.kernels import eval_dim

from .kernel_check import op_graph, run_both

gen = torch.Generator().manual_seed(0)
TOL = {"rtol": 1e-4, "atol": 1e-4}            # fp32, summation order differs from torch
HAVE_REDUCE = importlib.util.find_spec("dlc.compiler.templates.reduce") is not None


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


def conv_attrs(c_out, kernel, stride=1, padding=None, dilation=1, groups=1, bias=True):
    """conv2d attributes normalised as the front end does (pairs, default padding)."""
    return get("conv2d").attrs({"out": c_out, "kernel": kernel, "stride": stride,
                                "padding": padding, "dilation": dilation, "groups": groups,
                                "bias": bias}, None)


def run_conv(c_in, hw, attrs, grad_wrt=(0, 1), batch=2):
    """conv2d on an (N, c_in, *hw) batch with the gradients `grad_wrt`, on both backends."""
    kh, kw = attrs["kernel"]
    shapes = [("N", c_in, *hw), (attrs["out"], c_in // attrs["groups"], kh, kw)]
    if attrs["bias"]:
        shapes.append((attrs["out"],))
    g = op_graph("conv2d", shapes, attrs, grad_wrt=grad_wrt)
    ins = {f"x{i}": rnd(*[eval_dim(d, {"N": batch}) for d in s]) for i, s in enumerate(shapes)}
    if grad_wrt:
        ins["r"] = rnd(*[eval_dim(d, {"N": batch}) for d in g.outputs[0].type.shape])
    return run_both(g, ins, **TOL)


# (C, H x W, attrs): small batches of odd images (tails in every tile). Under the interpreter
# tiles are up to 128 wide: the last cases have several tiles in rows, columns and K.
CASES = {
    "3x3 s1 p1": (3, (7, 9), conv_attrs(5, 3, 1, 1)),
    "3x3 s1 p0 no bias": (4, (7, 9), conv_attrs(6, 3, 1, 0, bias=False)),
    "3x3 s2 p1": (3, (7, 9), conv_attrs(5, 3, 2, 1)),
    "3x3 s2 p0 no bias": (3, (7, 9), conv_attrs(4, 3, 2, 0, bias=False)),
    "3x3 s(2,1) p[1,2]": (3, (7, 9), conv_attrs(4, 3, (2, 1), (1, 2))),
    "3x3 dilation 2": (3, (7, 9), conv_attrs(5, 3, 1, 2, dilation=2)),
    "3x3 s2 dilation (2,1)": (3, (7, 9), conv_attrs(4, 3, 2, (2, 1), dilation=(2, 1))),
    "groups 2": (4, (7, 9), conv_attrs(6, 3, 1, 1, groups=2)),
    "groups 2 s2 no bias": (6, (7, 9), conv_attrs(4, 3, 2, 1, groups=2, bias=False)),
    "depthwise": (5, (7, 9), conv_attrs(5, 3, 1, 1, groups=5)),
    "depthwise x2 s2": (4, (7, 9), conv_attrs(8, 3, 2, 1, groups=4, bias=False)),
    "1x1": (6, (7, 9), conv_attrs(5, 1, 1, 0)),
    "1x1 s2 no bias": (5, (7, 9), conv_attrs(3, 1, 2, 0, bias=False)),
    "3x5 p[1,2]": (3, (7, 9), conv_attrs(4, (3, 5), 1, (1, 2))),
    "3x5 s2 p0": (4, (7, 9), conv_attrs(3, (3, 5), 2, 0)),
    "wide K (C=8, 5x5)": (8, (7, 9), conv_attrs(5, 5, 1, 2)),
    "many pixels (N=4, 12x13)": (3, (12, 13), conv_attrs(4, 3, 1, 1)),
    "C=16 3x3 s2 (144 taps)": (16, (7, 9), conv_attrs(6, 3, 2, 1)),
    "many channels 1x1": (136, (4, 5), conv_attrs(132, 1, 1, 0)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_conv_forward_and_gradients(name):
    """Output, dx, dw (and db, a sum kernel of the reduce family, where it exists)."""
    c_in, hw, attrs = CASES[name]
    grads = (0, 1, 2) if attrs["bias"] and HAVE_REDUCE else (0, 1)
    plan = run_conv(c_in, hw, attrs, grads, batch=4 if "many" in name else 2)
    ops = sorted(k.anchor.op for k in plan.kernels if k.family == "conv")
    assert ops == ["conv2d", "conv2d_bwd_input", "conv2d_bwd_weight"]


def test_conv_relu_epilogue():
    """conv -> relu: one kernel; only the activation is stored."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 3, 7, 9)))
    w = g.add_input("w", TensorType((5, 3, 3, 3)))
    bias = g.add_input("b", TensorType((5,)))
    b = Builder(g)
    y = b.emit1("conv2d", [x, w, bias], conv_attrs(5, 3, 2, 1))
    g.outputs = [b.emit1("relu", [y])]
    plan = run_both(g, {"x": rnd(2, 3, 7, 9), "w": rnd(5, 3, 3, 3), "b": rnd(5)}, **TOL)
    assert plan.launches == 1
    k = plan.kernels[0]
    assert k.anchor.op == "conv2d" and [n.op for n in k.body] == ["relu"]
    assert k.writes == [g.outputs[0]]


def test_conv_flatten_linear_backward():
    """conv -> relu -> flatten -> linear: the conv's input and weight gradients read gy
    through the reshape of the linear's input gradient (a view of another shape)."""
    g = Graph("t")
    x = g.add_input("x", TensorType(("N", 3, 5, 6)))
    w = g.add_input("w", TensorType((4, 3, 3, 3)))
    w2 = g.add_input("w2", TensorType((7, 4 * 3 * 3)))
    r = g.add_input("r", TensorType(("N", 7)))
    b = Builder(g)
    h = b.emit1("relu", [b.emit1("conv2d", [x, w], conv_attrs(4, 3, 2, 1, bias=False))])
    y = b.emit1("linear", [b.emit1("flatten", [h]), w2], {"out": 7, "bias": False})
    grads = backward(g, b.emit1("mul", [y, r]), [x, w, w2])
    g.outputs = [y] + [grads[id(v)] for v in (x, w, w2)]
    run_both(g, {"x": rnd(3, 3, 5, 6), "w": rnd(4, 3, 3, 3), "w2": rnd(7, 36), "r": rnd(3, 7)},
             **TOL)


def test_weight_gradient_with_bias_sibling():
    """sum(gy) {dims=[0,2,3]} (the conv bias gradient) is a sibling of conv2d_bwd_weight,
    accumulated from the gy tiles it already loads: one kernel."""
    for c_in, attrs in ((4, conv_attrs(37, 3, 2, 1)), (4, conv_attrs(6, 3, 1, 1, groups=2))):
        g = Graph("t")
        gy_shape = ("N", attrs["out"], 4 if attrs["stride"][0] == 2 else 7, 5 if
                    attrs["stride"][0] == 2 else 9)
        gy = g.add_input("gy", TensorType(gy_shape))
        x = g.add_input("x", TensorType(("N", c_in, 7, 9)))
        b = Builder(g)
        geo = {k: attrs[k] for k in ("kernel", "stride", "padding", "dilation", "groups")}
        gw = b.emit1("conv2d_bwd_weight", [gy, x], geo)
        gb = b.emit1("sum", [gy], {"dims": (0, 2, 3)})
        g.outputs = [gw, gb]
        plan = run_both(g, {"gy": rnd(2, *gy_shape[1:]), "x": rnd(2, c_in, 7, 9)}, **TOL)
        assert plan.launches == 1 and plan.kernels[0].siblings == [gb.node]

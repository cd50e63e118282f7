"""Norm kernels: training batch norm (every statistic, the fused epilogue), both batch-norm
backwards (the inlined gy prologue, each subset of gradients) and local response norm with
its backward, against the reference ops, for (N, C) and (N, C, H, W) inputs of odd sizes."""
from __future__ import annotations

import pytest
import torch

from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder

from .kernel_check import op_graph, plan_of, run_both, cpu_only

gen = torch.Generator().manual_seed(0)


def rnd(*shape):
    return torch.randn(*shape, generator=gen)


# (N, C) columns in two channel tiles with a tail; planes of one channel per program,
# one tile (3x5x7x6), several tiles with a tail (M = 5*15*15 = 1125 > 1024), and H = W = 1
SHAPES = [(37, 45), (3, 5, 7, 6), (5, 3, 15, 15), (6, 7, 1, 1)]


def _stats(x):
    dims = (0,) if x.dim() == 2 else (0, 2, 3)
    return x.mean(dims), x.var(dims, correction=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_batch_norm_train_outputs_and_gradients(shape):
    """y, mean, biased and unbiased var; then gx, gw, gb through dlc's autodiff (gy is an
    inlined ones_like * r chain in the backward's prologue)."""
    c = shape[1]
    x = 2.0 * rnd(*shape) + 0.7 * torch.arange(c).reshape(1, c, *[1] * (len(shape) - 2))
    g = op_graph("batch_norm_train", [("N",) + shape[1:], (c,), (c,)], {"eps": 1e-3},
                 grad_wrt=(0, 1, 2))
    ins = {"x0": x, "x1": rnd(c), "x2": rnd(c), "r": rnd(*shape)}
    plan = run_both(g, ins)
    ops = [k.anchor.op for k in plan.kernels if k.anchor is not None]
    assert ops == ["batch_norm_train", "batch_norm_train_bwd"]


@cpu_only
def test_batch_norm_train_matches_torch_directly():
    """The oracle itself against torch's training-mode batch norm, on an offset input."""
    x = rnd(4, 6, 5, 3) * 3.0 + 10.0
    w, b = rnd(6), rnd(6)
    g = op_graph("batch_norm_train", [(4, 6, 5, 3), (6,), (6,)], {"eps": 1e-5})
    run_both(g, {"x0": x, "x1": w, "x2": b})
    from dlc.runtime.triton_backend import TritonProgram
    y, mean, var, var_u = TritonProgram(g, training=False).run({}, {"x0": x, "x1": w,
                                                                     "x2": b})[0]
    rm, rv = torch.zeros(6), torch.ones(6)
    ref = torch.nn.functional.batch_norm(x, rm, rv, w, b, True, 1.0, 1e-5)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(var_u, rv, rtol=1e-5, atol=1e-5)   # momentum 1: the batch's
    torch.testing.assert_close(mean, rm, rtol=1e-5, atol=1e-5)


def test_batch_norm_train_single_value_per_channel_is_rejected():
    g = op_graph("batch_norm_train", [(1, 3), (3,), (3,)], {"eps": 1e-5})
    with pytest.raises(ValueError, match="more than one value"):
        plan_of(g, {"x0": torch.zeros(1, 3)})


def _bn_train_graph(shape, fused: str, outputs: str):
    g = Graph("t")
    c = shape[1]
    x = g.add_input("x", TensorType(shape))
    w = g.add_input("w", TensorType((c,)))
    bias = g.add_input("b", TensorType((c,)))
    res = g.add_input("res", TensorType(shape))
    b = Builder(g)
    y, mean, var, var_u = b.emit("batch_norm_train", [x, w, bias], {"eps": 1e-5})
    z = b.emit1("add", [y, res]) if fused == "residual" else y
    z = b.emit1("relu", [z])
    vals = {"y": y, "z": z, "mean": mean, "var": var, "var_u": var_u}
    g.outputs = [vals[k] for k in outputs.split()]
    return g


@pytest.mark.parametrize("shape", [(3, 5, 7, 6), (37, 45)])
@pytest.mark.parametrize("fused,outputs", [("relu", "z mean var var_u"),
                                           ("residual", "z var_u"),
                                           ("relu", "y z"),
                                           ("residual", "z")])
def test_batch_norm_train_epilogue_is_one_kernel(shape, fused, outputs):
    g = _bn_train_graph(shape, fused, outputs)
    c = shape[1]
    ins = {"x": rnd(*shape), "w": rnd(c), "b": rnd(c), "res": rnd(*shape)}
    plan = run_both(g, ins)
    assert plan.launches == 1
    k = plan.kernels[0]
    assert k.anchor.op == "batch_norm_train"
    assert [n.op for n in k.body] == (["add", "relu"] if fused == "residual" else ["relu"])
    # only what is used leaves the kernel
    assert len(k.writes) == len(outputs.split())


def _bn_bwd_graph(op, shape, chain: str, outputs: str):
    """chain: gy as given, relu_bwd(gy, y), or relu_bwd(gy, y) + a residual gradient."""
    g = Graph("t")
    c = shape[1]
    gy = g.add_input("gy", TensorType(shape))
    yv = g.add_input("y", TensorType(shape))
    gres = g.add_input("gres", TensorType(shape))
    x = g.add_input("x", TensorType(shape))
    st = {n: g.add_input(n, TensorType((c,))) for n in ("w", "mean", "var")}
    b = Builder(g)
    grad = gy
    if chain != "plain":
        grad = b.emit1("relu_bwd", [gy, yv])
    if chain == "residual":
        grad = b.emit1("add", [grad, gres])
    gx, gw, gb = b.emit(op, [grad, x, st["w"], st["mean"], st["var"]], {"eps": 1e-4})
    vals = {"gx": gx, "gw": gw, "gb": gb}
    g.outputs = [vals[k] for k in outputs.split()]
    return g


def _bwd_inputs(shape, running: bool):
    c = shape[1]
    x = rnd(*shape) * 1.5 + 0.3
    mean, var = _stats(x)
    if running:                                   # eval: running statistics, not the batch's
        mean, var = mean + 0.2 * rnd(c), var * (1.0 + 0.5 * rnd(c).abs())
    return {"gy": rnd(*shape), "y": rnd(*shape), "gres": rnd(*shape), "x": x,
            "w": rnd(c), "mean": mean, "var": var}


@pytest.mark.parametrize("op", ["batch_norm_train_bwd", "batch_norm_eval_bwd"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("chain,outputs", [("relu", "gx gw gb"), ("residual", "gx gw gb"),
                                           ("plain", "gx"), ("relu", "gw gb"),
                                           ("plain", "gb"), ("relu", "gx gw")])
def test_batch_norm_backward(op, shape, chain, outputs):
    g = _bn_bwd_graph(op, shape, chain, outputs)
    ins = _bwd_inputs(shape, running=op == "batch_norm_eval_bwd")
    plan = run_both(g, ins)
    assert plan.launches == 1                     # the relu_bwd (and add) inlined in the load
    assert len(plan.inlined) == {"plain": 0, "relu": 1, "residual": 2}[chain]
    assert plan.kernels[0].anchor.op == op
    assert len(plan.kernels[0].writes) == len(outputs.split())


def test_batch_norm_eval_gradients_through_autodiff():
    shape = (3, 5, 7, 6)
    x = rnd(*shape)
    g = op_graph("batch_norm", [("N", 5, 7, 6)] + [(5,)] * 4, {"eps": 1e-5, "momentum": 0.1},
                 grad_wrt=(0, 1, 2))
    ins = {"x0": x, "x1": rnd(5), "x2": rnd(5), "x3": rnd(5), "x4": rnd(5).abs() + 0.5,
           "r": rnd(*shape)}
    plan = run_both(g, ins)
    assert any(k.anchor is not None and k.anchor.op == "batch_norm_eval_bwd"
               for k in plan.kernels)


# -- local response norm -------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 7, 5, 6), (2, 5, 9), (2, 3, 4, 3)])
@pytest.mark.parametrize("attrs", [
    {"size": 5, "alpha": 0.3, "beta": 0.6, "k": 1.5},
    {"size": 2, "alpha": 0.8, "beta": 1.3, "k": 0.7},     # even: one channel more before
    {"size": 1, "alpha": 0.5, "beta": 0.75, "k": 2.0},
    {"size": 9, "alpha": 1.1, "beta": 0.4, "k": 1.0},     # wider than the channels
])
def test_local_response_norm_and_backward(shape, attrs):
    g = op_graph("local_response_norm", [("N",) + shape[1:]], attrs, grad_wrt=(0,))
    x = 1.5 * rnd(*shape)
    plan = run_both(g, {"x0": x, "r": rnd(*shape)})
    ops = [k.anchor.op for k in plan.kernels if k.anchor is not None]
    assert ops == ["local_response_norm", "local_response_norm_bwd"]


@cpu_only
def test_local_response_norm_matches_torch_module():
    x = rnd(2, 6, 3, 4)
    g = op_graph("local_response_norm", [(2, 6, 3, 4)],
                 {"size": 4, "alpha": 0.5, "beta": 0.9, "k": 1.2})
    from dlc.runtime.triton_backend import TritonProgram
    (y,), _, _ = TritonProgram(g, training=False).run({}, {"x0": x})
    ref = torch.nn.LocalResponseNorm(4, alpha=0.5, beta=0.9, k=1.2)(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5)


# -- the block sizes the GPU autotuner may choose ------------------------------------------------

@pytest.mark.parametrize("op,shape,cfg", [
    ("batch_norm_train", (37, 45), {"BLOCK_C": 16, "BLOCK_M": 64}),
    ("batch_norm_train", (37, 45), {"BLOCK_C": 64, "BLOCK_M": 16}),
    ("batch_norm_train", (5, 3, 15, 15), {"BLOCK_M": 256}),
    ("batch_norm_train", (5, 3, 15, 15), {"BLOCK_M": 2048}),
    ("local_response_norm", (3, 7, 5, 6), {"BLOCK": 256}),
])
def test_tuned_block_sizes(op, shape, cfg, tmp_path, monkeypatch):
    """Every norm kernel of the graph (forward and backward) run with a configuration the
    tuner could pick, forced by offering it alone."""
    from dlc.runtime import autotune
    monkeypatch.setenv("DLC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("DLC_AUTOTUNE", "1")
    monkeypatch.setattr(autotune, "configs_of",
                        lambda k: [cfg] if k.family == "norm" else [])
    real = autotune._time
    monkeypatch.setattr(autotune, "_time", lambda fn, grid, args, dev, reps:
                        real(fn, grid, args, dev, 1))
    c = shape[1]
    if op == "batch_norm_train":
        g = op_graph(op, [shape, (c,), (c,)], {"eps": 1e-5}, grad_wrt=(0, 1, 2))
        ins = {"x0": rnd(*shape) + 3.0, "x1": rnd(c), "x2": rnd(c), "r": rnd(*shape)}
    else:
        g = op_graph(op, [shape], {"size": 3, "alpha": 0.4, "beta": 0.7, "k": 1.1},
                     grad_wrt=(0,))
        ins = {"x0": rnd(*shape), "r": rnd(*shape)}
    plan = run_both(g, ins)
    norm = [k for k in plan.kernels if k.family == "norm"]
    assert len(norm) == 2 and all(k.config == cfg for k in norm)

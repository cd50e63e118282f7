"""Helpers for kernel tests: run a graph on the Triton backend (under the interpreter) and
on the reference backend, and compare every output and state update.

On a GPU machine the same tests check the compiled kernels: `TRITON_INTERPRET=0
DLC_TEST_DEVICE=cuda pytest tests/kernels` (benchmarks/gpu_check.sh does this); both
backends then run on the GPU, with TF32 off so that float32 results compare."""
from __future__ import annotations

import os

import pytest
import torch

from dlc.compiler.autodiff import backward
from dlc.compiler.ir import Graph, TensorType
from dlc.compiler.ops import Builder
from dlc.compiler.kernels import bind_inputs
from dlc.compiler.plan import make_plan
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.triton_backend import TritonProgram


DEVICE = os.environ.get("DLC_TEST_DEVICE", "cpu")
# tests that drive a program by hand on CPU tensors; run_both-based tests follow DEVICE
cpu_only = pytest.mark.skipif(DEVICE != "cpu", reason="written for CPU tensors")
if DEVICE.startswith("cuda"):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def op_graph(op: str, in_shapes: list[tuple], attrs: dict | None = None, *,
             grad_wrt: tuple[int, ...] = (), dtypes: tuple[str, ...] = ()) -> Graph:
    """x0, x1, ... -> op -> y (and, for `grad_wrt`, the gradients of sum(y * r) with respect
    to those inputs, computed by dlc's autodiff: r is an extra input `r`)."""
    g = Graph("t")
    xs = [g.add_input(f"x{i}", TensorType(tuple(s), dtypes[i] if i < len(dtypes) else "f32"))
          for i, s in enumerate(in_shapes)]
    b = Builder(g)
    outs = b.emit(op, xs, attrs or {})
    g.outputs = list(outs)
    if grad_wrt:
        r = g.add_input("r", outs[0].type)
        obj = b.emit1("mul", [outs[0], r])
        grads = backward(g, obj, [xs[i] for i in grad_wrt])
        g.outputs += [grads[id(xs[i])] for i in grad_wrt]
    return g


def run_both(g: Graph, inputs: dict, state: dict | None = None, *, training: bool = False,
             rtol: float = 1e-5, atol: float = 1e-5, seed: int = 0, outputs: list | None = None):
    """Run g on both backends and assert every output and update agree; returns the plan
    (and appends the Triton backend's outputs, on the CPU, to `outputs` if given)."""
    state = {k: v.to(DEVICE) for k, v in (state or {}).items()}
    inputs = {k: v.to(DEVICE) for k, v in inputs.items()}
    ref_out, ref_upd, _ = ReferenceProgram(g, training=training, seed=seed,
                                           device=DEVICE).run(
        {k: v.clone() for k, v in state.items()}, inputs)
    prog = TritonProgram(g, training=training, seed=seed, device=DEVICE)
    tri_out, tri_upd, _ = prog.run({k: v.clone() for k, v in state.items()}, inputs)
    for i, (a, r) in enumerate(zip(tri_out, ref_out)):
        torch.testing.assert_close(a, r, rtol=rtol, atol=atol, msg=lambda m: f"output {i}: {m}")
    if outputs is not None:
        outputs.extend(a.cpu() for a in tri_out)
    for name, r in ref_upd.items():
        torch.testing.assert_close(tri_upd[name], r, rtol=rtol, atol=atol,
                                   msg=lambda m: f"update @{name}: {m}")
    return prog.compiled({k: tuple(v.shape) for k, v in inputs.items()}).plan


def plan_of(g: Graph, inputs: dict, training: bool = False):
    return make_plan(g, bind_inputs(g, {k: tuple(v.shape) for k, v in inputs.items()}),
                     training=training)

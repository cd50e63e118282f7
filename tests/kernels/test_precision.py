"""`precision bf16`: matmul and convolution operands in bf16 with float32 accumulation.
Under the interpreter the operands are rounded to bf16 and multiplied in float32, which
gives the same products; checked against torch on bf16-rounded operands."""
from __future__ import annotations

import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.emit import train_plan
from dlc.runtime.triton_backend import TritonProgram

from .kernel_check import DEVICE, op_graph

gen = torch.Generator().manual_seed(0)


def bf(t):
    return t.bfloat16().float()


def run(g, inputs):
    g.precision = "bf16"
    return TritonProgram(g, training=False, device=DEVICE).run({}, inputs)[0][0].cpu()


def test_linear_bf16_operands_fp32_accumulation():
    x, w, b = (torch.randn(37, 45, generator=gen), torch.randn(29, 45, generator=gen),
               torch.randn(29, generator=gen))
    got = run(op_graph("linear", [("N", 45), (29, 45), (29,)], {"out": 29, "bias": True}),
              {"x0": x, "x1": w, "x2": b})
    torch.testing.assert_close(got, F.linear(bf(x), bf(w), b), rtol=1e-5, atol=1e-5)
    assert (got - F.linear(x, w, b)).abs().max() > 1e-3        # it really is bf16


def test_conv_bf16():
    x, w = torch.randn(2, 3, 7, 9, generator=gen), torch.randn(5, 3, 3, 3, generator=gen)
    attrs = {"out": 5, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1],
             "dilation": [1, 1], "groups": 1, "bias": False}
    got = run(op_graph("conv2d", [("N", 3, 7, 9), (5, 3, 3, 3)], attrs), {"x0": x, "x1": w})
    torch.testing.assert_close(got, F.conv2d(bf(x), bf(w), padding=1), rtol=1e-5, atol=1e-5)


def test_precision_setting_reaches_the_gpu_source(tmp_path):
    src = ("model M {\n    input x: f32[64]\n    linear(32) -> relu -> linear(10)\n}\n"
           "train {\n    precision bf16\n}\n")
    path = tmp_path / "m.dls"
    path.write_text(src)
    spec = dlc.compile_spec(path)
    assert spec.config.precision == "bf16"
    module = train_plan(spec, 16).module
    assert "tl.dot(t1.to(tl.bfloat16)" in module or ".to(tl.bfloat16))" in module
    f32 = dlc.compile_spec(path, ["train.precision=f32"])
    assert "bfloat16" not in train_plan(f32, 16).module

"""The GPU's launch configurations (small blocks, many programs) under the interpreter:
the default interpreter plan takes the largest blocks, so program indexing across many
programs and tails at block edges are checked here with DLC_PLAN_TARGET=gpu."""
from __future__ import annotations

import pytest
import torch

from .kernel_check import op_graph, run_both

gen = torch.Generator().manual_seed(7)
POOL = {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1], "ceil": True}
CASES = [  # op, input shapes, attrs, grad_wrt
    ("relu", [("N", 3, 17, 19)], {}, (0,)),
    ("max_pool2d", [("N", 3, 17, 19)], POOL, (0,)),
    ("avg_pool2d", [("N", 3, 17, 19)], dict(POOL, count_include_pad=False), (0,)),
    ("linear", [("N", 70), (50, 70), (50,)], {"out": 50, "bias": True}, (0, 1, 2)),
    ("conv2d", [("N", 3, 11, 13), (20, 3, 3, 3)],
     {"out": 20, "kernel": [3, 3], "stride": [1, 1], "padding": [1, 1], "dilation": [1, 1],
      "groups": 1, "bias": False}, (0, 1)),
    ("softmax", [("N", 7, 20, 30)], {}, (0,)),
]


@pytest.mark.parametrize("op,shapes,attrs,wrt", CASES, ids=[c[0] for c in CASES])
def test_gpu_block_sizes(op, shapes, attrs, wrt, monkeypatch):
    monkeypatch.setenv("DLC_PLAN_TARGET", "gpu")
    g = op_graph(op, shapes, attrs, grad_wrt=wrt)
    concrete = [tuple(3 if d == "N" else d for d in s) for s in shapes]
    ins = {f"x{i}": torch.randn(*s, generator=gen) for i, s in enumerate(concrete)}
    ins["r"] = torch.randn(*[3 if d == "N" else d for d in g.outputs[0].type.shape],
                           generator=gen)
    plan = run_both(g, ins, rtol=1e-4, atol=1e-4)
    assert plan.target == "gpu" and max(k.grid[0] for k in plan.kernels) > 1

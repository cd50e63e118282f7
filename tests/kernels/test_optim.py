"""Every optimizer's fused multi-tensor update (one launch for all parameters) against the
reference backend's per-parameter updates, over three steps of a small network with
weights, biases and batch-norm scales; the running statistics' launch too."""
from __future__ import annotations

import pytest
import torch

import dlc
from dlc.compiler.pipeline import build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state
from dlc.runtime.triton_backend import TritonProgram

from .kernel_check import cpu_only

OPTIMIZERS = [
    "sgd(lr=0.1)", "sgd(lr=0.1, weight_decay=1e-2)", "sgd(lr=0.1, momentum=0.9)",
    "sgd(lr=0.05, momentum=0.5, nesterov=true, weight_decay=1e-2)",
    "sgd(lr=0.1, momentum=0.9, dampening=0.5)",
    "adam(lr=1e-2)", "adam(lr=1e-2, weight_decay=1e-2)",
    "adam(lr=2e-2, beta1=0.8, beta2=0.99, eps=1e-6)", "adamw(lr=1e-2, weight_decay=0.1)",
    "rmsprop", "rmsprop(lr=1e-3, alpha=0.9, eps=1e-6, weight_decay=1e-2)",
    "rmsprop(lr=1e-3, momentum=0.9, centered=true)",
    "adagrad", "adagrad(lr=0.1, lr_decay=0.05, initial_accumulator=0.1, weight_decay=1e-2)",
    "adadelta", "adadelta(lr=0.5, rho=0.8, eps=1e-5, weight_decay=1e-2)",
]

SPEC = """model M {{
    input x: f32[6]
    linear(5, bias=false) -> bn -> relu      # a bias before bn has a zero gradient
    linear(3)
}}
train {{
    optimizer {opt}
}}
"""


@pytest.mark.parametrize("opt", OPTIMIZERS)
@cpu_only
def test_fused_update_matches_reference(opt, tmp_path):
    path = tmp_path / "m.dls"
    path.write_text(SPEC.format(opt=opt))
    spec = dlc.compile_spec(path)
    g = build_train_graph(spec.graph, spec.config)
    gen = torch.Generator().manual_seed(0)
    ref_state = init_state(g, 0)
    tri_state = {k: v.clone() for k, v in ref_state.items()}
    ref, tri = ReferenceProgram(g, training=True), TritonProgram(g, training=True)
    for step in range(3):
        lr = spec.config.optimizer.args["lr"] * (1.0, 0.5, 2.0)[step]   # as a schedule would
        ins = {"x": torch.randn(7, 6, generator=gen),
               "y": torch.randint(0, 3, (7,), generator=gen), "lr": torch.tensor(lr)}
        _, ru, _ = ref.run(ref_state, ins)
        _, tu, _ = tri.run(tri_state, ins)
        ref_state.update(ru)
        tri_state.update(tu)
        for name, v in ru.items():
            torch.testing.assert_close(tu[name], v, rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"step {step + 1} @{name}: {m}")
    plan = tri.compiled({"x": (7, 6), "y": (7,), "lr": ()}).plan
    updates = [k for k in plan.kernels if k.multi or k.scalar_updates]
    assert len(updates) <= 2                          # all parameters + statistics + step
    assert sum(len(k.multi) for k in updates) == len([n for n in plan.nodes
                                                       if n.op.endswith("update")])

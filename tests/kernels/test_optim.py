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
    "momentum(lr=0.1)", "momentum(lr=0.1, beta=0.5, weight_decay=1e-2)", "nag(lr=0.1)",
    "nag(lr=0.05, beta=0.8, weight_decay=1e-2)",
    "adam(lr=1e-2, amsgrad=true)", "adamw(lr=1e-2, weight_decay=0.1, amsgrad=true)",
    "rmsprop(lr=1e-3, eps=1e-4, centered=true, eps_inside=true)",
    "adagrad(lr=0.1, eps=1e-3, eps_inside=true)",
]
# parameter groups and clipping: more than one update launch, a norm reduction before them
EXTRAS = [
    ("adamw(lr=1e-2, weight_decay=0.1)", 'params("*.bias", weight_decay=0)\n'
     '    params(norms, lr=3e-2, beta1=0.8)'),
    ("sgd(lr=0.1, momentum=0.9)", "clip norm(0.05)"),
    ("nag(lr=0.1)", "clip norm(0.05)\n    params(\"linear1.*\", lr=0.01)"),
    ("adam(lr=1e-2)", "clip value(1e-3)"),
    ("momentum(lr=0.1)", "clip value(1e-3)"),
]

SPEC = """model M {{
    input x: f32[6]
    linear(5, bias=false) -> bn -> relu      # a bias before bn has a zero gradient
    linear(3)
}}
train {{
    optimizer {opt}
    {extra}
}}
"""


def _three_steps(tmp_path, opt, extra="", beta2_check=False):
    """Three steps on both backends; the Triton plan."""
    path = tmp_path / "m.dls"
    path.write_text(SPEC.format(opt=opt, extra=extra))
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
        before = {k: v.clone() for k, v in tri_state.items()}   # the backend updates in place
        _, tu, _ = tri.run(tri_state, ins)
        for name, v in ru.items():
            torch.testing.assert_close(tu[name], v, rtol=1e-4, atol=1e-5,
                                       msg=lambda m: f"step {step + 1} @{name}: {m}")
            if beta2_check and name in g.grads:      # the step itself, relatively
                torch.testing.assert_close(tu[name] - before[name], v - ref_state[name],
                                           rtol=2e-5, atol=1e-9,
                                           msg=lambda m: f"step {step + 1} Δ{name}: {m}")
        ref_state.update(ru)
        tri_state.update(tu)
    return g, tri.compiled({"x": (7, 6), "y": (7,), "lr": ()}).plan


@pytest.mark.parametrize("opt", OPTIMIZERS)
@cpu_only
def test_fused_update_matches_reference(opt, tmp_path):
    g, plan = _three_steps(tmp_path, opt)
    updates = [k for k in plan.kernels if k.multi or k.scalar_updates]
    assert len(updates) <= 2                          # all parameters + statistics + step
    assert sum(len(k.multi) for k in updates) == len([n for n in plan.nodes
                                                       if n.op.endswith("update")])


@pytest.mark.parametrize("opt,extra", EXTRAS, ids=[f"{o} {e}" for o, e in EXTRAS])
@cpu_only
def test_groups_and_clipping_match_reference(opt, extra, tmp_path):
    g, plan = _three_steps(tmp_path, opt, extra)
    attrs = {tuple(sorted(n.attrs)) for n in plan.nodes if n.op.endswith("update")}
    assert attrs, "updates are planned"
    if "clip norm" in extra:
        assert any(n.op == "clip_factor" for n in plan.nodes)


@cpu_only
def test_adam_bias_correction_in_float32_kernels(tmp_path):
    """beta2 = 0.9999: 1 - beta2^t formed as 1 - exp(...) in float32 would be 1.7e-4 off,
    relatively; the kernel's expm1 form keeps each step's update within 2e-5 of the
    reference's float64 bias corrections."""
    _three_steps(tmp_path, "adam(lr=1e-2, beta1=0.99, beta2=0.9999, eps=1e-12)",
                 beta2_check=True)

"""Parameter-norm penalties: the train graph's gradients against torch.autograd of
loss + strength * sum(w^2) (or sum |w|) over the weights, and no penalty in evaluation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.pipeline import build_eval_graph, build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state

SPEC = """
model M {{
    input x: f32[5]
    linear(4) -> tanh -> linear(3)
}}
train {{
    optimizer sgd(lr=0.1)
    penalty {penalty}
}}
"""


def torch_loss(p, x, y, kind, strength):
    h = torch.tanh(F.linear(x, p["linear1.weight"], p["linear1.bias"]))
    loss = F.cross_entropy(F.linear(h, p["linear2.weight"], p["linear2.bias"]), y)
    norm = (lambda w: (w * w).sum()) if kind == "l2" else (lambda w: w.abs().sum())
    return loss + strength * (norm(p["linear1.weight"]) + norm(p["linear2.weight"]))


@pytest.mark.parametrize("kind, strength", [("l2", 0.05), ("l1", 0.02)])
def test_penalty_gradients_match_autograd(tmp_path, kind, strength):
    (tmp_path / "m.dls").write_text(SPEC.format(penalty=f"{kind}({strength})"))
    spec = dlc.compile_spec(tmp_path / "m.dls")
    g = build_train_graph(spec.graph, spec.config)
    state = init_state(g, seed=3)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 5, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    names = list(g.grads)
    (loss, *_), _, grads = ReferenceProgram(g, training=True).run(
        state, {"x": x, "y": y, "lr": torch.tensor(0.1)}, fetch=[g.grads[n] for n in names])
    params = {n: state[n].clone().requires_grad_() for n in names}
    expect = torch_loss(params, x, y, kind, strength)
    torch.testing.assert_close(loss, expect.detach(), rtol=1e-5, atol=1e-6)
    for n, got, want in zip(names, grads, torch.autograd.grad(expect, list(params.values()))):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=lambda m: f"{n}: {m}")


def test_penalty_touches_weights_only_and_not_evaluation(tmp_path):
    (tmp_path / "m.dls").write_text(SPEC.format(penalty="l2(1.0)"))
    spec = dlc.compile_spec(tmp_path / "m.dls")
    train = build_train_graph(spec.graph, spec.config)
    penalized = [n.inputs[0].state.name for n in train.nodes if n.op == "l2_penalty"]
    assert penalized == ["linear1.weight", "linear2.weight"]
    assert not any(n.op == "l2_penalty" for n in build_eval_graph(spec.graph, spec.config).nodes)


def test_negative_strength_is_refused(tmp_path):
    (tmp_path / "m.dls").write_text(SPEC.format(penalty="l1(-1)"))
    with pytest.raises(dlc.spec.diagnostics.UserError, match="must not be negative"):
        dlc.compile_spec(tmp_path / "m.dls")

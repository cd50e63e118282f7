"""The train graph's mixup/cutmix loss and weight noise, against torch.autograd.

A mixed batch's loss is λ·CE(z, y_a) + (1 − λ)·CE(z, y_b) (with label smoothing in each
term); weight noise reads every weight as w + ε in the forward pass while the gradient is
taken with respect to the clean w. Both are checked in float64 on the reference backend
against the same network written directly in PyTorch."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.pipeline import TRAIN, PassContext, build_train_graph, run
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state

SPEC = """model Net {{
    input x: f32[6]
    linear(5) -> tanh -> linear(4)
}}
train {{
    loss cross_entropy(label_smoothing={ls})
    {extra}
}}
"""
GEN = torch.Generator().manual_seed(0)


def compile_text(tmp_path, ls=0.0, extra=""):
    path = tmp_path / "net.dls"
    path.write_text(SPEC.format(ls=ls, extra=extra))
    return dlc.compile_spec(path)


def grad_graph(spec):
    """The train graph up to autodiff (no optimizer): outputs loss, logits, then d loss / d
    each parameter, then every gaussian_noise draw."""
    passes = [p for p in TRAIN if p[0] not in ("optimizer", "dce", "verify")]
    ctx = PassContext(spec.config, "Net.grads", training=True)
    g = run(passes, spec.graph, ctx)
    names = [p.state.name for p in ctx.params]
    noise = [n for n in g.nodes if n.op == "gaussian_noise"]
    g.outputs = [*g.outputs, *(g.grads[k] for k in names), *(n.outputs[0] for n in noise)]
    return g, names, [n.inputs[0].state.name for n in noise]


def f64_state(g):
    return {k: v.double() for k, v in init_state(g, 0, "cpu").items()}


def torch_net(state, x, noise=None):
    noise = noise or {}
    w1 = state["linear1.weight"] + noise.get("linear1.weight", 0)
    w2 = state["linear2.weight"] + noise.get("linear2.weight", 0)
    return F.linear(torch.tanh(F.linear(x, w1, state["linear1.bias"])), w2, state["linear2.bias"])


@pytest.mark.parametrize("ls", [0.0, 0.1])
@pytest.mark.parametrize("mixer", ["mixup(0.4)", "cutmix(1.0)"])
def test_mixed_loss_and_gradients_match_autograd(tmp_path, ls, mixer):
    spec = compile_text(tmp_path, ls, f"augment {mixer}")
    g, names, _ = grad_graph(spec)
    assert [v.input_name for v in g.inputs] == ["x", "y", "y_b", "lam_a", "lam_b"]
    state = f64_state(g)
    x = torch.randn(7, 6, generator=GEN, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=GEN)
    y_b = y[torch.randperm(7, generator=GEN)]
    lam = 0.3
    inputs = {"x": x, "y": y, "y_b": y_b, "lam_a": torch.tensor(lam, dtype=torch.float64),
              "lam_b": torch.tensor(1 - lam, dtype=torch.float64)}
    (loss, logits, *grads), _, _ = ReferenceProgram(g, training=True).run(state, inputs)

    leaves = {k: v.clone().requires_grad_(k in names) for k, v in state.items()}
    z = torch_net(leaves, x)
    want = lam * F.cross_entropy(z, y, label_smoothing=ls) + \
        (1 - lam) * F.cross_entropy(z, y_b, label_smoothing=ls)
    want_grads = torch.autograd.grad(want, [leaves[k] for k in names])
    torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(logits, z.detach(), rtol=1e-12, atol=1e-12)
    for k, got, exp in zip(names, grads, want_grads):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12, msg=k)


def test_lambda_one_is_the_plain_loss(tmp_path):
    mixed, plain = compile_text(tmp_path, 0.1, "augment mixup(0.2)"), compile_text(tmp_path, 0.1)
    g_mix, _, _ = grad_graph(mixed)
    g_plain, _, _ = grad_graph(plain)
    state = f64_state(g_plain)
    x = torch.randn(5, 6, generator=GEN, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=GEN)
    one, zero = torch.tensor(1.0, dtype=torch.float64), torch.tensor(0.0, dtype=torch.float64)
    got, _, _ = ReferenceProgram(g_mix, training=True).run(
        state, {"x": x, "y": y, "y_b": y.flip(0), "lam_a": one, "lam_b": zero})
    want, _, _ = ReferenceProgram(g_plain, training=True).run(state, {"x": x, "y": y})
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_eval_and_regression_graphs_have_no_mixing_inputs(tmp_path):
    spec = compile_text(tmp_path, 0.0, "augment mixup(0.2)")
    from dlc.compiler.pipeline import build_eval_graph
    assert [v.input_name for v in build_eval_graph(spec.graph, spec.config).inputs] == ["x", "y"]
    path = tmp_path / "reg.dls"
    path.write_text("model R {\n    input x: f32[6]\n    linear(2)\n}\n"
                    "train {\n    loss mse\n    augment mixup(0.2)\n}\n")
    reg = dlc.compile_spec(path)        # regression targets are mixed in the loop, not the graph
    assert [v.input_name for v in build_train_graph(reg.graph, reg.config).inputs] == \
        ["x", "y", "lr"]


def test_weight_noise_gradient_is_autograd_at_the_noisy_weights(tmp_path):
    spec = compile_text(tmp_path, 0.1, "weight_noise 0.05")
    g, names, noisy = grad_graph(spec)
    assert noisy == ["linear1.weight", "linear2.weight"]       # weights, not biases
    state = f64_state(g)
    x = torch.randn(9, 6, generator=GEN, dtype=torch.float64)
    y = torch.randint(0, 4, (9,), generator=GEN)
    (loss, logits, *rest), _, _ = ReferenceProgram(g, training=True, seed=5).run(
        state, {"x": x, "y": y})
    grads, eps = rest[:len(names)], dict(zip(noisy, rest[len(names):]))
    for k, e in eps.items():
        assert e.shape == state[k].shape and 0.03 < float(e.std()) < 0.07

    leaves = {k: v.clone().requires_grad_(k in names) for k, v in state.items()}
    z = torch_net(leaves, x, eps)
    want = F.cross_entropy(z, y, label_smoothing=0.1)
    want_grads = torch.autograd.grad(want, [leaves[k] for k in names])
    torch.testing.assert_close(loss, want.detach(), rtol=1e-12, atol=1e-12)
    for k, got, exp in zip(names, grads, want_grads):
        torch.testing.assert_close(got, exp, rtol=1e-10, atol=1e-12, msg=k)
    clean = torch_net(state, x)
    assert not torch.allclose(logits, clean)                   # the forward saw the noise


def test_weight_noise_is_fresh_each_step_and_seeded(tmp_path):
    spec = compile_text(tmp_path, 0.0, "weight_noise 0.05")
    g, _, _ = grad_graph(spec)
    state = f64_state(g)
    x = torch.randn(3, 6, generator=GEN, dtype=torch.float64)
    inputs = {"x": x, "y": torch.tensor([0, 1, 2])}

    def draws(seed, steps=2):
        prog = ReferenceProgram(g, training=True, seed=seed)
        return [prog.run(state, inputs)[0][-1] for _ in range(steps)]
    a, b = draws(1), draws(1)
    torch.testing.assert_close(a[0], b[0], rtol=0, atol=0)
    torch.testing.assert_close(a[1], b[1], rtol=0, atol=0)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], draws(2)[0])


def test_weight_noise_keeps_the_update_on_the_clean_weight(tmp_path):
    """The optimizer, the penalty and the eval graph see w itself; std 0 adds nothing."""
    spec = compile_text(tmp_path, 0.0, "weight_noise 0.05\n    penalty l2(1e-3)")
    g = build_train_graph(spec.graph, spec.config)
    noise = {id(n.outputs[0]) for n in g.nodes if n.op == "gaussian_noise"}
    noisy = {id(n.outputs[0]) for n in g.nodes
             if n.op == "add" and any(id(v) in noise for v in n.inputs)}
    for n in g.nodes:
        if n.op in ("sgd_update", "l2_penalty"):
            assert n.inputs[0].state is not None and id(n.inputs[0]) not in noisy
    plain = compile_text(tmp_path, 0.0, "weight_noise 0.0")
    assert all(n.op != "gaussian_noise" for n in build_train_graph(plain.graph, plain.config).nodes)

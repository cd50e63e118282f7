"""Optimizers through the train graph: five steps of a small MLP against torch.optim on a torch
copy with the same weights and batches, and one step against the seed notes' equations
written out here in numpy (momentum v = beta*v + g; Adam with bias correction; AdamW's
decoupled decay).  With momentum the first step sets the buffer to the gradient, as torch does,
so dampening is compared too."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.pipeline import build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state

MLP = """
model Mlp {{
    input x: f32[6]
    linear(8) -> tanh
    linear(5) -> relu
    linear(3)
}}
train {{
    loss      cross_entropy
    optimizer {optimizer}
}}
"""
PARAMS = [f"linear{i}.{k}" for i in (1, 2, 3) for k in ("weight", "bias")]
STEPS = 5

# (dlc optimizer, torch.optim class, torch keyword arguments — written independently)
CASES = [
    ("sgd(lr=0.1)", torch.optim.SGD, dict(lr=0.1)),
    ("sgd(lr=0.1, momentum=0.9)", torch.optim.SGD, dict(lr=0.1, momentum=0.9)),
    ("sgd(lr=0.1, momentum=0.9, nesterov=true)", torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, nesterov=True)),
    ("sgd(lr=0.1, weight_decay=1e-2)", torch.optim.SGD, dict(lr=0.1, weight_decay=1e-2)),
    ("sgd(lr=0.1, momentum=0.9, weight_decay=1e-2)", torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, weight_decay=1e-2)),
    ("sgd(lr=0.05, momentum=0.5, nesterov=true, weight_decay=1e-2)", torch.optim.SGD,
     dict(lr=0.05, momentum=0.5, nesterov=True, weight_decay=1e-2)),
    ("sgd(lr=0.1, momentum=0.9, dampening=0.5)", torch.optim.SGD,
     dict(lr=0.1, momentum=0.9, dampening=0.5)),
    ("adam(lr=1e-2)", torch.optim.Adam, dict(lr=1e-2)),
    ("adam", torch.optim.Adam, dict()),                                    # defaults agree
    ("adam(lr=1e-2, weight_decay=1e-2)", torch.optim.Adam, dict(lr=1e-2, weight_decay=1e-2)),
    ("adam(lr=2e-2, beta1=0.8, beta2=0.99, eps=1e-6)", torch.optim.Adam,
     dict(lr=2e-2, betas=(0.8, 0.99), eps=1e-6)),
    ("adamw(lr=1e-2)", torch.optim.AdamW, dict(lr=1e-2)),                 # wd default 1e-2
    ("adamw(lr=1e-2, weight_decay=0.1)", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    ("adamw(lr=1e-2, weight_decay=0)", torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.0)),
    ("rmsprop", torch.optim.RMSprop, dict(lr=0.01)),
    ("rmsprop(lr=1e-3, alpha=0.9, eps=1e-6, weight_decay=1e-2)", torch.optim.RMSprop,
     dict(lr=1e-3, alpha=0.9, eps=1e-6, weight_decay=1e-2)),
    ("rmsprop(lr=1e-3, momentum=0.9, centered=true)", torch.optim.RMSprop,
     dict(lr=1e-3, momentum=0.9, centered=True)),
    ("adagrad", torch.optim.Adagrad, dict(lr=0.01)),
    ("adagrad(lr=0.1, lr_decay=0.05, initial_accumulator=0.1, weight_decay=1e-2)",
     torch.optim.Adagrad, dict(lr=0.1, lr_decay=0.05, initial_accumulator_value=0.1,
                               weight_decay=1e-2)),
    ("adadelta", torch.optim.Adadelta, dict(lr=1.0)),
    ("adadelta(lr=0.5, rho=0.8, eps=1e-5, weight_decay=1e-2)", torch.optim.Adadelta,
     dict(lr=0.5, rho=0.8, eps=1e-5, weight_decay=1e-2)),
]

# torch.optim state key -> dlc slot suffix
SLOTS = {"momentum_buffer": "momentum", "exp_avg": "adam_m", "exp_avg_sq": "adam_v",
         "square_avg": "square_avg", "grad_avg": "grad_avg", "sum": "sum",
         "acc_delta": "acc_delta"}


def compile_mlp(tmp_path, optimizer: str):
    path = tmp_path / "mlp.dls"
    path.write_text(MLP.format(optimizer=optimizer))
    spec = dlc.compile_spec(path)
    return build_train_graph(spec.graph, spec.config), spec


def batches(n=STEPS, size=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=gen), torch.randint(0, 3, (size,), generator=gen))
            for _ in range(n)]


def torch_forward(p, x):
    h = torch.tanh(F.linear(x, p["linear1.weight"], p["linear1.bias"]))
    h = F.relu(F.linear(h, p["linear2.weight"], p["linear2.bias"]))
    return F.linear(h, p["linear3.weight"], p["linear3.bias"])


@pytest.mark.parametrize("optimizer,cls,kwargs", CASES, ids=[c[0] for c in CASES])
def test_five_steps_match_torch_optim(tmp_path, optimizer, cls, kwargs):
    train, spec = compile_mlp(tmp_path, optimizer)
    lr = spec.config.optimizer.args["lr"]
    assert lr == kwargs.get("lr", 1e-3)
    state = init_state(train, seed=0)
    params = {n: torch.nn.Parameter(state[n].clone()) for n in PARAMS}
    opt = cls(list(params.values()), **kwargs)
    prog = ReferenceProgram(train, training=True)
    for step, (x, y) in enumerate(batches()):
        outs, updates, _ = prog.run(state, {"x": x, "y": y, "lr": torch.tensor(lr)})
        state = {**state, **updates}
        opt.zero_grad()
        loss = F.cross_entropy(torch_forward(params, x), y)
        loss.backward()
        opt.step()
        torch.testing.assert_close(outs[0], loss.detach(), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"loss at step {step + 1}: {m}")
    for name, p in params.items():
        torch.testing.assert_close(state[name], p.detach(), rtol=1e-5, atol=1e-6,
                                   msg=lambda m: f"{name} after {STEPS} steps: {m}")
        # centered RMSprop's sqrt(s - a^2) cancels digits: its slots agree to ~1e-5 only
        slot_rtol = 1e-4 if "centered" in optimizer else 1e-5
        for key, value in opt.state[p].items():
            if key in SLOTS:
                torch.testing.assert_close(state[f"{name}.{SLOTS[key]}"], value, rtol=slot_rtol,
                                           atol=1e-7, msg=lambda m: f"{name} {key}: {m}")
    compared = {k for p in params.values() for k in opt.state[p]} & set(SLOTS)
    assert compared or cls is torch.optim.SGD              # every stateful optimizer compared
    if cls in (torch.optim.Adam, torch.optim.AdamW, torch.optim.Adagrad):
        assert state["optimizer.step"].item() == STEPS


def test_changing_lr_input_is_used_each_step(tmp_path):
    """%lr is an input: a per-step learning rate (as a schedule feeds it) matches torch with
    param_groups' lr set before each step."""
    train, _ = compile_mlp(tmp_path, "adam(lr=1e-2)")
    state = init_state(train, seed=2)
    params = {n: torch.nn.Parameter(state[n].clone()) for n in PARAMS}
    opt = torch.optim.Adam(list(params.values()), lr=1e-2)
    prog = ReferenceProgram(train, training=True)
    for lr, (x, y) in zip([1e-2, 5e-3, 2e-2, 1e-3, 3e-2], batches(seed=3)):
        _, updates, _ = prog.run(state, {"x": x, "y": y, "lr": torch.tensor(lr)})
        state = {**state, **updates}
        opt.param_groups[0]["lr"] = lr
        opt.zero_grad()
        F.cross_entropy(torch_forward(params, x), y).backward()
        opt.step()
    for name, p in params.items():
        torch.testing.assert_close(state[name], p.detach(), rtol=1e-5, atol=1e-6)


# -- one step against the equations, written out in numpy ------------------------------------------

def np_sgd(w, g, v, lr, beta, nesterov, wd):
    g = g + wd * w                       # L2 regularisation added to the gradient
    if not beta:
        return w - lr * g, None
    v = beta * v + g                     # v_t = beta v_{t-1} + g_t
    d = g + beta * v if nesterov else v
    return w - lr * d, v


def np_adam(w, g, m, v, t, lr, b1, b2, eps, wd, decoupled):
    if decoupled:
        w = w - lr * wd * w              # AdamW: decay the weights, not the gradient
    else:
        g = g + wd * w
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g ** 2
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    return w - lr * m_hat / (np.sqrt(v_hat) + eps), m, v


EQUATION_CASES = [
    ("sgd(lr=0.1)", dict(beta=0.0, nesterov=False, wd=0.0)),
    ("sgd(lr=0.1, weight_decay=0.05)", dict(beta=0.0, nesterov=False, wd=0.05)),
    ("sgd(lr=0.1, momentum=0.9)", dict(beta=0.9, nesterov=False, wd=0.0)),
    ("sgd(lr=0.1, momentum=0.9, nesterov=true)", dict(beta=0.9, nesterov=True, wd=0.0)),
    ("sgd(lr=0.1, momentum=0.8, nesterov=true, weight_decay=0.05)",
     dict(beta=0.8, nesterov=True, wd=0.05)),
    ("adam(lr=1e-2)", dict(b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False)),
    ("adam(lr=1e-2, beta1=0.5, beta2=0.9, eps=1e-3, weight_decay=0.1)",
     dict(b1=0.5, b2=0.9, eps=1e-3, wd=0.1, decoupled=False)),
    ("adamw(lr=1e-2, weight_decay=0.1)", dict(b1=0.9, b2=0.999, eps=1e-8, wd=0.1,
                                              decoupled=True)),
]


@pytest.mark.parametrize("optimizer,hp", EQUATION_CASES, ids=[c[0] for c in EQUATION_CASES])
def test_one_step_matches_the_equations(tmp_path, optimizer, hp):
    """From non-zero slots (a step in the middle of training), so every term counts."""
    train, spec = compile_mlp(tmp_path, optimizer)
    lr = spec.config.optimizer.args["lr"]
    state = init_state(train, seed=1)
    gen = torch.Generator().manual_seed(11)
    t_prev = 3
    for name, v in train.state.items():
        if name.endswith(".momentum") or name.endswith(".adam_m"):
            state[name] = 0.1 * torch.randn(v.type.shape, generator=gen)
        elif name.endswith(".adam_v"):
            state[name] = 1e-3 * torch.rand(v.type.shape, generator=gen)
        elif name == "optimizer.step":
            state[name] = torch.tensor(float(t_prev))
    (x, y), = batches(1, seed=5)
    names = list(train.grads)
    assert sorted(names) == sorted(PARAMS)
    _, updates, grads = ReferenceProgram(train, training=True).run(
        state, {"x": x, "y": y, "lr": torch.tensor(lr)}, fetch=[train.grads[n] for n in names])
    for name, g in zip(names, grads):
        w = state[name].double().numpy()
        g = g.double().numpy()
        if spec.config.optimizer.name == "sgd":
            slot = f"{name}.momentum"
            v = state[slot].double().numpy() if slot in state else None
            w_new, v_new = np_sgd(w, g, v, lr, **hp)
            if v_new is not None:
                np.testing.assert_allclose(updates[slot].numpy(), v_new, rtol=1e-5, atol=1e-7)
            else:
                assert slot not in train.state
        else:
            m, v = state[f"{name}.adam_m"].double().numpy(), state[f"{name}.adam_v"].double().numpy()
            w_new, m_new, v_new = np_adam(w, g, m, v, t_prev + 1, lr, **hp)
            np.testing.assert_allclose(updates[f"{name}.adam_m"].numpy(), m_new, rtol=1e-5,
                                       atol=1e-8)
            np.testing.assert_allclose(updates[f"{name}.adam_v"].numpy(), v_new, rtol=1e-5,
                                       atol=1e-10)
        # dlc keeps the step count as an f32 state and forms 1 - beta^t in f32: for small t that
        # is ~2e-5 off in relative terms (torch.optim.Adam uses a Python float), so the weight
        # check allows 1e-4 of lr on top of f32 rounding.
        atol = 1e-7 if spec.config.optimizer.name == "sgd" else 1e-4 * lr
        np.testing.assert_allclose(updates[name].numpy(), w_new, rtol=1e-5, atol=atol,
                                   err_msg=f"{optimizer}: {name}")
    if spec.config.optimizer.name != "sgd":
        assert updates["optimizer.step"].item() == t_prev + 1


def test_first_momentum_step_is_plain_sgd(tmp_path):
    """Buffers start at zero, so buf_1 = g and the first step is w - lr*g (torch's rule too)."""
    train, _ = compile_mlp(tmp_path, "sgd(lr=0.1, momentum=0.9)")
    state = init_state(train, seed=0)
    assert all(torch.count_nonzero(state[f"{n}.momentum"]) == 0 for n in PARAMS)
    (x, y), = batches(1)
    names = list(train.grads)
    _, updates, grads = ReferenceProgram(train, training=True).run(
        state, {"x": x, "y": y, "lr": torch.tensor(0.1)}, fetch=[train.grads[n] for n in names])
    for name, g in zip(names, grads):
        torch.testing.assert_close(updates[f"{name}.momentum"], g)
        torch.testing.assert_close(updates[name], state[name] - 0.1 * g)

"""Optimizers over many steps, through the Python API on the reference backend:

- every torch-form optimizer (sgd, adam/adamw with and without amsgrad, rmsprop, adagrad,
  adadelta) against torch.optim over 100 steps with random hyper-parameters: in float64 to a
  relative error of 1e-10, and in float32 within the fp32 noise (no more than a few times
  torch's own float32 distance from float64);
- parameter groups against torch.optim's param_groups, and gradient clipping against
  torch.nn.utils.clip_grad_norm_ / clip_grad_value_ (float64, 1e-10);
- the notes' forms (momentum, nag, Adagrad and RMSprop with eps inside the square root)
  against a literal NumPy transcription of the notes' equations, on a linear model whose
  gradient is written out in NumPy too.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import dlc
from dlc.compiler.pipeline import build_train_graph
from dlc.runtime.reference import ReferenceProgram
from dlc.runtime.state import init_state
from test_optimizers import MLP as BASE_MLP                 # tests/runtime, on sys.path
from test_optimizers import PARAMS, torch_forward



class MLP:
    """test_optimizers.py's MLP (the same torch_forward), with more train settings."""

    @staticmethod
    def format(optimizer: str, extra: str) -> str:
        return BASE_MLP.format(optimizer=optimizer).rstrip()[:-1] + extra + "}\n"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is fastest, above all on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


STEPS = 100


def compile_spec(tmp_path, text: str):
    path = tmp_path / "m.dls"
    path.write_text(text)
    spec = dlc.compile_spec(path)
    return build_train_graph(spec.graph, spec.config), spec


def batches(n, size=8, seed=0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 6, generator=gen, dtype=dtype),
             torch.randint(0, 3, (size,), generator=gen)) for _ in range(n)]


def run_dlc(train, lr: float, dtype, data, factors=None) -> dict:
    """Parameters after one step per batch (at lr * factors[i]), state and inputs in
    `dtype`."""
    state = {k: v.to(dtype) if v.is_floating_point() else v
             for k, v in init_state(train, seed=0).items()}
    for name, v in train.state.items():            # constants exactly, not rounded to f32
        if v.state.init.startswith("constant("):
            state[name] = torch.full(state[name].shape, float(v.state.init[9:-1]), dtype=dtype)
    prog = ReferenceProgram(train, training=True)
    for i, (x, y) in enumerate(data):
        step_lr = lr if factors is None else lr * factors[i]
        _, updates, _ = prog.run(state, {"x": x.to(dtype), "y": y,
                                         "lr": torch.tensor(step_lr, dtype=dtype)})
        state.update(updates)
    return {n: state[n] for n in PARAMS}


def run_torch(train, dtype, data, make_opt, before_step=None, factors=None) -> dict:
    """torch.optim on a copy of the same initial weights and batches."""
    init = init_state(train, seed=0)
    params = {n: torch.nn.Parameter(init[n].to(dtype)) for n in PARAMS}
    opt = make_opt(params)
    base = [g["lr"] for g in opt.param_groups]
    for i, (x, y) in enumerate(data):
        if factors is not None:                      # as LambdaLR: each group's lr * factor
            for g, b in zip(opt.param_groups, base):
                g["lr"] = b * factors[i]
        opt.zero_grad()
        F.cross_entropy(torch_forward(params, x.to(dtype)), y).backward()
        if before_step is not None:
            before_step(list(params.values()))
        opt.step()
    return {n: p.detach() for n, p in params.items()}


def rel_err(a: dict, b: dict) -> float:
    return max(float((a[n].double() - b[n].double()).abs().max() / b[n].double().abs().max())
               for n in PARAMS)


def log_uniform(rng, lo, hi):
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi))))


def random_case(kind: str, seed: int) -> tuple[str, type, dict]:
    """(dlc optimizer, torch.optim class, torch keyword arguments) with random settings."""
    rng = np.random.default_rng(seed)
    wd = float(rng.choice([0.0, log_uniform(rng, 1e-4, 1e-1)]))
    if kind == "sgd":
        lr, mom = log_uniform(rng, 1e-3, 1e-1), float(rng.uniform(0.5, 0.95))
        nesterov = bool(rng.integers(2))
        damp = 0.0 if nesterov else float(rng.choice([0.0, rng.uniform(0, 0.5)]))
        return (f"sgd(lr={lr!r}, momentum={mom!r}, dampening={damp!r}, "
                f"nesterov={str(nesterov).lower()}, weight_decay={wd!r})", torch.optim.SGD,
                dict(lr=lr, momentum=mom, dampening=damp, nesterov=nesterov, weight_decay=wd))
    if kind.startswith("adam"):
        name, amsgrad = kind.split("-")[0], kind.endswith("amsgrad")
        lr, b1 = log_uniform(rng, 1e-4, 3e-2), float(rng.uniform(0.5, 0.95))
        b2, eps = float(1 - log_uniform(rng, 1e-4, 1e-1)), log_uniform(rng, 1e-10, 1e-4)
        cls = torch.optim.Adam if name == "adam" else torch.optim.AdamW
        return (f"{name}(lr={lr!r}, beta1={b1!r}, beta2={b2!r}, eps={eps!r}, "
                f"weight_decay={wd!r}, amsgrad={str(amsgrad).lower()})", cls,
                dict(lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd, amsgrad=amsgrad))
    if kind == "rmsprop":
        lr, alpha = log_uniform(rng, 1e-4, 1e-2), float(rng.uniform(0.8, 0.999))
        eps, mom = log_uniform(rng, 1e-8, 1e-4), float(rng.choice([0.0, rng.uniform(0.5, 0.9)]))
        centered = bool(rng.integers(2))
        return (f"rmsprop(lr={lr!r}, alpha={alpha!r}, eps={eps!r}, momentum={mom!r}, "
                f"centered={str(centered).lower()}, weight_decay={wd!r})", torch.optim.RMSprop,
                dict(lr=lr, alpha=alpha, eps=eps, momentum=mom, centered=centered,
                     weight_decay=wd))
    if kind == "adagrad":
        lr, decay = log_uniform(rng, 1e-3, 1e-1), float(rng.choice([0.0, rng.uniform(0, 0.05)]))
        eps, acc = log_uniform(rng, 1e-10, 1e-6), float(rng.choice([0.0, rng.uniform(0, 0.2)]))
        return (f"adagrad(lr={lr!r}, lr_decay={decay!r}, eps={eps!r}, "
                f"initial_accumulator={acc!r}, weight_decay={wd!r})", torch.optim.Adagrad,
                dict(lr=lr, lr_decay=decay, eps=eps, initial_accumulator_value=acc,
                     weight_decay=wd))
    lr, rho, eps = log_uniform(rng, 0.1, 1.0), float(rng.uniform(0.8, 0.99)), \
        log_uniform(rng, 1e-7, 1e-5)
    return (f"adadelta(lr={lr!r}, rho={rho!r}, eps={eps!r}, weight_decay={wd!r})",
            torch.optim.Adadelta, dict(lr=lr, rho=rho, eps=eps, weight_decay=wd))


KINDS = ["sgd", "adam", "adam-amsgrad", "adamw", "adamw-amsgrad", "rmsprop", "adagrad",
         "adadelta"]
CASES = [(k, s) for k in KINDS for s in (1, 2)]


@pytest.mark.parametrize("kind,seed", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_torch_forms_match_torch_optim_over_100_steps(tmp_path, kind, seed):
    optimizer, cls, kwargs = random_case(kind, seed)
    train, _ = compile_spec(tmp_path, MLP.format(optimizer=optimizer, extra=""))
    data = batches(STEPS, seed=seed)
    make = lambda p: cls(list(p.values()), **kwargs)                          # noqa: E731
    want64 = run_torch(train, torch.float64, data, make)
    got64 = run_dlc(train, kwargs["lr"], torch.float64, data)
    assert rel_err(got64, want64) <= 1e-10, optimizer
    # float32: dlc's distance from float64 torch is within a few times torch's own
    got32 = run_dlc(train, kwargs["lr"], torch.float32, data)
    want32 = run_torch(train, torch.float32, data, make)
    noise = rel_err(want32, want64)
    assert rel_err(got32, want64) <= 4 * noise + 1e-6, (optimizer, noise)


def test_adamw_bias_correction_is_not_formed_in_float32(tmp_path):
    """beta2 = 0.999: 1 - beta2^t in float32 is 1.3e-5 too small, relatively; formed in
    float64 as torch.optim does, dlc's float32 AdamW stays within torch's float32 noise."""
    optimizer = "adamw(lr=1e-2, beta2=0.999, weight_decay=0.1)"
    train, _ = compile_spec(tmp_path, MLP.format(optimizer=optimizer, extra=""))
    data = batches(STEPS, seed=5)
    make = lambda p: torch.optim.AdamW(list(p.values()), lr=1e-2, weight_decay=0.1)  # noqa
    want64 = run_torch(train, torch.float64, data, make)
    noise = rel_err(run_torch(train, torch.float32, data, make), want64)
    assert rel_err(run_dlc(train, 1e-2, torch.float32, data), want64) <= 2 * noise + 1e-7


# -- parameter groups and clipping against torch -------------------------------------------------

def test_param_groups_match_torch_param_groups(tmp_path):
    """No weight decay on biases, another lr (and beta1) for linear1, a per-step lr factor
    applied to every group as a schedule would."""
    extra = ('    params("*.bias", weight_decay=0)\n'
             '    params("linear1.*", lr=3e-3, beta1=0.8)\n')
    train, _ = compile_spec(tmp_path, MLP.format(optimizer="adamw(lr=1e-2, weight_decay=0.1)",
                                                 extra=extra))
    data = batches(STEPS, seed=7)
    factors = [0.5 + 0.5 * np.cos(np.pi * i / STEPS) + 1e-2 for i in range(STEPS)]

    def make(p):
        groups = [
            {"params": [p["linear1.weight"]], "lr": 3e-3, "betas": (0.8, 0.999)},
            {"params": [p["linear1.bias"]], "lr": 3e-3, "betas": (0.8, 0.999),
             "weight_decay": 0.0},
            {"params": [p["linear2.weight"], p["linear3.weight"]]},
            {"params": [p["linear2.bias"], p["linear3.bias"]], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=1e-2, weight_decay=0.1)
    want = run_torch(train, torch.float64, data, make, factors=factors)
    got = run_dlc(train, 1e-2, torch.float64, data, factors=factors)
    assert rel_err(got, want) <= 1e-10
    # and the groups change something: without them the result differs
    plain, _ = compile_spec(tmp_path, MLP.format(optimizer="adamw(lr=1e-2, weight_decay=0.1)",
                                                 extra=""))
    assert rel_err(run_dlc(plain, 1e-2, torch.float64, data, factors=factors), want) > 1e-4


@pytest.mark.parametrize("clip,torch_clip", [
    ("clip norm(0.5)", lambda ps: torch.nn.utils.clip_grad_norm_(ps, 0.5)),
    ("clip norm(max_norm=20.0)", lambda ps: torch.nn.utils.clip_grad_norm_(ps, 20.0)),
    ("clip value(0.02)", lambda ps: torch.nn.utils.clip_grad_value_(ps, 0.02)),
])
@pytest.mark.parametrize("opt,make", [
    ("sgd(lr=0.5, momentum=0.9, weight_decay=1e-3)",
     lambda p: torch.optim.SGD(list(p.values()), lr=0.5, momentum=0.9, weight_decay=1e-3)),
    ("adam(lr=1e-2)", lambda p: torch.optim.Adam(list(p.values()), lr=1e-2)),
])
def test_clipping_matches_torch_nn_utils(tmp_path, clip, torch_clip, opt, make):
    train, _ = compile_spec(tmp_path, MLP.format(optimizer=opt, extra=f"    {clip}\n"))
    data = batches(30, seed=3)
    lr = float(opt.split("lr=")[1].split(",")[0].rstrip(")"))
    want = run_torch(train, torch.float64, data, make, before_step=torch_clip)
    assert rel_err(run_dlc(train, lr, torch.float64, data), want) <= 1e-10
    unclipped = run_torch(train, torch.float64, data, make)
    if "20.0" not in clip:                       # a large max_norm leaves the gradients alone
        assert rel_err(unclipped, want) > 1e-6, "the clip must bite in this test"


# -- the notes' forms against the notes' equations in NumPy ---------------------------------------

LINEAR = """
model Lin {{
    input x: f32[6]
    linear(3)
}}
train {{
    loss mse
    optimizer {optimizer}
}}
"""


def np_grad(W, b, x, y):
    """∇J for J = mean((x W^T + b - y)^2), written out."""
    d = 2.0 * (x @ W.T + b - y) / y.size
    return d.T @ x, d.sum(axis=0)


def linear_run(tmp_path, optimizer, lrs, seed=0):
    """dlc's weights after len(lrs) steps (float64), with the batches and initial weights."""
    path = tmp_path / "lin.dls"
    path.write_text(LINEAR.format(optimizer=optimizer))
    spec = dlc.compile_spec(path)
    train = build_train_graph(spec.graph, spec.config)
    init = {k: v.double() for k, v in init_state(train, seed=0).items()}
    gen = torch.Generator().manual_seed(seed)
    data = [(torch.randn(10, 6, generator=gen, dtype=torch.float64),
             torch.randn(10, 3, generator=gen, dtype=torch.float64)) for _ in lrs]
    state = dict(init)
    prog = ReferenceProgram(train, training=True)
    for lr, (x, y) in zip(lrs, data):
        _, updates, _ = prog.run(state, {"x": x, "y": y, "lr": torch.tensor(lr,
                                                                            dtype=torch.float64)})
        state.update(updates)
    return state, init, [(x.numpy(), y.numpy()) for x, y in data]


LRS = [0.05 * (1 + 0.5 * np.sin(i)) for i in range(60)]       # a changing lr, as a schedule


@pytest.mark.parametrize("beta,wd", [(0.9, 0.0), (0.5, 0.0), (0.95, 0.01)])
def test_momentum_is_the_notes_equation(tmp_path, beta, wd):
    """v_t = β v_{t-1} + (1-β) ∇J(θ_t);  θ_{t+1} = θ_t - η v_t  (v_0 = 0)."""
    state, init, data = linear_run(tmp_path, f"momentum(lr=0.1, beta={beta}, weight_decay={wd})",
                                   LRS)
    W, b = init["linear1.weight"].numpy(), init["linear1.bias"].numpy()
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    for eta, (x, y) in zip(LRS, data):
        gW, gb = np_grad(W, b, x, y)
        gW, gb = gW + wd * W, gb + wd * b
        vW, vb = beta * vW + (1 - beta) * gW, beta * vb + (1 - beta) * gb
        W, b = W - eta * vW, b - eta * vb
    np.testing.assert_allclose(state["linear1.weight"].numpy(), W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state["linear1.bias"].numpy(), b, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state["linear1.weight.velocity"].numpy(), vW, rtol=1e-12,
                               atol=1e-14)


@pytest.mark.parametrize("beta", [0.9, 0.6])
def test_nag_is_the_notes_look_ahead_equation(tmp_path, beta):
    """v_t = β v_{t-1} + (1-β) ∇J(θ_t - η β v_{t-1});  θ_{t+1} = θ_t - η v_t: the gradient at
    the look-ahead point, with the step's own η."""
    state, init, data = linear_run(tmp_path, f"nag(lr=0.1, beta={beta})", LRS)
    W, b = init["linear1.weight"].numpy(), init["linear1.bias"].numpy()
    vW, vb = np.zeros_like(W), np.zeros_like(b)
    for eta, (x, y) in zip(LRS, data):
        gW, gb = np_grad(W - eta * beta * vW, b - eta * beta * vb, x, y)
        vW, vb = beta * vW + (1 - beta) * gW, beta * vb + (1 - beta) * gb
        W, b = W - eta * vW, b - eta * vb
    np.testing.assert_allclose(state["linear1.weight"].numpy(), W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state["linear1.bias"].numpy(), b, rtol=1e-12, atol=1e-14)
    # and it is not plain momentum: the look-ahead changes the result
    plain, _, _ = linear_run(tmp_path, f"momentum(lr=0.1, beta={beta})", LRS)
    assert np.abs(plain["linear1.weight"].numpy() - W).max() > 1e-6


def test_adagrad_eps_inside_is_the_notes_equation(tmp_path):
    """s_t = s_{t-1} + g_t^2;  θ_{t+1} = θ_t - η g_t / sqrt(s_t + ε)."""
    eps = 1e-3
    state, init, data = linear_run(tmp_path, f"adagrad(lr=0.1, eps={eps}, eps_inside=true)", LRS)
    W, b = init["linear1.weight"].numpy(), init["linear1.bias"].numpy()
    sW, sb = np.zeros_like(W), np.zeros_like(b)
    for eta, (x, y) in zip(LRS, data):
        gW, gb = np_grad(W, b, x, y)
        sW, sb = sW + gW ** 2, sb + gb ** 2
        W, b = W - eta / np.sqrt(sW + eps) * gW, b - eta / np.sqrt(sb + eps) * gb
    np.testing.assert_allclose(state["linear1.weight"].numpy(), W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state["linear1.bias"].numpy(), b, rtol=1e-12, atol=1e-14)


def test_rmsprop_eps_inside_is_the_notes_equation(tmp_path):
    """s_t = ρ s_{t-1} + (1-ρ) g_t^2;  θ_{t+1} = θ_t - η g_t / sqrt(s_t + ε)  (ρ is alpha)."""
    rho, eps = 0.9, 1e-4
    state, init, data = linear_run(
        tmp_path, f"rmsprop(lr=0.01, alpha={rho}, eps={eps}, eps_inside=true)", LRS)
    W, b = init["linear1.weight"].numpy(), init["linear1.bias"].numpy()
    sW, sb = np.zeros_like(W), np.zeros_like(b)
    for eta, (x, y) in zip(LRS, data):
        gW, gb = np_grad(W, b, x, y)
        sW, sb = rho * sW + (1 - rho) * gW ** 2, rho * sb + (1 - rho) * gb ** 2
        W, b = W - eta / np.sqrt(sW + eps) * gW, b - eta / np.sqrt(sb + eps) * gb
    np.testing.assert_allclose(state["linear1.weight"].numpy(), W, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(state["linear1.bias"].numpy(), b, rtol=1e-12, atol=1e-14)

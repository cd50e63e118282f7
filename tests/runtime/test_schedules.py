"""Learning-rate schedules (runtime/schedules.py) against torch.optim.lr_scheduler at integer
epochs — StepLR, ExponentialLR, CosineAnnealingLR(T_max=epochs, eta_min=min_lr) — and the
cosine warm-up against its documented formula, written out here."""
from __future__ import annotations

import math

import pytest
import torch

import dlc
from dlc.compiler.config import Call
from dlc.runtime.schedules import learning_rate


def torch_lrs(make_scheduler, base_lr: float, epochs: int) -> list[float]:
    """The lr torch uses in each epoch 0..epochs (scheduler.step() once per epoch)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(epochs + 1):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def dlc_lrs(call: Call, base_lr: float, epochs: int) -> list[float]:
    return [learning_rate(call, base_lr, e, epochs) for e in range(epochs + 1)]


def assert_lrs(got, want):
    assert len(got) == len(want)
    for e, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=1e-9, abs=1e-12), f"epoch {e}: {g} != {w}"


@pytest.mark.parametrize("base_lr", [0.1, 3e-4])
def test_constant(base_lr):
    assert dlc_lrs(Call("constant", {}), base_lr, 12) == [base_lr] * 13
    assert learning_rate(Call("constant", {}), base_lr, 4.37, 12) == base_lr


@pytest.mark.parametrize("every,gamma", [(1, 0.5), (3, 0.1), (4, 0.7), (10, 0.2)])
def test_step_matches_steplr(every, gamma):
    epochs = 17
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, every, gamma), 0.2, epochs)
    assert_lrs(dlc_lrs(Call("step", {"every": every, "gamma": gamma}), 0.2, epochs), want)


@pytest.mark.parametrize("gamma", [0.9, 0.5, 0.99])
def test_exponential_matches_exponentiallr(gamma):
    epochs = 15
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma), 0.05, epochs)
    assert_lrs(dlc_lrs(Call("exponential", {"gamma": gamma}), 0.05, epochs), want)


@pytest.mark.parametrize("epochs", [1, 5, 10, 30])
@pytest.mark.parametrize("min_lr", [0.0, 1e-3])
def test_cosine_matches_cosineannealinglr(epochs, min_lr):
    base = 0.1
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=epochs,
                                                                          eta_min=min_lr),
                     base, epochs)
    got = dlc_lrs(Call("cosine", {"warmup": 0, "min_lr": min_lr}), base, epochs)
    for e, (g, w) in enumerate(zip(got, want)):
        # torch's recursive form accumulates rounding; the closed form is exact
        assert g == pytest.approx(w, rel=1e-6, abs=1e-12), f"epoch {e}"
    assert got[0] == base and got[-1] == pytest.approx(min_lr, abs=1e-15)


def test_cosine_stays_at_min_lr_after_the_last_epoch():
    call = Call("cosine", {"warmup": 0, "min_lr": 0.01})
    assert learning_rate(call, 0.1, 12, 10) == pytest.approx(0.01)


def test_cosine_is_continuous_within_epochs():
    """The loop feeds fractional epochs (epoch - 1 + step/steps): the closed form holds there."""
    call = Call("cosine", {"warmup": 0, "min_lr": 0.0})
    for e in [0.25, 1.5, 3.75, 9.9]:
        want = 0.5 * 0.1 * (1 + math.cos(math.pi * e / 10))
        assert learning_rate(call, 0.1, e, 10) == pytest.approx(want, rel=1e-12)


def warmup_formula(base, epoch, warmup, epochs, min_lr):
    """Linear warm-up lr*(epoch+1)/(warmup+1) for epoch < warmup, then cosine annealing from
    lr to min_lr over the remaining epochs - warmup epochs."""
    if epoch < warmup:
        return base * (epoch + 1) / (warmup + 1)
    t = min((epoch - warmup) / max(1, epochs - warmup), 1.0)
    return min_lr + (base - min_lr) * (1 + math.cos(math.pi * t)) / 2


@pytest.mark.parametrize("warmup,epochs,min_lr", [(1, 5, 0.0), (2, 10, 0.0), (3, 8, 1e-3),
                                                  (5, 5, 0.0), (4, 20, 0.01)])
def test_cosine_warmup_formula(warmup, epochs, min_lr):
    call = Call("cosine", {"warmup": warmup, "min_lr": min_lr})
    base = 0.2
    points = [e / 4 for e in range(4 * epochs + 1)]          # integer and fractional epochs
    for e in points:
        got = learning_rate(call, base, e, epochs)
        assert got == pytest.approx(warmup_formula(base, e, warmup, epochs, min_lr), rel=1e-12,
                                    abs=1e-15), f"epoch {e}"
    ramp = [learning_rate(call, base, e, epochs) for e in points if e < warmup]
    assert ramp[0] == pytest.approx(base / (warmup + 1))
    assert all(a < b for a, b in zip(ramp, ramp[1:])), "warm-up must increase"
    assert max(ramp) < base
    assert learning_rate(call, base, warmup, epochs) == pytest.approx(base)   # peak after warm-up


def test_schedules_from_a_spec_have_torch_defaults(tmp_path):
    """The language's defaults: step's gamma is 0.1 (StepLR's), cosine has no warm-up and
    min_lr 0 (CosineAnnealingLR's eta_min)."""
    path = tmp_path / "m.dls"
    path.write_text("model M {\n    input x: f32[4]\n    linear(2)\n}\n"
                    "train {\n    optimizer sgd(lr=0.1)\n    epochs 9\n}\n")
    step = dlc.compile_spec(path, sets=["train.schedule=step(every=2)"]).config
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.StepLR(o, 2), 0.1, 9)
    assert_lrs(dlc_lrs(step.schedule, step.optimizer.args["lr"], step.epochs), want)
    cos = dlc.compile_spec(path, sets=["train.schedule=cosine"]).config
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=9), 0.1, 9)
    for g, w in zip(dlc_lrs(cos.schedule, 0.1, cos.epochs), want):
        assert g == pytest.approx(w, rel=1e-6, abs=1e-12)
    default = dlc.compile_spec(path).config
    assert default.schedule.name == "constant"


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError):
        learning_rate(Call("linear", {}), 0.1, 0, 10)

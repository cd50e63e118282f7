"""Learning-rate schedules (runtime/schedules.py) against torch.optim.lr_scheduler: StepLR,
MultiStepLR, ExponentialLR per epoch; CosineAnnealingLR(T_max=S-1, eta_min=min_lr) and
OneCycleLR per step; ReduceLROnPlateau on a metric sequence; warm-up of any schedule as
SequentialLR(LinearLR, ...); and the cosine warm-up against its formula, written out here."""
from __future__ import annotations

import math

import pytest
import torch

import dlc
from dlc.compiler.config import Call
from dlc.runtime.schedules import Schedule, learning_rate


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


def torch_step_lrs(make_scheduler, base_lr: float, total: int) -> list[float]:
    """The lr torch uses at each of `total` optimizer steps (scheduler.step() per step)."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    sched = make_scheduler(opt)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


def dlc_step_lrs(call: Call, base_lr: float, epochs: int, steps: int) -> list[float]:
    sched = Schedule(call, base_lr, epochs, steps)
    return [sched.lr(k) for k in range(epochs * steps)]


@pytest.mark.parametrize("epochs,steps", [(1, 7), (5, 1), (10, 3), (30, 2)])
@pytest.mark.parametrize("min_lr", [0.0, 1e-3])
def test_cosine_per_step_matches_cosineannealinglr(epochs, steps, min_lr):
    """Annealed per step over the S steps of the run: CosineAnnealingLR(T_max=S-1) stepped
    every batch, so the last step uses min_lr."""
    base, total = 0.1, epochs * steps
    want = torch_step_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(
        o, T_max=max(1, total - 1), eta_min=min_lr), base, total)
    got = dlc_step_lrs(Call("cosine", {"warmup": 0, "min_lr": min_lr}), base, epochs, steps)
    for k, (g, w) in enumerate(zip(got, want)):
        # torch's recursive form accumulates rounding; the closed form is exact
        assert g == pytest.approx(w, rel=1e-6, abs=1e-12), f"step {k}"
    assert got[0] == base
    if total > 1:
        assert got[-1] == pytest.approx(min_lr, abs=1e-15), "the last step must use min_lr"


def test_cosine_stays_at_min_lr_after_the_last_step():
    call = Call("cosine", {"warmup": 0, "min_lr": 0.01})
    assert learning_rate(call, 0.1, 12, 10) == pytest.approx(0.01)


def test_cosine_is_continuous_within_epochs():
    """Fractional epoch positions follow the closed form over the S - 1 steps."""
    call = Call("cosine", {"warmup": 0, "min_lr": 0.0})
    for e in [0.25, 1.5, 3.75, 8.9]:
        want = 0.5 * 0.1 * (1 + math.cos(math.pi * e / 9))
        assert learning_rate(call, 0.1, e, 10) == pytest.approx(want, rel=1e-12)


def warmup_formula(base, epoch, warmup, epochs, min_lr):
    """Linear warm-up lr*(epoch+1)/(warmup+1) for epoch < warmup, then cosine annealing from
    lr to min_lr over the remaining epochs - warmup epochs (one step per epoch: reaching
    min_lr on the last)."""
    if epoch < warmup:
        return base * (epoch + 1) / (warmup + 1)
    t = min((epoch - warmup) / max(1, epochs - warmup - 1), 1.0)
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


@pytest.mark.parametrize("milestones,gamma", [((2, 5), 0.1), ((1, 2, 3), 0.5), ((7,), 0.3)])
def test_multistep_matches_multisteplr(milestones, gamma):
    epochs = 12
    want = torch_lrs(lambda o: torch.optim.lr_scheduler.MultiStepLR(o, list(milestones), gamma),
                     0.3, epochs)
    got = dlc_lrs(Call("multistep", {"milestones": milestones, "gamma": gamma, "warmup": 0}),
                  0.3, epochs)
    assert_lrs(got, want)


@pytest.mark.parametrize("epochs,steps,pct,div,final", [(4, 10, 0.3, 25.0, 1e4),
                                                        (3, 7, 0.5, 10.0, 100.0),
                                                        (10, 1, 0.25, 5.0, 1e3)])
def test_onecycle_matches_onecyclelr(epochs, steps, pct, div, final):
    """Per step; torch's momentum cycling off (dlc does not cycle momentum)."""
    base, total = 0.4, epochs * steps
    want = torch_step_lrs(lambda o: torch.optim.lr_scheduler.OneCycleLR(
        o, max_lr=base, total_steps=total, pct_start=pct, div_factor=div,
        final_div_factor=final, cycle_momentum=False), base, total)
    call = Call("onecycle", {"pct_start": pct, "div_factor": div, "final_div_factor": final,
                             "warmup": 0})
    got = dlc_step_lrs(call, base, epochs, steps)
    for k, (g, w) in enumerate(zip(got, want)):
        assert g == pytest.approx(w, rel=1e-9, abs=1e-15), f"step {k}"
    # the peak is hit exactly only when pct_start * S - 1 is a whole step (torch's rule too)
    assert max(got) <= base and got[-1] == pytest.approx(base / div / final)


PLATEAU = {"monitor": "val_loss", "factor": 0.5, "patience": 2, "threshold": 1e-4,
           "cooldown": 0, "min_lr": 0.0, "warmup": 0}


@pytest.mark.parametrize("over", [{}, {"cooldown": 2}, {"patience": 0, "min_lr": 0.02},
                                  {"monitor": "val_acc", "factor": 0.1, "threshold": 0.01}])
def test_plateau_matches_reducelronplateau(over):
    """The same metric sequence fed to both, once per epoch (seeded noise with a trend)."""
    a = {**PLATEAU, **over}
    mode = "max" if a["monitor"] == "val_acc" else "min"
    gen = torch.Generator().manual_seed(1)
    metrics = (torch.linspace(1, 0.6, 40) if mode == "min" else torch.linspace(0.3, 0.9, 40))
    metrics = (metrics + 0.05 * torch.randn(40, generator=gen)).tolist()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, mode=mode, factor=a["factor"], patience=a["patience"], threshold=a["threshold"],
        cooldown=a["cooldown"], min_lr=a["min_lr"])
    sched = Schedule(Call("plateau", a), 0.1, 40, 3)
    reductions = 0
    for epoch, m in enumerate(metrics, start=1):
        for i in range(3):
            assert sched.lr((epoch - 1) * 3 + i) == pytest.approx(opt.param_groups[0]["lr"],
                                                                 rel=1e-12), f"epoch {epoch}"
        sched.end_epoch(epoch, {a["monitor"]: m})
        before = opt.param_groups[0]["lr"]
        ref.step(m)
        reductions += opt.param_groups[0]["lr"] < before
    assert reductions >= 1, "the sequence must exercise a reduction"


@pytest.mark.parametrize("name,args,make", [
    ("step", {"every": 2, "gamma": 0.5},
     lambda o: torch.optim.lr_scheduler.StepLR(o, 2, 0.5)),
    ("multistep", {"milestones": (3, 5), "gamma": 0.1},
     lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [3, 5], 0.1)),
    ("exponential", {"gamma": 0.8},
     lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.8)),
    ("constant", {}, lambda o: torch.optim.lr_scheduler.ConstantLR(o, factor=1.0)),
])
@pytest.mark.parametrize("warmup", [1, 3])
def test_warmup_for_any_schedule_matches_sequentiallr(name, args, make, warmup):
    """warmup=W: LinearLR(start_factor=1/(W+1), total_iters=W), then the schedule from its
    start (SequentialLR with milestones=[W])."""
    epochs, base = 12, 0.2

    def chained(o):
        lin = torch.optim.lr_scheduler.LinearLR(o, start_factor=1 / (warmup + 1),
                                                end_factor=1.0, total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(o, [lin, make(o)], milestones=[warmup])
    want = torch_lrs(chained, base, epochs)
    got = dlc_lrs(Call(name, {**args, "warmup": warmup}), base, epochs)
    assert_lrs(got, want)


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
    want = torch_step_lrs(lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, T_max=8),
                          0.1, 9)
    for g, w in zip(dlc_step_lrs(cos.schedule, 0.1, cos.epochs, 1), want):
        assert g == pytest.approx(w, rel=1e-6, abs=1e-12)
    default = dlc.compile_spec(path).config
    assert default.schedule.name == "constant"


def test_unknown_schedule_is_an_error():
    with pytest.raises(ValueError):
        learning_rate(Call("linear", {}), 0.1, 0, 10)

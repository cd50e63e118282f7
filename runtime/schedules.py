"""Learning-rate schedules: the lr of every optimizer step.

A schedule's clock is the step: step k of a run of `epochs` epochs of `steps` batches is at
epoch position e = k / steps.  Every schedule takes `warmup=W` epochs of linear warm-up,
lr * (e + 1) / (W + 1) for e < W (torch's LinearLR(start_factor=1/(W+1), total_iters=W)),
after which the schedule runs on the remaining epochs as if they were the whole run
(torch's SequentialLR(..., milestones=[W])).

    constant                     lr
    step(every, gamma)           lr * gamma^floor(E / every)               (StepLR)
    multistep(milestones, gamma) lr * gamma^(number of milestones <= E)    (MultiStepLR)
    exponential(gamma)           lr * gamma^E                              (ExponentialLR)
    cosine(min_lr)               min_lr + (lr - min_lr)(1 + cos(pi k/(S-1)))/2, per step, so
                                 the last step uses min_lr (CosineAnnealingLR(T_max=S-1))
    onecycle(pct_start, div_factor, final_div_factor)
                                 per step, cosine from lr/div up to lr, then down to
                                 lr/div/final_div on the last step (OneCycleLR, no momentum
                                 cycling)
    plateau(monitor, factor, patience, threshold, cooldown, min_lr)
                                 lr times factor when the monitored epoch metric has not
                                 improved for more than `patience` epochs (ReduceLROnPlateau,
                                 relative threshold)

E is the whole epoch (after warm-up), S the number of steps after warm-up.
"""
from __future__ import annotations

import math

from ..compiler.config import Call
from ..compiler.ops.registry import Arg

_WARMUP = Arg("warmup", 0, kind="int", doc="epochs of linear warm-up")
SCHEDULES: dict[str, tuple[Arg, ...]] = {
    "constant": (_WARMUP,),
    "step": (Arg("every", kind="int", doc="epochs between decays"),
             Arg("gamma", 0.1, kind="float", doc="factor applied at each decay"), _WARMUP),
    "multistep": (Arg("milestones", kind="ints", doc="epochs at which lr is multiplied"),
                  Arg("gamma", 0.1, kind="float", doc="factor applied at each milestone"),
                  _WARMUP),
    "exponential": (Arg("gamma", kind="float", doc="factor applied every epoch"), _WARMUP),
    "cosine": (_WARMUP, Arg("min_lr", 0.0, kind="float", doc="the last step's learning rate")),
    "onecycle": (Arg("pct_start", 0.3, kind="float", doc="share of steps spent rising"),
                 Arg("div_factor", 25.0, kind="float", doc="first lr = lr / div_factor"),
                 Arg("final_div_factor", 1e4, kind="float",
                     doc="last lr = lr / div_factor / final_div_factor"), _WARMUP),
    "plateau": (Arg("monitor", "val_loss", kind="name", doc="val_loss, val_acc or train_loss"),
                Arg("factor", 0.1, kind="float", doc="lr multiplier on a plateau"),
                Arg("patience", 10, kind="int", doc="epochs without improvement tolerated"),
                Arg("threshold", 1e-4, kind="float", doc="relative improvement that counts"),
                Arg("cooldown", 0, kind="int", doc="epochs to wait after a reduction"),
                Arg("min_lr", 0.0, kind="float", doc="lower bound"), _WARMUP),
}
MONITORS = ("val_loss", "val_acc", "train_loss")


def check_schedule_args(call: Call) -> tuple[str, str] | None:
    """(argument, problem) with a schedule's arguments, or None."""
    a = call.args
    if a.get("warmup", 0) < 0:
        return "warmup", "warmup must not be negative"
    if call.name == "step" and a["every"] < 1:
        return "every", "every must be at least 1"
    if "gamma" in a and not 0 < a["gamma"] < math.inf:
        return "gamma", f"gamma must be a positive number, got {a['gamma']}"
    if "min_lr" in a and not 0 <= a["min_lr"] < math.inf:
        return "min_lr", f"min_lr must be a number >= 0, got {a['min_lr']}"
    if call.name == "multistep" and (any(m < 1 for m in a["milestones"])
                                     or list(a["milestones"]) != sorted(set(a["milestones"]))):
        return "milestones", "milestones must be increasing epochs, each at least 1"
    if call.name == "onecycle" and not 0 < a["pct_start"] < 1:
        return "pct_start", "pct_start must be in (0, 1)"
    if call.name == "plateau":
        if a["monitor"] not in MONITORS:
            return "monitor", f"plateau can monitor {', '.join(MONITORS)}"
        if not 0 < a["factor"] < 1:
            return "factor", "factor must be in (0, 1)"
        if a["patience"] < 0 or a["cooldown"] < 0:
            return "patience", "patience and cooldown must not be negative"
    return None


def _cos(start: float, end: float, pct: float) -> float:
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)


def _onecycle(a: dict, base: float, k: float, total: int) -> float:
    """torch.optim.lr_scheduler.OneCycleLR's two phases (anneal_strategy="cos")."""
    initial = base / a["div_factor"]
    final = initial / a["final_div_factor"]
    peak = float(a["pct_start"] * total) - 1
    if k <= peak:
        return _cos(initial, base, k / peak) if peak > 0 else base
    end = total - 1
    return _cos(base, final, (k - peak) / (end - peak)) if end > peak else final


def scheduled_lr(schedule: Call, base_lr: float, k: float, steps: int, epochs: int,
                 factor: float = 1.0) -> float:
    """The learning rate at step position k (0-based, may be fractional) of `epochs` epochs
    of `steps` steps; `factor` is plateau's reduction so far."""
    a = schedule.args
    warm = a.get("warmup", 0)
    e = k / steps                                       # epoch position
    if e < warm:
        return base_lr * (e + 1) / (warm + 1)
    k, epoch = k - warm * steps, int(e - warm)          # the clock after warm-up
    total = max(1, (epochs - warm) * steps)             # steps after warm-up
    name = schedule.name
    if name == "constant":
        return base_lr
    if name == "step":
        return base_lr * a["gamma"] ** (epoch // a["every"])
    if name == "multistep":
        return base_lr * a["gamma"] ** sum(m <= epoch for m in a["milestones"])
    if name == "exponential":
        return base_lr * a["gamma"] ** epoch
    if name == "cosine":
        t = min(k / max(1, total - 1), 1.0)
        return _cos(base_lr, a["min_lr"], t)
    if name == "onecycle":
        return _onecycle(a, base_lr, min(k, total - 1), total)
    if name == "plateau":
        return base_lr * factor
    raise ValueError(schedule.name)


def learning_rate(schedule: Call, base_lr: float, epoch: float, epochs: int,
                  steps: int = 1) -> float:
    """The learning rate at epoch position `epoch` (0-based, may be fractional) of `epochs`
    epochs of `steps` steps each."""
    return scheduled_lr(schedule, base_lr, epoch * steps, steps, epochs)


class Plateau:
    """ReduceLROnPlateau's rule on the epoch metric `monitor` (lower is better for losses,
    higher for accuracy; threshold relative): after more than `patience` epochs without
    improvement, lr = max(lr * factor, min_lr), then `cooldown` epochs of rest."""

    def __init__(self, a: dict, base_lr: float):
        self.a, self.base_lr = a, base_lr
        self.lr = base_lr
        self.best = -math.inf if a["monitor"] == "val_acc" else math.inf
        self.bad = self.cooldown = 0

    def better(self, x: float) -> bool:
        th = self.a["threshold"]
        if self.a["monitor"] == "val_acc":
            return x > self.best * (1.0 + th)
        return x < self.best * (1.0 - th)

    def observe(self, x: float) -> None:
        if self.better(x):
            self.best, self.bad = x, 0
        else:
            self.bad += 1
        if self.cooldown > 0:
            self.cooldown -= 1
            self.bad = 0
        if self.bad > self.a["patience"]:
            new = max(self.lr * self.a["factor"], self.a["min_lr"])
            if self.lr - new > 1e-8:
                self.lr = new
            self.cooldown, self.bad = self.a["cooldown"], 0


class Schedule:
    """The lr of each step of a run; `end_epoch` feeds plateau its monitored metric."""

    def __init__(self, call: Call, base_lr: float, epochs: int, steps: int):
        self.call, self.base_lr, self.epochs, self.steps = call, base_lr, epochs, steps
        self.plateau = Plateau(call.args, base_lr) if call.name == "plateau" else None

    def lr(self, k: int) -> float:
        """The learning rate of step k (0-based, counted over the whole run)."""
        factor = self.plateau.lr / self.base_lr if self.plateau is not None else 1.0
        return scheduled_lr(self.call, self.base_lr, k, self.steps, self.epochs, factor)

    def end_epoch(self, epoch: int, record: dict) -> None:
        """After `epoch` (1-based): plateau observes the monitored metric, once warm-up is
        over."""
        if self.plateau is not None and epoch > self.call.args["warmup"]:
            value = record.get(self.call.args["monitor"])
            if value is not None:
                self.plateau.observe(value)

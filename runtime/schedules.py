"""Learning-rate schedules: lr for an epoch (fractional within the epoch for warmup)."""
from __future__ import annotations

import math

from ..compiler.config import Call
from ..compiler.ops.registry import Arg

SCHEDULES: dict[str, tuple[Arg, ...]] = {
    "constant": (),
    "step": (Arg("every", kind="int", doc="epochs between decays"),
             Arg("gamma", 0.1, kind="float", doc="factor applied at each decay")),
    "exponential": (Arg("gamma", kind="float", doc="factor applied every epoch"),),
    "cosine": (Arg("warmup", 0, kind="int", doc="epochs of linear warm-up"),
               Arg("min_lr", 0.0, kind="float", doc="final learning rate")),
}


def learning_rate(schedule: Call, base_lr: float, epoch: float, epochs: int) -> float:
    """The learning rate at `epoch` (0-based, may be fractional) of `epochs`."""
    a = schedule.args
    if schedule.name == "constant":
        return base_lr
    if schedule.name == "step":
        return base_lr * a["gamma"] ** int(epoch // a["every"])
    if schedule.name == "exponential":
        return base_lr * a["gamma"] ** int(epoch)
    if schedule.name == "cosine":
        warm = a["warmup"]
        if warm and epoch < warm:
            return base_lr * (epoch + 1) / (warm + 1)
        t = (epoch - warm) / max(1, epochs - warm)
        return a["min_lr"] + 0.5 * (base_lr - a["min_lr"]) * (1 + math.cos(math.pi * min(t, 1.0)))
    raise ValueError(schedule.name)

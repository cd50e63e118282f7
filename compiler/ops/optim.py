"""Optimizer update ops: one node per parameter, producing the new parameter and slots.

The equations follow `torch.optim` (documented per op); the train graph assigns each
output back to its state with `@name <- %value`.
"""
from __future__ import annotations

from ._lazy import torch

from .registry import Op, ShapeError, register


class _Update(Op):
    """Inputs: param, grad, *slots, lr (and step for Adam). Outputs: param', *slots'."""

    n_slots = 0

    def infer(self, ins, attrs):
        w, g = ins[0], ins[1]
        if w.shape != g.shape:
            raise ShapeError(f"{self.name}: gradient {g} does not match parameter {w}")
        return [w] * (1 + self.n_slots)


@register
class SgdUpdate(_Update):
    """g' = g + wd*w;  buf = g' on the first step, then momentum*buf + (1-dampening)*g';
    d = g' + momentum*buf (nesterov) or buf;  w = w - lr*d.  Without momentum: w = w - lr*g'.
    Inputs: (w, g, lr), or (w, g, buf, step, lr) with momentum."""

    name = "sgd_update"

    def infer(self, ins, attrs):
        w = ins[0]
        return [w] * (2 if attrs["momentum"] else 1)

    def forward(self, ins, attrs, ctx):
        mom, wd = attrs["momentum"], attrs["weight_decay"]
        if mom:
            w, g, buf, step, lr = ins
        else:
            w, g, lr = ins
        if wd:
            g = g + wd * w
        if not mom:
            return (w - lr * g,)
        buf = torch.where(step == 1, g, mom * buf + (1.0 - attrs["dampening"]) * g)
        d = g + mom * buf if attrs["nesterov"] else buf
        return (w - lr * d, buf)


@register
class AdamUpdate(_Update):
    """m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  w = w - lr * (m/(1-b1^t)) / (sqrt(v/(1-b2^t)) + eps).
    weight_decay adds wd*w to g (Adam) or, when decoupled, first scales w by (1 - lr*wd) (AdamW)."""

    name = "adam_update"
    n_slots = 2

    def forward(self, ins, attrs, ctx):
        w, g, m, v, step, lr = ins
        b1, b2, eps, wd = attrs["beta1"], attrs["beta2"], attrs["eps"], attrs["weight_decay"]
        if wd and attrs["decoupled"]:
            w = w * (1.0 - lr * wd)
        elif wd:
            g = g + wd * w
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * g * g
        bc1 = 1.0 - b1 ** step
        bc2 = 1.0 - b2 ** step
        denom = (v.sqrt() / bc2.sqrt()) + eps
        return (w - (lr / bc1) * m / denom, m, v)


@register
class Increment(Op):
    name = "increment"

    def infer(self, ins, attrs):
        return [ins[0]]

    def forward(self, ins, attrs, ctx):
        return (ins[0] + 1,)

"""Optimizer update ops: one node per parameter, producing the new parameter and slots.

The equations follow `torch.optim` (documented per op); the train graph assigns each
output back to its state with `@name <- %value`.
"""
from __future__ import annotations

import math

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
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        mom, wd = attrs["momentum"], attrs["weight_decay"]
        w, g, *rest = ins
        lr = rest[-1]
        if wd:
            g = e.let(f"{g} + {wd!r} * {w}")
        if not mom:
            return [e.let(f"{w} - {lr} * {g}")]
        buf, step = rest[0], rest[1]
        damp = 1.0 - attrs["dampening"]
        buf = e.let(f"tl.where({step} == 1.0, {g}, {mom!r} * {buf} + {damp!r} * {g})")
        d = e.let(f"{g} + {mom!r} * {buf}") if attrs["nesterov"] else buf
        return [e.let(f"{w} - {lr} * {d}"), buf]

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
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        w, g, m, v, step, lr = ins
        b1, b2, eps, wd = attrs["beta1"], attrs["beta2"], attrs["eps"], attrs["weight_decay"]
        if wd and attrs["decoupled"]:
            w = e.let(f"{w} * (1.0 - {lr} * {wd!r})")
        elif wd:
            g = e.let(f"{g} + {wd!r} * {w}")
        m = e.let(f"{b1!r} * {m} + {1.0 - b1!r} * {g}")
        v = e.let(f"{b2!r} * {v} + {1.0 - b2!r} * {g} * {g}")
        bc1 = e.let(f"1.0 - tl.exp({step} * {math.log(b1)!r})") if b1 > 0 else "1.0"
        bc2 = e.let(f"1.0 - tl.exp({step} * {math.log(b2)!r})") if b2 > 0 else "1.0"
        denom = e.let(f"tl.sqrt({v}) / tl.sqrt({bc2}) + {eps!r}")
        return [e.let(f"{w} - ({lr} / {bc1}) * {m} / {denom}"), m, v]
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
    triton = "remat"

    def triton_ew(self, e, ins, attrs):
        return [e.let(f"{ins[0]} + 1")]
    like = 0

    def forward(self, ins, attrs, ctx):
        return (ins[0] + 1,)


@register
class RmspropUpdate(Op):
    """g' = g + wd*w;  s = alpha*s + (1-alpha)*g'^2;  centered: a = alpha*a + (1-alpha)*g',
    d = sqrt(s - a^2) + eps, else d = sqrt(s) + eps;  momentum: buf = momentum*buf + g'/d,
    w = w - lr*buf, else w = w - lr*g'/d.  Inputs (w, g, s, [a], [buf], lr)."""

    name = "rmsprop_update"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        w, g, sq, *rest = ins
        lr, rest = rest[-1], rest[:-1]
        alpha, eps, mom, wd = attrs["alpha"], attrs["eps"], attrs["momentum"], attrs["weight_decay"]
        if wd:
            g = e.let(f"{g} + {wd!r} * {w}")
        sq = e.let(f"{alpha!r} * {sq} + {1.0 - alpha!r} * {g} * {g}")
        outs = []
        if attrs["centered"]:
            gavg = e.let(f"{alpha!r} * {rest.pop(0)} + {1.0 - alpha!r} * {g}")
            denom = e.let(f"tl.sqrt({sq} - {gavg} * {gavg}) + {eps!r}")
            outs.append(gavg)
        else:
            denom = e.let(f"tl.sqrt({sq}) + {eps!r}")
        if mom:
            buf = e.let(f"{mom!r} * {rest.pop(0)} + {g} / {denom}")
            outs.append(buf)
            w = e.let(f"{w} - {lr} * {buf}")
        else:
            w = e.let(f"{w} - {lr} * {g} / {denom}")
        return [w, sq, *outs]

    def infer(self, ins, attrs):
        n = 2 + bool(attrs["centered"]) + bool(attrs["momentum"])
        if ins[0].shape != ins[1].shape:
            raise ShapeError(f"{self.name}: gradient {ins[1]} does not match parameter {ins[0]}")
        return [ins[0]] * n

    def forward(self, ins, attrs, ctx):
        w, g, sq, *rest = ins
        lr = rest.pop()
        alpha, eps, mom, wd = attrs["alpha"], attrs["eps"], attrs["momentum"], attrs["weight_decay"]
        if wd:
            g = g + wd * w
        sq = alpha * sq + (1.0 - alpha) * g * g
        outs = []
        if attrs["centered"]:
            gavg = alpha * rest.pop(0) + (1.0 - alpha) * g
            denom = (sq - gavg * gavg).sqrt() + eps
            outs.append(gavg)
        else:
            denom = sq.sqrt() + eps
        if mom:
            buf = mom * rest.pop(0) + g / denom
            outs.append(buf)
            w = w - lr * buf
        else:
            w = w - lr * g / denom
        return (w, sq, *outs)


@register
class AdagradUpdate(_Update):
    """g' = g + wd*w;  sum = sum + g'^2;  w = w - lr/(1 + (t-1)*lr_decay) * g'/(sqrt(sum) + eps).
    Inputs (w, g, sum, step, lr)."""

    name = "adagrad_update"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        w, g, acc, step, lr = ins
        if attrs["weight_decay"]:
            g = e.let(f"{g} + {attrs['weight_decay']!r} * {w}")
        clr = e.let(f"{lr} / (1.0 + ({step} - 1.0) * {attrs['lr_decay']!r})")
        acc = e.let(f"{acc} + {g} * {g}")
        return [e.let(f"{w} - {clr} * {g} / (tl.sqrt({acc}) + {attrs['eps']!r})"), acc]
    n_slots = 1

    def forward(self, ins, attrs, ctx):
        w, g, acc, step, lr = ins
        if attrs["weight_decay"]:
            g = g + attrs["weight_decay"] * w
        clr = lr / (1.0 + (step - 1.0) * attrs["lr_decay"])
        acc = acc + g * g
        return (w - clr * g / (acc.sqrt() + attrs["eps"]), acc)


@register
class AdadeltaUpdate(_Update):
    """g' = g + wd*w;  s = rho*s + (1-rho)*g'^2;  d = sqrt(u + eps)/sqrt(s + eps) * g';
    u = rho*u + (1-rho)*d^2;  w = w - lr*d.  Inputs (w, g, s, u, lr)."""

    name = "adadelta_update"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        w, g, sq, acc, lr = ins
        rho, eps = attrs["rho"], attrs["eps"]
        if attrs["weight_decay"]:
            g = e.let(f"{g} + {attrs['weight_decay']!r} * {w}")
        sq = e.let(f"{rho!r} * {sq} + {1.0 - rho!r} * {g} * {g}")
        delta = e.let(f"tl.sqrt({acc} + {eps!r}) / tl.sqrt({sq} + {eps!r}) * {g}")
        acc = e.let(f"{rho!r} * {acc} + {1.0 - rho!r} * {delta} * {delta}")
        return [e.let(f"{w} - {lr} * {delta}"), sq, acc]
    n_slots = 2

    def forward(self, ins, attrs, ctx):
        w, g, sq, acc, lr = ins
        rho, eps = attrs["rho"], attrs["eps"]
        if attrs["weight_decay"]:
            g = g + attrs["weight_decay"] * w
        sq = rho * sq + (1.0 - rho) * g * g
        delta = (acc + eps).sqrt() / (sq + eps).sqrt() * g
        acc = rho * acc + (1.0 - rho) * delta * delta
        return (w - lr * delta, sq, acc)

"""Optimizer update ops: one node per parameter, producing the new parameter and slots.

The equations follow `torch.optim` (documented per op); the train graph assigns each
output back to its state with `@name <- %value`.
"""
from __future__ import annotations

import math

from ._lazy import torch

from .registry import Op, ShapeError, register


def _log(beta: float) -> float:
    return math.log(beta)


class _Update(Op):
    """Inputs: param, grad, *slots, (step,) lr, and with `clip_norm` a last scalar: the
    global-norm clipping factor. Outputs: param', *slots'.

    Every update first prepares the gradient as torch.nn.utils does before `step()`:
    g = g * clip_factor (clip_norm), then g = clamp(g, -clip_value, clip_value); and
    scales the learning rate by `lr_scale` (a parameter group's lr / the base lr)."""

    n_slots = 0

    @staticmethod
    def prologue(ins, attrs):
        """(inputs with the prepared gradient, without lr and the clip factor; lr) for the
        reference forward."""
        ins = list(ins)
        factor = ins.pop() if attrs.get("clip_norm") else None
        lr = ins.pop()
        if factor is not None:
            ins[1] = ins[1] * factor
        if attrs.get("clip_value"):
            ins[1] = ins[1].clamp(-attrs["clip_value"], attrs["clip_value"])
        if attrs.get("lr_scale", 1.0) != 1.0:
            lr = lr * attrs["lr_scale"]
        return ins, lr

    @staticmethod
    def prologue_ew(e, ins, attrs):
        """The same for a Triton elementwise expression."""
        ins = list(ins)
        factor = ins.pop() if attrs.get("clip_norm") else None
        lr = ins.pop()
        if factor is not None:
            ins[1] = e.let(f"{ins[1]} * {factor}")
        if attrs.get("clip_value"):
            c = float(attrs["clip_value"])
            ins[1] = e.let(f"tl.minimum(tl.maximum({ins[1]}, {-c!r}), {c!r})")
        if attrs.get("lr_scale", 1.0) != 1.0:
            lr = e.let(f"{lr} * {float(attrs['lr_scale'])!r}")
        return ins, lr

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
        (w, g, *rest), lr = self.prologue_ew(e, ins, attrs)
        if wd:
            g = e.let(f"{g} + {wd!r} * {w}")
        if not mom:
            return [e.let(f"{w} - {lr} * {g}")]
        buf, step = rest
        damp = 1.0 - attrs["dampening"]
        buf = e.let(f"tl.where({step} == 1.0, {g}, {mom!r} * {buf} + {damp!r} * {g})")
        d = e.let(f"{g} + {mom!r} * {buf}") if attrs["nesterov"] else buf
        return [e.let(f"{w} - {lr} * {d}"), buf]

    def infer(self, ins, attrs):
        w = ins[0]
        return [w] * (2 if attrs["momentum"] else 1)

    def forward(self, ins, attrs, ctx):
        mom, wd = attrs["momentum"], attrs["weight_decay"]
        ins, lr = self.prologue(ins, attrs)
        if mom:
            w, g, buf, step = ins
        else:
            w, g = ins
        if wd:
            g = g + wd * w
        if not mom:
            return (w - lr * g,)
        buf = torch.where(step == 1, g, mom * buf + (1.0 - attrs["dampening"]) * g)
        d = g + mom * buf if attrs["nesterov"] else buf
        return (w - lr * d, buf)


def _bias_correction_ew(e, step, beta: float) -> str:
    """1 - beta^t in float32 without cancellation: -expm1(t ln beta), with expm1 by Kahan's
    trick ((u - 1) * x / ln u for u = e^x), which is accurate to a few ulps where 1 - e^x in
    float32 is not (1 - 0.999 in float32 is 1.3e-5 too small, relatively)."""
    if beta == 0:
        return "1.0"
    x = e.let(f"{step} * {_log(beta)!r}")
    u = e.let(f"tl.exp({x})")
    return e.let(f"-tl.where({u} == 1.0, {x}, ({u} - 1.0) * {x} / tl.log({u}))")


@register
class AdamUpdate(_Update):
    """m = b1*m + (1-b1)*g;  v = b2*v + (1-b2)*g^2;  amsgrad: vmax = max(vmax, v), used for v;
    w = w - (lr/(1-b1^t)) * m / (sqrt(v)/sqrt(1-b2^t) + eps).
    weight_decay adds wd*w to g (Adam) or, when decoupled, first scales w by (1 - lr*wd) (AdamW).
    The bias corrections 1-b^t are formed in float64 from the step count, as torch.optim does
    with its Python floats (reference backend), or without cancellation in float32 (Triton).
    Inputs (w, g, m, v, [vmax], step, lr)."""

    name = "adam_update"
    triton = "elementwise"

    def infer(self, ins, attrs):
        super().infer(ins, attrs)
        return [ins[0]] * (3 + bool(attrs.get("amsgrad")))

    def triton_ew(self, e, ins, attrs):
        (w, g, m, v, *vmax, step), lr = self.prologue_ew(e, ins, attrs)
        b1, b2, eps, wd = attrs["beta1"], attrs["beta2"], attrs["eps"], attrs["weight_decay"]
        if wd and attrs["decoupled"]:
            w = e.let(f"{w} * (1.0 - {lr} * {wd!r})")
        elif wd:
            g = e.let(f"{g} + {wd!r} * {w}")
        m = e.let(f"{b1!r} * {m} + {1.0 - b1!r} * {g}")
        v = e.let(f"{b2!r} * {v} + {1.0 - b2!r} * {g} * {g}")
        outs = [m, v]
        if attrs.get("amsgrad"):
            vmax = e.let(f"tl.maximum({vmax[0]}, {v})")
            outs.append(vmax)
        step_size = e.let(f"{lr} / {_bias_correction_ew(e, step, b1)}")
        bc2_sqrt = e.let(f"tl.sqrt({_bias_correction_ew(e, step, b2)})")
        denom = e.let(f"tl.sqrt({vmax if attrs.get('amsgrad') else v}) / {bc2_sqrt} + {eps!r}")
        return [e.let(f"{w} - {step_size} * ({m} / {denom})"), *outs]

    def forward(self, ins, attrs, ctx):
        (w, g, m, v, *vmax, step), lr = self.prologue(ins, attrs)
        b1, b2, eps, wd = attrs["beta1"], attrs["beta2"], attrs["eps"], attrs["weight_decay"]
        if wd and attrs["decoupled"]:
            w = w * (1.0 - lr * wd)
        elif wd:
            g = g + wd * w
        m = b1 * m + (1.0 - b1) * g
        v = b2 * v + (1.0 - b2) * g * g
        outs = [m, v]
        if attrs.get("amsgrad"):
            vmax = torch.maximum(vmax[0], v)
            outs.append(vmax)
            v = vmax
        t = step.double()                                   # as torch.optim: float64 scalars
        step_size = (lr.double() / (1.0 - b1 ** t)).to(w.dtype)
        bc2_sqrt = (1.0 - b2 ** t).sqrt().to(w.dtype)
        denom = v.sqrt() / bc2_sqrt + eps
        return (w - step_size * (m / denom), *outs)


@register
class MomentumUpdate(_Update):
    """The notes' momentum (and NAG's update): g' = g + wd*w;  v = beta*v + (1-beta)*g';
    w = w - lr*v.  For NAG the gradient was taken at the look-ahead point w - lr*beta*v
    (`nag_lookahead`).  Inputs (w, g, v, lr)."""

    name = "momentum_update"
    triton = "elementwise"
    n_slots = 1

    def triton_ew(self, e, ins, attrs):
        (w, g, v), lr = self.prologue_ew(e, ins, attrs)
        beta, wd = attrs["beta"], attrs["weight_decay"]
        if wd:
            g = e.let(f"{g} + {wd!r} * {w}")
        v = e.let(f"{beta!r} * {v} + {1.0 - beta!r} * {g}")
        return [e.let(f"{w} - {lr} * {v}"), v]

    def forward(self, ins, attrs, ctx):
        (w, g, v), lr = self.prologue(ins, attrs)
        beta, wd = attrs["beta"], attrs["weight_decay"]
        if wd:
            g = g + wd * w
        v = beta * v + (1.0 - beta) * g
        return (w - lr * v, v)


@register
class NagLookahead(Op):
    """NAG's look-ahead point w - lr*lr_scale*beta*v, where the forward (and so the
    gradient) is evaluated.  Inputs (w, v, lr)."""

    name = "nag_lookahead"
    triton = "elementwise"
    differentiable = False
    like = 0

    def triton_ew(self, e, ins, attrs):
        w, v, lr = ins
        return [e.let(f"{w} - {lr} * {attrs['lr_scale'] * attrs['beta']!r} * {v}")]

    def forward(self, ins, attrs, ctx):
        w, v, lr = ins
        return (w - (lr * attrs["lr_scale"]) * attrs["beta"] * v,)

    def vjp(self, b, node, gouts, needs):
        return [None, None, None]          # the gradient is wanted at this point itself


@register
class ClipFactor(Op):
    """Global-norm clipping's factor from the sum of every gradient's squares s:
    min(1, max_norm / (sqrt(s) + 1e-6)) (torch.nn.utils.clip_grad_norm_)."""

    name = "clip_factor"
    triton = "elementwise"
    differentiable = False
    like = 0

    def triton_ew(self, e, ins, attrs):
        return [e.let(f"tl.minimum({attrs['max_norm']!r} / (tl.sqrt({ins[0]}) + 1e-6), 1.0)")]

    def forward(self, ins, attrs, ctx):
        return ((attrs["max_norm"] / (ins[0].sqrt() + 1e-6)).clamp(max=1.0),)


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
class RmspropUpdate(_Update):
    """g' = g + wd*w;  s = alpha*s + (1-alpha)*g'^2;  centered: a = alpha*a + (1-alpha)*g',
    d = sqrt(s - a^2) + eps, else d = sqrt(s) + eps (eps_inside, the notes' form:
    d = sqrt(s - a^2 + eps) or sqrt(s + eps));  momentum: buf = momentum*buf + g'/d,
    w = w - lr*buf, else w = w - lr*g'/d.  Inputs (w, g, s, [a], [buf], lr)."""

    name = "rmsprop_update"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        (w, g, sq, *rest), lr = self.prologue_ew(e, ins, attrs)
        alpha, eps, mom, wd = attrs["alpha"], attrs["eps"], attrs["momentum"], attrs["weight_decay"]
        inside = attrs.get("eps_inside")
        if wd:
            g = e.let(f"{g} + {wd!r} * {w}")
        sq = e.let(f"{alpha!r} * {sq} + {1.0 - alpha!r} * {g} * {g}")
        outs = []
        if attrs["centered"]:
            gavg = e.let(f"{alpha!r} * {rest.pop(0)} + {1.0 - alpha!r} * {g}")
            var = f"{sq} - {gavg} * {gavg}"
            outs.append(gavg)
        else:
            var = sq
        denom = e.let(f"tl.sqrt({var} + {eps!r})" if inside else f"tl.sqrt({var}) + {eps!r}")
        if mom:
            buf = e.let(f"{mom!r} * {rest.pop(0)} + {g} / {denom}")
            outs.append(buf)
            w = e.let(f"{w} - {lr} * {buf}")
        else:
            w = e.let(f"{w} - {lr} * {g} / {denom}")
        return [w, sq, *outs]

    def infer(self, ins, attrs):
        super().infer(ins, attrs)
        return [ins[0]] * (2 + bool(attrs["centered"]) + bool(attrs["momentum"]))

    def forward(self, ins, attrs, ctx):
        (w, g, sq, *rest), lr = self.prologue(ins, attrs)
        alpha, eps, mom, wd = attrs["alpha"], attrs["eps"], attrs["momentum"], attrs["weight_decay"]
        if wd:
            g = g + wd * w
        sq = alpha * sq + (1.0 - alpha) * g * g
        outs = []
        if attrs["centered"]:
            gavg = alpha * rest.pop(0) + (1.0 - alpha) * g
            var = sq - gavg * gavg
            outs.append(gavg)
        else:
            var = sq
        denom = (var + eps).sqrt() if attrs.get("eps_inside") else var.sqrt() + eps
        if mom:
            buf = mom * rest.pop(0) + g / denom
            outs.append(buf)
            w = w - lr * buf
        else:
            w = w - lr * (g / denom)                     # torch's addcdiv grouping
        return (w, sq, *outs)


@register
class AdagradUpdate(_Update):
    """g' = g + wd*w;  sum = sum + g'^2;  w = w - lr/(1 + (t-1)*lr_decay) * g'/(sqrt(sum) + eps)
    (eps_inside, the notes' form: g'/sqrt(sum + eps)).  Inputs (w, g, sum, step, lr)."""

    name = "adagrad_update"
    triton = "elementwise"
    n_slots = 1

    def triton_ew(self, e, ins, attrs):
        (w, g, acc, step), lr = self.prologue_ew(e, ins, attrs)
        eps = attrs["eps"]
        if attrs["weight_decay"]:
            g = e.let(f"{g} + {attrs['weight_decay']!r} * {w}")
        clr = e.let(f"{lr} / (1.0 + ({step} - 1.0) * {attrs['lr_decay']!r})")
        acc = e.let(f"{acc} + {g} * {g}")
        denom = f"tl.sqrt({acc} + {eps!r})" if attrs.get("eps_inside") else \
            f"(tl.sqrt({acc}) + {eps!r})"
        return [e.let(f"{w} - {clr} * {g} / {denom}"), acc]

    def forward(self, ins, attrs, ctx):
        (w, g, acc, step), lr = self.prologue(ins, attrs)
        eps = attrs["eps"]
        if attrs["weight_decay"]:
            g = g + attrs["weight_decay"] * w
        clr = lr / (1.0 + (step - 1.0) * attrs["lr_decay"])
        acc = acc + g * g
        denom = (acc + eps).sqrt() if attrs.get("eps_inside") else acc.sqrt() + eps
        return (w - clr * (g / denom), acc)              # torch's addcdiv grouping


@register
class AdadeltaUpdate(_Update):
    """g' = g + wd*w;  s = rho*s + (1-rho)*g'^2;  d = sqrt(u + eps)/sqrt(s + eps) * g';
    u = rho*u + (1-rho)*d^2;  w = w - lr*d.  Inputs (w, g, s, u, lr)."""

    name = "adadelta_update"
    triton = "elementwise"
    n_slots = 2

    def triton_ew(self, e, ins, attrs):
        (w, g, sq, acc), lr = self.prologue_ew(e, ins, attrs)
        rho, eps = attrs["rho"], attrs["eps"]
        if attrs["weight_decay"]:
            g = e.let(f"{g} + {attrs['weight_decay']!r} * {w}")
        sq = e.let(f"{rho!r} * {sq} + {1.0 - rho!r} * {g} * {g}")
        delta = e.let(f"tl.sqrt({acc} + {eps!r}) / tl.sqrt({sq} + {eps!r}) * {g}")
        acc = e.let(f"{rho!r} * {acc} + {1.0 - rho!r} * {delta} * {delta}")
        return [e.let(f"{w} - {lr} * {delta}"), sq, acc]

    def forward(self, ins, attrs, ctx):
        (w, g, sq, acc), lr = self.prologue(ins, attrs)
        rho, eps = attrs["rho"], attrs["eps"]
        if attrs["weight_decay"]:
            g = g + attrs["weight_decay"] * w
        sq = rho * sq + (1.0 - rho) * g * g
        delta = (acc + eps).sqrt() / (sq + eps).sqrt() * g
        acc = rho * acc + (1.0 - rho) * delta * delta
        return (w - lr * delta, sq, acc)

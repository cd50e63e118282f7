"""Losses: each reduces a batch to a scalar mean, with its gradient as a backward op."""
from __future__ import annotations

from ._lazy import F, torch

from ..ir import TensorType
from .registry import Arg, Op, ShapeError, register

SCALAR = TensorType(())


@register
class CrossEntropy(Op):
    name = "cross_entropy"
    triton = "loss"
    triton_prologue = (0,)                 # logits read with ctx.load
    triton_epilogue = True
    n_inputs = 2
    args = (Arg("label_smoothing", 0.0, kind="float"),)
    doc = "Softmax cross-entropy of logits [N, C] against integer labels [N], averaged."

    def check(self, attrs):
        if not 0.0 <= attrs["label_smoothing"] < 1.0:
            return f"label_smoothing must be in [0, 1), got {attrs['label_smoothing']}"
        return None

    def infer(self, ins, attrs):
        logits, labels = ins
        if logits.rank != 2:
            raise ShapeError(f"cross_entropy expects logits [N, classes], got {logits}; "
                             "add `flatten` and a final `linear(classes)`")
        if labels.rank != 1 or labels.dtype != "i64":
            raise ShapeError(f"cross_entropy expects integer labels [N], got {labels}")
        problem = self.check(attrs)
        if problem:
            raise ShapeError(problem)
        return [SCALAR]

    def forward(self, ins, attrs, ctx):
        logits, labels = ins
        return (F.cross_entropy(logits, labels, label_smoothing=attrs["label_smoothing"]),)

    def vjp(self, b, node, gouts, needs):
        logits, labels = node.inputs
        return [b.emit1("cross_entropy_bwd", [gouts[0], logits, labels], node.attrs), None]


@register
class CrossEntropyBwd(Op):
    """d loss / d logits = (softmax(z) - q) / N, with q the (smoothed) one-hot target."""

    name = "cross_entropy_bwd"
    triton = "loss"
    triton_prologue = (1,)
    n_inputs = 3
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, logits, labels = ins
        n, c = logits.shape
        eps = attrs["label_smoothing"]
        target = F.one_hot(labels, c).to(logits.dtype) * (1.0 - eps) + eps / c
        return (gy * (torch.softmax(logits, dim=1) - target) / n,)


@register
class Mse(Op):
    name = "mse"
    triton = "loss"
    triton_prologue = (0, 1)
    triton_epilogue = True
    n_inputs = 2
    doc = "Mean squared error over every element."

    def infer(self, ins, attrs):
        if ins[0].shape != ins[1].shape:
            raise ShapeError(f"mse needs prediction and target of one shape, got {ins[0]} and {ins[1]}")
        return [SCALAR]

    def forward(self, ins, attrs, ctx):
        return (F.mse_loss(ins[0], ins[1]),)

    def vjp(self, b, node, gouts, needs):
        pred, target = node.inputs
        return [b.emit1("mse_bwd", [gouts[0], pred, target]), None]


@register
class MseBwd(Op):
    """d loss / d pred = 2 (pred - target) / numel."""

    name = "mse_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, pred, target)
        gy, pred, target = ins
        n = 1
        for d in e.in_shape(1):
            n *= d
        return [e.let(f"{gy} * 2.0 * ({pred} - {target}) / {float(n)!r}")]
    n_inputs = 3
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, pred, target = ins
        return (gy * 2.0 * (pred - target) / pred.numel(),)


LOSSES = {"cross_entropy": "cross_entropy", "mse": "mse"}


class _Penalty(Op):
    """A parameter-norm penalty: a scalar added to the training loss."""

    def infer(self, ins, attrs):
        if attrs["strength"] < 0:
            raise ShapeError(f"{self.name}: strength must not be negative")
        return [SCALAR]

    def flops(self, ins, outs, attrs):
        return 0                                         # per-step, not per-example

    def vjp(self, b, node, gouts, needs):
        return [b.emit1(self.name + "_bwd", [gouts[0], node.inputs[0]], node.attrs)]


class _PenaltyBwd(Op):
    n_inputs = 2
    like = 1


@register
class L2Penalty(_Penalty):
    """strength * sum(w^2) (the seed's L2 parameter-norm penalty; weight decay of 2*strength)."""

    name = "l2_penalty"
    triton = "reduce"
    triton_prologue = (0,)

    def forward(self, ins, attrs, ctx):
        return (attrs["strength"] * (ins[0] * ins[0]).sum(),)


@register
class L2PenaltyBwd(_PenaltyBwd):
    name = "l2_penalty_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, w)
        return [e.let(f"{ins[0]} * {2.0 * attrs['strength']!r} * {ins[1]}")]

    def forward(self, ins, attrs, ctx):
        gy, w = ins
        return (gy * 2.0 * attrs["strength"] * w,)


@register
class L1Penalty(_Penalty):
    """strength * sum(|w|) (the L1 parameter-norm penalty, which favours sparse weights)."""

    name = "l1_penalty"
    triton = "reduce"
    triton_prologue = (0,)

    def forward(self, ins, attrs, ctx):
        return (attrs["strength"] * ins[0].abs().sum(),)


@register
class L1PenaltyBwd(_PenaltyBwd):
    """d/dw strength*|w| = strength*sign(w) (0 at w = 0, the subgradient torch uses)."""

    name = "l1_penalty_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, w): sign(0) = 0 as torch
        gy, w = ins
        sign = e.let(f"tl.where({w} > 0.0, 1.0, tl.where({w} < 0.0, -1.0, 0.0))")
        return [e.let(f"{gy} * {attrs['strength']!r} * {sign}")]

    def forward(self, ins, attrs, ctx):
        gy, w = ins
        return (gy * attrs["strength"] * torch.sign(w),)

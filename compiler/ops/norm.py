"""Normalisation layers (`bn`, `lrn`) and the small CNN activations (`leaky_relu`, `identity`).

Batch norm has two forms.  The model graph holds the inference form

    batch_norm(x, weight, bias, running_mean, running_var) {eps, momentum}

and training-mode lowering rewrites it into

    y, mean, var, var_unbiased = batch_norm_train(x, weight, bias) {eps}
    @running_mean <- ema_update(running_mean, mean)          {momentum}
    @running_var  <- ema_update(running_var, var_unbiased)   {momentum}

exactly as torch.nn.BatchNorm2d updates its buffers (the running variance takes the
unbiased batch variance).

`bn(sync=true)` (attribute `sync=true` on both forms) is synchronised batch norm for
data-parallel runs, as torch.nn.SyncBatchNorm: the batch statistics are those of the
global batch (per-channel sums all-reduced across the processes), and the backward
all-reduces the sums it needs for the input gradient; the weight and bias gradients stay
per process (the gradient all-reduce averages them). Alone, it is plain batch norm.
Every process holds an equal share of the batch, so the global count is the local one
times the number of processes.  Every backward is an explicit formula, not autograd.
"""
from __future__ import annotations

from ._lazy import F, torch

from ..ir import TensorType
from ..limits import MAX_WINDOW, fmt_int
from .collective import all_reduce_flat, process_world
from .registry import Arg, LocalState, Op, ShapeError, register


def _channels(t: TensorType, what: str) -> int:
    if t.rank not in (2, 4):
        raise ShapeError(f"{what} expects [N, C] or [N, C, H, W], got {t}")
    c = t.shape[1]
    if not isinstance(c, int):
        raise ShapeError(f"{what} needs a static channel count, got {t}")
    return c


def _reduce_dims(x) -> tuple[int, ...]:
    return (0,) if x.dim() == 2 else (0, 2, 3)


def _per_channel(v, x):
    """A [C] tensor shaped to broadcast against x ([N, C] or [N, C, H, W])."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


# -- batch normalisation -----------------------------------------------------------------------

@register
class BatchNorm(Op):
    name = "batch_norm"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (x, w, b, mean, var): per channel
        x, w, b, mean, var = ins
        inv = e.let(f"1.0 / tl.sqrt({var} + {attrs['eps']!r})")
        return [e.let(f"({x} - {mean}) * {inv} * {w} + {b}")]
    layer = "bn"
    args = (Arg("eps", 1e-5, kind="float", doc="added to the variance for stability"),
            Arg("momentum", 0.1, kind="float", doc="weight of the new batch in the running stats"),
            Arg("sync", False, kind="bool",
                doc="data-parallel runs: statistics of the global batch (SyncBatchNorm)"))
    doc = "Batch normalisation over N (and H, W) per channel, as nn.BatchNorm1d/2d."

    def attrs(self, bound, in_types):
        attrs = {"eps": float(bound.get("eps", 1e-5)),
                 "momentum": float(bound.get("momentum", 0.1))}
        if bound.get("sync", False):
            attrs["sync"] = True                      # only when set: the IR text stays short
        return attrs

    def infer(self, ins, attrs):
        _channels(ins[0], "bn")
        if not attrs["eps"] > 0.0:
            raise ShapeError(f"bn eps must be positive, got {attrs['eps']}")
        if not 0.0 <= attrs["momentum"] <= 1.0:
            raise ShapeError(f"bn momentum must be in [0, 1], got {attrs['momentum']}")
        return [ins[0]]

    def state(self, ins, attrs):
        c = _channels(ins[0], "bn")
        return [LocalState("weight", (c,), "ones"),
                LocalState("bias", (c,), "zeros"),
                LocalState("running_mean", (c,), "zeros", trainable=False, kind="buffer"),
                LocalState("running_var", (c,), "ones", trainable=False, kind="buffer")]

    def flops(self, ins, outs, attrs):
        return 2 * (ins[0].per_sample() or 0)         # y = x * scale + shift

    def forward(self, ins, attrs, ctx):              # inference: the running statistics
        x, w, b, mean, var = ins
        return (F.batch_norm(x, mean, var, w, b, False, 0.0, attrs["eps"]),)

    def vjp(self, b, node, gouts, needs):
        x, w, _, mean, var = node.inputs
        gx, gw, gb = b.emit("batch_norm_eval_bwd", [gouts[0], x, w, mean, var],
                            {"eps": node.attrs["eps"]})
        return [gx if needs[0] else None, gw if needs[1] else None,
                gb if needs[2] else None, None, None]

    def lower_train(self, b, node, ins):
        x, w, bias, running_mean, running_var = ins
        attrs = {k: node.attrs[k] for k in ("eps", "sync") if k in node.attrs}
        y, mean, var, var_unbiased = b.emit("batch_norm_train", [x, w, bias], attrs)
        m = {"momentum": node.attrs["momentum"]}
        b.graph.updates[running_mean.state.name] = b.emit1("ema_update", [running_mean, mean], m)
        b.graph.updates[running_var.state.name] = b.emit1("ema_update",
                                                          [running_var, var_unbiased], m)
        return [y]


class _BatchNormBwd(Op):
    """Inputs (gy, x, weight, mean, var) -> (gx, gweight, gbias)."""

    n_inputs = 5

    def infer(self, ins, attrs):
        return [ins[1], ins[2], ins[2]]


@register
class BatchNormEvalBwd(_BatchNormBwd):
    """Gradients of inference-mode batch norm (statistics are constants):
    gx = gy * w / sqrt(rv + eps), gw = sum(gy * xhat), gb = sum(gy)."""

    name = "batch_norm_eval_bwd"
    triton = "norm"
    triton_prologue = (0,)

    def forward(self, ins, attrs, ctx):
        gy, x, w, mean, var = ins
        dims = _reduce_dims(x)
        invstd = torch.rsqrt(var + attrs["eps"])
        xhat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
        return (gy * _per_channel(w * invstd, x), (gy * xhat).sum(dims), gy.sum(dims))


@register
class BatchNormTrain(Op):
    """Training-mode batch norm: normalise with the batch's own statistics.

    Outputs (y, mean, biased var, unbiased var); the unbiased one feeds the running var."""

    name = "batch_norm_train"
    triton = "norm"
    triton_epilogue = True
    n_inputs = 3

    def infer(self, ins, attrs):
        c = _channels(ins[0], "bn")
        stat = TensorType((c,), ins[0].dtype)
        return [ins[0], stat, stat, stat]

    def flops(self, ins, outs, attrs):
        return 7 * (ins[0].per_sample() or 0)         # stats (~3/element) + normalise (~4)

    def forward(self, ins, attrs, ctx):
        x, w, b = ins                                 # x (N, C) or (N, C, H, W)
        dims = _reduce_dims(x)
        n = x.numel() // x.shape[1]
        if attrs.get("sync") and process_world() > 1:
            mean, var, n = _global_stats(x, dims)
        else:
            mean = x.mean(dims)                                          # (C,)
            var = x.var(dims, correction=0)                              # (C,)
        if n < 2:
            raise ValueError(f"batch norm in training needs more than one value per channel, "
                             f"got input of size {tuple(x.shape)}")
        xhat = (x - _per_channel(mean, x)) * _per_channel(torch.rsqrt(var + attrs["eps"]), x)
        y = xhat * _per_channel(w, x) + _per_channel(b, x)
        return (y, mean, var, var * (n / (n - 1)))

    def vjp(self, b, node, gouts, needs):
        gy, *gstats = gouts
        if any(g is not None for g in gstats):
            raise NotImplementedError("batch_norm_train: gradients through the batch statistics")
        x, w, _ = node.inputs
        _, mean, var, _ = node.outputs
        gx, gw, gb = b.emit("batch_norm_train_bwd", [gy, x, w, mean, var], node.attrs)
        return [gx if needs[0] else None, gw if needs[1] else None, gb if needs[2] else None]


@register
class BatchNormTrainBwd(_BatchNormBwd):
    """With xhat = (x - mean) * invstd, n values per channel:
    gb = sum(gy), gw = sum(gy * xhat), gx = w * invstd / n * (n * gy - gb - xhat * gw)."""

    name = "batch_norm_train_bwd"
    triton = "norm"
    triton_prologue = (0,)

    def forward(self, ins, attrs, ctx):
        gy, x, w, mean, var = ins
        dims = _reduce_dims(x)
        n = x.numel() // x.shape[1]
        invstd = torch.rsqrt(var + attrs["eps"])                         # (C,)
        xhat = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
        gb = gy.sum(dims)
        gw = (gy * xhat).sum(dims)
        sgb, sgw = gb, gw                 # the sums over every value the statistics saw
        if attrs.get("sync") and process_world() > 1:
            sgb, sgw = all_reduce_flat([gb, gw])
            n = n * process_world()
        gx = _per_channel(w * invstd / n, x) * (n * gy - _per_channel(sgb, x)
                                                - xhat * _per_channel(sgw, x))
        return (gx, gw, gb)


def _global_stats(x, dims):
    """(mean, biased var, count) per channel over the inputs of every process (equal
    shares): the sums first, then the squared deviations from the global mean (two
    collectives)."""
    n = x.numel() // x.shape[1] * process_world()
    (total,) = all_reduce_flat([x.sum(dims)])                            # (C,)
    mean = total / n
    (sq,) = all_reduce_flat([((x - _per_channel(mean, x)) ** 2).sum(dims)])
    return mean, sq / n, n


@register
class EmaUpdate(Op):
    """(1 - momentum) * running + momentum * batch: a running-statistic update."""

    name = "ema_update"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        r, b = ins
        m = attrs["momentum"]
        return [e.let(f"{1.0 - m!r} * {r} + {m!r} * {b}")]
    n_inputs = 2

    def infer(self, ins, attrs):
        if ins[0].shape != ins[1].shape:
            raise ShapeError(f"ema_update needs equal shapes, got {ins[0]} and {ins[1]}")
        return [ins[0]]

    def forward(self, ins, attrs, ctx):
        running, batch = ins
        m = attrs["momentum"]
        return ((1.0 - m) * running + m * batch.to(running.dtype),)

    def vjp(self, b, node, gouts, needs):
        return [None, None]


# -- local response normalisation --------------------------------------------------------------

def _channel_window_sum(t, before: int, after: int):
    """s[:, c] = sum of t[:, c - before .. c + after] (zeros outside), for any rank >= 3."""
    pad = [0, 0] * (t.dim() - 2) + [before, after]
    return F.pad(t, pad).unfold(1, before + after + 1, 1).sum(-1)


def _lrn_scale(x, attrs):
    """k + alpha/size * (sum of x^2 over the channel window), the denominator before ^beta."""
    size = attrs["size"]
    return attrs["k"] + attrs["alpha"] / size * _channel_window_sum(x * x, size // 2,
                                                                     (size - 1) // 2)


@register
class LocalResponseNorm(Op):
    name = "local_response_norm"
    triton = "norm"
    layer = "lrn"
    args = (Arg("size", 5, kind="int", doc="channels in the window"),
            Arg("alpha", 1e-4, kind="float", doc="scale (divided by size, as PyTorch does)"),
            Arg("beta", 0.75, kind="float", doc="exponent"),
            Arg("k", 2.0, kind="float", doc="additive constant"))
    doc = ("Local response norm (nn.LocalResponseNorm): x / (k + alpha/size * sum of x^2 "
           "over size neighbouring channels)^beta; note alpha is divided by size.")

    def attrs(self, bound, in_types):
        return {"size": bound.get("size", 5), "alpha": float(bound.get("alpha", 1e-4)),
                "beta": float(bound.get("beta", 0.75)), "k": float(bound.get("k", 2.0))}

    def infer(self, ins, attrs):
        if ins[0].rank < 3:
            raise ShapeError(f"lrn expects [N, C, H, W], got {ins[0]}")
        if not 1 <= attrs["size"] <= MAX_WINDOW:
            raise ShapeError(f"lrn size must be from 1 to {MAX_WINDOW:,}, got "
                             f"{fmt_int(attrs['size'])}")
        return [ins[0]]

    def flops(self, ins, outs, attrs):
        return (2 * attrs["size"] + 3) * (ins[0].per_sample() or 0)

    def forward(self, ins, attrs, ctx):
        return (F.local_response_norm(ins[0], attrs["size"], attrs["alpha"], attrs["beta"],
                                      attrs["k"]),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("local_response_norm_bwd", [gouts[0], node.inputs[0]], node.attrs)]


@register
class LocalResponseNormBwd(Op):
    """With s_c = k + alpha/size * sum_{c' in W(c)} x_c'^2 and y_c = x_c s_c^-beta:
    gx_j = gy_j s_j^-beta - 2 alpha beta / size * x_j * sum_{c : j in W(c)} gy_c x_c s_c^(-beta-1),
    where the transposed window reaches (size-1)//2 channels back and size//2 forward."""

    name = "local_response_norm_bwd"
    triton = "norm"
    n_inputs = 2
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        size, beta = attrs["size"], attrs["beta"]
        s = _lrn_scale(x, attrs)
        t = gy * x * s.pow(-beta - 1.0)
        back = _channel_window_sum(t, (size - 1) // 2, size // 2)
        return (gy * s.pow(-beta) - (2.0 * attrs["alpha"] * beta / size) * x * back,)


# -- activations common in CNNs ----------------------------------------------------------------

@register
class LeakyRelu(Op):
    name = layer = "leaky_relu"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        x = ins[0]
        return [e.let(f"tl.where({x} > 0.0, {x}, {x} * {attrs['slope']!r})")]
    args = (Arg("slope", 0.01, kind="float", doc="slope for negative inputs"),)
    doc = "x if x > 0 else slope * x (nn.LeakyReLU)."
    like = 0

    def attrs(self, bound, in_types):
        return {"slope": float(bound.get("slope", 0.01))}

    def flops(self, ins, outs, attrs):
        return ins[0].per_sample() or 0

    def forward(self, ins, attrs, ctx):
        return (F.leaky_relu(ins[0], attrs["slope"]),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("leaky_relu_bwd", [gouts[0], node.inputs[0]], node.attrs)]


@register
class LeakyReluBwd(Op):
    """gy where x > 0, slope * gy elsewhere (uses x, so any slope sign works)."""

    name = "leaky_relu_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, x)
        gy, x = ins
        return [e.let(f"tl.where({x} > 0.0, {gy}, {gy} * {attrs['slope']!r})")]
    n_inputs = 2
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        return (torch.where(x > 0, gy, gy * attrs["slope"]),)


@register
class Identity(Op):
    name = layer = "identity"
    triton = "view"
    doc = "Pass the input through unchanged (a placeholder, e.g. in a conditional)."
    like = 0

    def forward(self, ins, attrs, ctx):
        return (ins[0],)

    def vjp(self, b, node, gouts, needs):
        return [gouts[0]]

    def lower_train(self, b, node, ins):
        return [ins[0]]

    def lower_eval(self, b, node, ins):
        return [ins[0]]

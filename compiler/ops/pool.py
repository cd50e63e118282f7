"""Pooling and resampling: `maxpool`, `avgpool`, `global_avgpool`, `upsample`.

    max_pool2d(x)        {kernel, stride, padding, ceil}
    avg_pool2d(x)        {kernel, stride, padding, ceil, count_include_pad}
    global_avg_pool(x)   [N, C, H, W] -> [N, C, 1, 1]   (AdaptiveAvgPool2d(1))
    upsample_nearest(x)  {scale}  [N, C, H, W] -> [N, C, s*H, s*W]

Output sizes follow PyTorch exactly, ceil mode included (see dims.pool_out).  Each VJP is a
backward op taking (gy, x); x supplies the input size (and, for max pooling, the argmax,
which the reference backward recomputes with a forward pass rather than saving indices).
"""
from __future__ import annotations

from ._lazy import F, torch

from ..ir import TensorType
from . import dims
from .conv import image, pair
from .registry import Arg, Op, ShapeError, register


def _fmt(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"[{p[0]}, {p[1]}]"


class _Pool2d(Op):
    """Shared attrs, shape rule and FLOPs of max and average pooling."""

    args = (Arg("kernel", kind="int2", doc="window size, k or [kh, kw]"),
            Arg("stride", None, kind="int2", doc="step between windows (default: the kernel)"),
            Arg("padding", 0, kind="int2", doc="implicit padding on each side"),
            Arg("ceil", False, kind="bool", doc="round the output size up (ceil_mode)"))
    what = ""
    triton_prologue = (0,)                 # x read with ctx.load: a chain before it is inlined
    triton_epilogue = True

    def attrs(self, bound, in_types):
        kernel = pair(bound["kernel"], f"{self.what} kernel")
        stride = bound.get("stride")
        stride = kernel if stride is None else pair(stride, f"{self.what} stride")
        return {"kernel": kernel, "stride": stride,
                "padding": pair(bound.get("padding", 0), f"{self.what} padding"),
                "ceil": bool(bound.get("ceil", False))}

    def infer(self, ins, attrs):
        n, c, h, w = image(ins[0], self.what)
        k, s, p = attrs["kernel"], attrs["stride"], attrs["padding"]
        if min(k) < 1 or min(s) < 1 or min(p) < 0:
            raise ShapeError(f"{self.what} needs kernel and stride of at least 1 and padding of at "
                             f"least 0, got kernel {_fmt(k)}, stride {_fmt(s)}, padding {_fmt(p)}")
        if p[0] > k[0] // 2 or p[1] > k[1] // 2:
            raise ShapeError(f"{self.what} padding ({_fmt(p)}) must be at most half the kernel "
                             f"({_fmt(k)})")
        oh = dims.pool_out(h, k[0], s[0], p[0], attrs["ceil"])
        ow = dims.pool_out(w, k[1], s[1], p[1], attrs["ceil"])
        if dims.below_one(oh) or dims.below_one(ow):
            shown = dims.fmt_hw(*(max(d, 0) if isinstance(d, int) else d for d in (oh, ow)))
            raise ShapeError(f"a {k[0]}x{k[1]} window (stride {_fmt(s)}, padding "
                             f"{_fmt(p)}) on a {dims.fmt_hw(h, w)} input gives a {shown} output; "
                             "the input is too small here")
        return [TensorType((n, c, oh, ow), ins[0].dtype)]

    def flops(self, ins, outs, attrs):
        """One comparison (max) or one add/divide (average) per window element."""
        n = outs[0].per_sample()
        kh, kw = attrs["kernel"]
        return 0 if n is None else n * kh * kw

    def vjp(self, b, node, gouts, needs):
        return [b.emit1(self.name + "_bwd", [gouts[0], node.inputs[0]], node.attrs)]


class _PoolBwd(Op):
    n_inputs = 2
    like = 1
    triton_prologue = (0,)                 # gy read with ctx.load: a chain before it is inlined
    triton_epilogue = True


@register
class MaxPool2d(_Pool2d):
    name = "max_pool2d"
    triton = "pool"
    layer = "maxpool"
    what = "maxpool"
    doc = "2-D max pooling (nn.MaxPool2d); stride defaults to the kernel size."

    def forward(self, ins, attrs, ctx):
        return (F.max_pool2d(ins[0], attrs["kernel"], attrs["stride"], attrs["padding"],
                             ceil_mode=attrs["ceil"]),)


@register
class MaxPool2dBwd(_PoolBwd):
    """dL/dx: gy routed to each window's argmax (recomputed from x)."""

    name = "max_pool2d_bwd"
    triton = "pool"

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        k, s, p = list(attrs["kernel"]), list(attrs["stride"]), list(attrs["padding"])
        _, idx = F.max_pool2d(x, k, s, p, ceil_mode=attrs["ceil"], return_indices=True)
        return (torch.ops.aten.max_pool2d_with_indices_backward(
            gy, x, k, s, p, [1, 1], attrs["ceil"], idx),)


@register
class AvgPool2d(_Pool2d):
    name = "avg_pool2d"
    triton = "pool"
    layer = "avgpool"
    what = "avgpool"
    args = _Pool2d.args + (Arg("count_include_pad", True, kind="bool",
                               doc="count padded zeros in the divisor"),)
    doc = "2-D average pooling (nn.AvgPool2d); stride defaults to the kernel size."

    def attrs(self, bound, in_types):
        return {**super().attrs(bound, in_types),
                "count_include_pad": bool(bound.get("count_include_pad", True))}

    def forward(self, ins, attrs, ctx):
        return (F.avg_pool2d(ins[0], attrs["kernel"], attrs["stride"], attrs["padding"],
                             ceil_mode=attrs["ceil"],
                             count_include_pad=attrs["count_include_pad"]),)


@register
class AvgPool2dBwd(_PoolBwd):
    """dL/dx: each gy spread evenly over its window."""

    name = "avg_pool2d_bwd"
    triton = "pool"

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        return (torch.ops.aten.avg_pool2d_backward(
            gy, x, list(attrs["kernel"]), list(attrs["stride"]), list(attrs["padding"]),
            attrs["ceil"], attrs["count_include_pad"], None),)


@register
class GlobalAvgPool(Op):
    name = "global_avg_pool"
    triton = "pool"
    triton_prologue = (0,)                 # x read with ctx.load: a chain before it is inlined
    triton_epilogue = True
    layer = "global_avgpool"
    doc = "Mean over all positions: [N, C, H, W] -> [N, C, 1, 1]; follow it with flatten."

    def infer(self, ins, attrs):
        n, c, _, _ = image(ins[0], "global_avgpool")
        return [TensorType((n, c, 1, 1), ins[0].dtype)]

    def flops(self, ins, outs, attrs):
        return ins[0].per_sample() or 0

    def forward(self, ins, attrs, ctx):
        return (ins[0].mean(dim=(2, 3), keepdim=True),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("global_avg_pool_bwd", [gouts[0], node.inputs[0]])]


@register
class GlobalAvgPoolBwd(_PoolBwd):
    """dL/dx = gy / (H*W), broadcast over every position."""

    name = "global_avg_pool_bwd"
    triton = "pool"

    def forward(self, ins, attrs, ctx):
        gy, x = ins                                  # gy (N, C, 1, 1), x (N, C, H, W)
        h, w = x.shape[2], x.shape[3]
        return ((gy / (h * w)).expand_as(x).contiguous(),)


@register
class UpsampleNearest(Op):
    name = "upsample_nearest"
    triton = "pool"
    triton_prologue = (0,)                 # x read with ctx.load: a chain before it is inlined
    triton_epilogue = True
    layer = "upsample"
    args = (Arg("scale", 2, kind="int", doc="integer scale factor for height and width"),)
    doc = "Nearest-neighbour upsampling by an integer factor: [N,C,H,W] -> [N,C,sH,sW]."

    def infer(self, ins, attrs):
        n, c, h, w = image(ins[0], "upsample")
        s = attrs["scale"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ShapeError(f"upsample scale must be a positive integer, got {s}")
        return [TensorType((n, c, dims.scale(h, s), dims.scale(w, s)), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        s = attrs["scale"]
        return (ins[0].repeat_interleave(s, dim=2).repeat_interleave(s, dim=3),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("upsample_nearest_bwd", [gouts[0]], node.attrs)]


@register
class UpsampleNearestBwd(Op):
    """dL/dx: gy summed over each s x s block (a sum pool with stride s)."""

    name = "upsample_nearest_bwd"
    triton = "pool"
    triton_prologue = (0,)                 # gy read with ctx.load: a chain before it is inlined
    triton_epilogue = True

    def infer(self, ins, attrs):
        n, c, h, w = ins[0].shape
        s = attrs["scale"]
        return [TensorType((n, c, dims.floordiv(h, s), dims.floordiv(w, s)), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        gy, s = ins[0], attrs["scale"]              # (N, C, s*H, s*W)
        n, c, hs, ws = gy.shape
        return (gy.reshape(n, c, hs // s, s, ws // s, s).sum(dim=(3, 5)),)

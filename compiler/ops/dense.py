"""Dense prediction: learned and fixed upsampling, cropping and adaptive pooling (FCN).

    conv_transpose2d(x, weight[, bias])  x [N, C, H, W], weight [C, out/groups, kh, kw]
                                         (nn.ConvTranspose2d); its forward is conv2d's input
                                         gradient, its VJP conv2d (dL/dx) and conv2d's
                                         weight gradient (dL/dweight)
    resize_bilinear(x)       {scale, align_corners}   [N, C, H, W] -> [N, C, sH, sW]
    resize_bilinear_to(x, ref) {align_corners}        -> [N, C, ref.H, ref.W]
    crop(x, ref)             {offset}                 -> x[:, :, oh:oh+ref.H, ow:ow+ref.W]
    adaptive_avg_pool(x)     {size}                   -> [N, C, sh, sw] (AdaptiveAvgPool2d)

`ref` gives only a size (its gradient is none). Backward ops take (gy, x), x for its size.
"""
from __future__ import annotations

import math

from ._lazy import F, torch

from ..ir import TensorType
from . import dims
from .conv import _geometry, image, pair
from .registry import Arg, LocalState, Op, ShapeError, register


# -- transposed convolution --------------------------------------------------------------------

@register
class ConvTranspose2d(Op):
    name = "conv_transpose2d"
    layer = "conv_transpose"
    triton = "conv"                        # conv2d's input-gradient kernel, plus a bias
    triton_epilogue = True
    args = (Arg("out", kind="int", doc="output channels"),
            Arg("kernel", kind="int2", doc="kernel size, k or [kh, kw]"),
            Arg("stride", 1, kind="int2", doc="upsampling factor"),
            Arg("padding", 0, kind="int2", doc="rows/columns removed from each border"),
            Arg("output_padding", 0, kind="int2", doc="extra rows/columns on one side"),
            Arg("groups", 1, kind="int", doc="split channels into independent groups"),
            Arg("bias", True, kind="bool", doc="add a learned bias"),
            Arg("init", "default", kind="str",
                doc='"default" (as nn.ConvTranspose2d) or "bilinear" (FCN\'s upsampling)'))
    doc = "Transposed 2-D convolution (nn.ConvTranspose2d), optionally bilinear-initialised."

    def attrs(self, bound, in_types):
        kernel = pair(bound["kernel"], "conv_transpose kernel")
        stride = pair(bound.get("stride", 1), "conv_transpose stride")
        padding = pair(bound.get("padding", 0), "conv_transpose padding")
        out_pad = pair(bound.get("output_padding", 0), "conv_transpose output_padding")
        if min(kernel) < 1 or min(stride) < 1 or min(padding) < 0 or min(out_pad) < 0:
            raise ShapeError("conv_transpose needs kernel and stride >= 1, padding and "
                             "output_padding >= 0")
        if any(o >= s for o, s in zip(out_pad, stride)):
            raise ShapeError(f"conv_transpose output_padding {list(out_pad)} must be smaller "
                             f"than the stride {list(stride)}")
        init = bound.get("init", "default")
        if init not in ("default", "bilinear"):
            raise ShapeError(f'conv_transpose init is "default" or "bilinear", got "{init}"')
        return {"out": bound["out"], "kernel": kernel, "stride": stride, "padding": padding,
                "output_padding": out_pad, "dilation": (1, 1), "groups": bound.get("groups", 1),
                "bias": bound.get("bias", True), "init": init}

    def infer(self, ins, attrs):
        n, c, h, w = image(ins[0], "conv_transpose")
        out, groups = attrs["out"], attrs["groups"]
        if not isinstance(c, int) or out < 1 or groups < 1 or c % groups or out % groups:
            raise ShapeError(f"conv_transpose with groups={groups} needs input ({c}) and output "
                             f"({out}) channels divisible by it")
        if attrs["init"] == "bilinear" and (groups != 1 or c != out):
            raise ShapeError(f'init="bilinear" upsamples each channel alone: it needs as many '
                             f"output channels as input channels ({c}) and groups=1")
        size = [dims.add(dims.scale(d, s), (k - 1) + op + 1 - 2 * p - s) for d, k, s, p, op in
                zip((h, w), attrs["kernel"], attrs["stride"], attrs["padding"],
                    attrs["output_padding"])]
        if any(dims.below_one(d) for d in size):
            raise ShapeError(f"conv_transpose on {dims.fmt_hw(h, w)} gives no output pixels")
        return [TensorType((n, out, *size), ins[0].dtype)]

    def state(self, ins, attrs):
        c, (kh, kw), groups = ins[0].shape[1], attrs["kernel"], attrs["groups"]
        shape = (c, attrs["out"] // groups, kh, kw)
        if attrs["init"] == "bilinear":
            st = [LocalState("weight", shape, "bilinear")]
            init = "zeros"
        else:                                  # torch: fan_in from weight.size(1) * kh * kw
            init = f"uniform({1.0 / math.sqrt(shape[1] * kh * kw):.6g})"
            st = [LocalState("weight", shape, init)]
        if attrs["bias"]:
            st.append(LocalState("bias", (attrs["out"],), init))
        return st

    def flops(self, ins, outs, attrs):
        n_in = ins[0].per_sample()
        if n_in is None:
            return 0
        kh, kw = attrs["kernel"]
        return 2 * n_in * (attrs["out"] // attrs["groups"]) * kh * kw

    def forward(self, ins, attrs, ctx):
        x, w, *b = ins
        return (F.conv_transpose2d(x, w, b[0] if b else None, attrs["stride"], attrs["padding"],
                                   attrs["output_padding"], attrs["groups"]),)

    def vjp(self, b, node, gouts, needs):
        (gy,) = gouts                                               # (N, out, OH, OW)
        x, w, *bias = node.inputs
        a = _geometry(node.attrs)
        gx = b.emit1("conv2d", [gy, w], {**a, "out": x.type.shape[1], "bias": False}) \
            if needs[0] else None                                   # (N, C, H, W)
        gw = b.emit1("conv2d_bwd_weight", [x, gy], a) if needs[1] else None   # (C, out/g, kh, kw)
        grads = [gx, gw]
        if bias:
            grads.append(b.emit1("sum", [gy], {"dims": (0, 2, 3)}) if needs[2] else None)
        return grads


def bilinear_filter(shape: tuple) -> "torch.Tensor":
    """FCN's upsampling weights [C, C, k, k]: each channel's own bilinear kernel on the
    diagonal, zeros across channels (fcn.berkeleyvision.org surgery.upsample_filt)."""
    c, o, kh, kw = shape

    def taps(k):
        factor = (k + 1) // 2
        center = factor - 1 if k % 2 == 1 else factor - 0.5
        return 1 - (torch.arange(k, dtype=torch.float64) - center).abs() / factor

    filt = (taps(kh)[:, None] * taps(kw)[None, :]).float()
    w = torch.zeros(shape, dtype=torch.float32)
    for i in range(min(c, o)):
        w[i, i] = filt
    return w


# -- bilinear resizing -------------------------------------------------------------------------

class _Resize(Op):
    """Bilinear interpolation (F.interpolate(mode="bilinear")) to the output's size."""

    triton = "dense"
    triton_epilogue = True

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("resize_bilinear_bwd", [gouts[0], node.inputs[0]],
                        {"align_corners": node.attrs["align_corners"]}),
                *[None] * (len(node.inputs) - 1)]

    def flops(self, ins, outs, attrs):
        return 7 * (outs[0].per_sample() or 0)


@register
class ResizeBilinear(_Resize):
    name = "resize_bilinear"
    layer = "resize"
    args = (Arg("scale", 2, kind="int", doc="integer factor for height and width"),
            Arg("align_corners", False, kind="bool", doc="as F.interpolate's align_corners"))
    doc = "Bilinear resizing by an integer factor (F.interpolate, mode bilinear)."

    def infer(self, ins, attrs):
        n, c, h, w = image(ins[0], "resize")
        s = attrs["scale"]
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ShapeError(f"resize scale must be a positive integer, got {s}")
        return [TensorType((n, c, dims.scale(h, s), dims.scale(w, s)), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        x = ins[0]
        s = attrs["scale"]
        return (F.interpolate(x, size=(x.shape[2] * s, x.shape[3] * s), mode="bilinear",
                              align_corners=attrs["align_corners"]),)


@register
class ResizeBilinearTo(_Resize):
    name = "resize_bilinear_to"
    layer = "resize_to"
    n_inputs = 2
    args = (Arg("align_corners", False, kind="bool", doc="as F.interpolate's align_corners"),)
    doc = "Bilinear resizing to the height and width of a second tensor: resize_to(x, ref)."

    def infer(self, ins, attrs):
        n, c, _, _ = image(ins[0], "resize_to")
        _, _, h, w = image(ins[1], "resize_to's reference")
        return [TensorType((n, c, h, w), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        x, ref = ins
        return (F.interpolate(x, size=tuple(ref.shape[2:]), mode="bilinear",
                              align_corners=attrs["align_corners"]),)


@register
class ResizeBilinearBwd(Op):
    """dL/dx of bilinear resizing: each output's gradient spread back over its four taps."""

    name = "resize_bilinear_bwd"
    triton = "dense"
    triton_epilogue = True
    n_inputs = 2
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        return (torch.ops.aten.upsample_bilinear2d_backward(
            gy.contiguous(), list(gy.shape[2:]), list(x.shape), attrs["align_corners"]),)


# -- crop ---------------------------------------------------------------------------------------

@register
class Crop(Op):
    name = layer = "crop"
    triton = "dense"
    triton_epilogue = True
    n_inputs = 2
    args = (Arg("offset", 0, kind="int2", doc="rows and columns skipped at the top left"),)
    doc = "Crop x to the height and width of ref, from (offset, offset): crop(x, ref)."

    def attrs(self, bound, in_types):
        off = pair(bound.get("offset", 0), "crop offset")
        if min(off) < 0:
            raise ShapeError(f"crop offset must not be negative, got {list(off)}")
        return {"offset": off}

    def infer(self, ins, attrs):
        n, c, h, w = image(ins[0], "crop")
        _, _, rh, rw = image(ins[1], "crop's reference")
        for have, want, o, what in ((h, rh, attrs["offset"][0], "height"),
                                    (w, rw, attrs["offset"][1], "width")):
            if isinstance(have, int) and isinstance(want, int) and want + o > have:
                raise ShapeError(f"crop cannot cut a {what} of {want} at offset {o} from "
                                 f"{ins[0]}")
        return [TensorType((n, c, rh, rw), ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        x, ref = ins
        (oh, ow), (h, w) = attrs["offset"], ref.shape[2:]
        return (x[:, :, oh:oh + h, ow:ow + w],)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("crop_bwd", [gouts[0], node.inputs[0]], node.attrs), None]


@register
class CropBwd(Op):
    """dL/dx of crop: gy in its window, zeros elsewhere."""

    name = "crop_bwd"
    triton = "dense"
    triton_epilogue = True
    n_inputs = 2
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        (oh, ow), (h, w) = attrs["offset"], gy.shape[2:]
        return (F.pad(gy, (ow, x.shape[3] - ow - w, oh, x.shape[2] - oh - h)),)


# -- adaptive average pooling -------------------------------------------------------------------

@register
class AdaptiveAvgPool(Op):
    name = "adaptive_avg_pool"
    triton = "dense"
    triton_epilogue = True
    layer = "adaptive_avgpool"
    args = (Arg("size", kind="int2", doc="output size, s or [sh, sw]"),)
    doc = "Adaptive average pooling to a fixed output size (nn.AdaptiveAvgPool2d)."

    def attrs(self, bound, in_types):
        size = pair(bound["size"], "adaptive_avgpool size")
        if min(size) < 1:
            raise ShapeError(f"adaptive_avgpool size must be at least 1, got {list(size)}")
        return {"size": size}

    def infer(self, ins, attrs):
        n, c, _, _ = image(ins[0], "adaptive_avgpool")
        return [TensorType((n, c, *attrs["size"]), ins[0].dtype)]

    def flops(self, ins, outs, attrs):
        return ins[0].per_sample() or 0

    def forward(self, ins, attrs, ctx):
        return (F.adaptive_avg_pool2d(ins[0], attrs["size"]),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("adaptive_avg_pool_bwd", [gouts[0], node.inputs[0]], node.attrs)]


@register
class AdaptiveAvgPoolBwd(Op):
    """dL/dx: each output's gradient shared equally over its window."""

    name = "adaptive_avg_pool_bwd"
    triton = "dense"
    triton_epilogue = True
    n_inputs = 2
    like = 1

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        return (torch.ops.aten._adaptive_avg_pool2d_backward(gy.contiguous(), x),)

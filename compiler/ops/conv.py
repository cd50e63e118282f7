"""2-D convolution: the `conv` layer (op `conv2d`) and the backward ops its VJP emits.

    conv2d(x, weight[, bias])          x [N, C, H, W], weight [out, C/groups, kh, kw]
    conv2d_bwd_input(gy, x, weight)    dL/dx  (x supplies only the input size)
    conv2d_bwd_weight(gy, x)           dL/dweight
    sum(gy) {dims=[0,2,3]}             dL/dbias

Weights use PyTorch's layout and default initialisation (U(-1/sqrt(fan_in), 1/sqrt(fan_in))
for weight and bias, fan_in = C/groups * kh * kw), so checkpoints load into nn.Conv2d.
"""
from __future__ import annotations

from ._lazy import F, torch

from ..ir import TensorType
from ..limits import MAX_DIM, fmt_int, inv_sqrt
from . import dims
from .registry import Arg, LocalState, Op, ShapeError, register


def pair(v, what: str = "value") -> tuple[int, int]:
    """An int or an (a, b) pair as a pair of ints, each at most the dimension limit (a
    kernel, stride, padding or dilation past it could never fit, and overflows ONNX's
    int64 attributes)."""
    if isinstance(v, bool):
        raise ShapeError(f"{what} must be an integer or a pair [a, b], got {v}")
    if isinstance(v, int):
        v = (v, v)
    if not (isinstance(v, (tuple, list)) and len(v) == 2 and all(
            isinstance(x, int) and not isinstance(x, bool) for x in v)):
        raise ShapeError(f"{what} must be an integer or a pair [a, b], got {v}")
    big = next((x for x in v if abs(x) > MAX_DIM), None)
    if big is not None:
        raise ShapeError(f"{what} of {fmt_int(big)} is more than the limit of {MAX_DIM:,}")
    return (v[0], v[1])


def image(t: TensorType, what: str) -> tuple:
    """(N, C, H, W) of a 4-D input, or a ShapeError that says what the layer needs."""
    if t.rank != 4:
        raise ShapeError(f"{what} expects an image batch [N, C, H, W], got {t}")
    return t.shape


def _fmt_pair(p: tuple[int, int]) -> str:
    return str(p[0]) if p[0] == p[1] else f"[{p[0]}, {p[1]}]"


def conv_describe(a: dict) -> str:
    """'a 3x3 kernel (stride 2, padding 1)' for error messages."""
    (kh, kw), extra = a["kernel"], [f"stride {_fmt_pair(a['stride'])}",
                                    f"padding {_fmt_pair(a['padding'])}"]
    if a.get("dilation", (1, 1)) != (1, 1):
        extra.append(f"dilation {_fmt_pair(a['dilation'])}")
    return f"a {kh}x{kw} kernel ({', '.join(extra)})"


def conv_out_hw(h, w, a: dict):
    """Output (H, W) of a convolution; a ShapeError when it would be smaller than one pixel."""
    oh = dims.conv_out(h, a["kernel"][0], a["stride"][0], a["padding"][0], a["dilation"][0])
    ow = dims.conv_out(w, a["kernel"][1], a["stride"][1], a["padding"][1], a["dilation"][1])
    if dims.below_one(oh) or dims.below_one(ow):
        shown = dims.fmt_hw(max(oh, 0) if isinstance(oh, int) else oh,
                            max(ow, 0) if isinstance(ow, int) else ow)
        raise ShapeError(f"{conv_describe(a)} on a {dims.fmt_hw(h, w)} input gives "
                         f"a {shown} output; use a smaller kernel or stride, or more padding")
    return oh, ow


@register
class Conv2d(Op):
    name = "conv2d"
    triton = "conv"
    triton_epilogue = True
    layer = "conv"
    args = (Arg("out", kind="int", doc="output channels"),
            Arg("kernel", kind="int2", doc="kernel size, k or [kh, kw]"),
            Arg("stride", 1, kind="int2", doc="step between windows"),
            Arg("padding", None, kind="padding",
                doc='zeros added to each side: int, [ph, pw], "same" or "valid"; '
                    "default dilation*(k-1)//2"),
            Arg("dilation", 1, kind="int2", doc="spacing between kernel taps"),
            Arg("groups", 1, kind="int", doc="split channels into independent groups"),
            Arg("bias", True, kind="bool", doc="add a learned bias"))
    doc = "2-D convolution (cross-correlation, as nn.Conv2d); default padding dilation*(k-1)//2."

    def attrs(self, bound, in_types):
        kernel = pair(bound["kernel"], "conv kernel")
        stride = pair(bound.get("stride", 1), "conv stride")
        dilation = pair(bound.get("dilation", 1), "conv dilation")
        if min(kernel) < 1 or min(stride) < 1 or min(dilation) < 1:
            raise ShapeError(f"conv kernel, stride and dilation must be at least 1, got kernel "
                             f"{_fmt_pair(kernel)}, stride {_fmt_pair(stride)}, dilation "
                             f"{_fmt_pair(dilation)}")
        pad = bound.get("padding")
        if pad is None:
            padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
        elif pad == "valid":
            padding = (0, 0)
        elif pad == "same":
            if stride != (1, 1):
                raise ShapeError(f'padding="same" needs stride 1, got stride {_fmt_pair(stride)}; '
                                 "give the padding as a number")
            spans = [d * (k - 1) for k, d in zip(kernel, dilation)]
            if any(s % 2 for s in spans):
                raise ShapeError(f'padding="same" needs an odd kernel (with dilation), got '
                                 f"{kernel[0]}x{kernel[1]}: the padding would be uneven")
            padding = (spans[0] // 2, spans[1] // 2)
        else:
            padding = pair(pad, "conv padding")
        if min(padding) < 0:
            raise ShapeError(f"conv padding must not be negative, got {_fmt_pair(padding)}")
        return {"out": bound["out"], "kernel": kernel, "stride": stride, "padding": padding,
                "dilation": dilation, "groups": bound.get("groups", 1),
                "bias": bound.get("bias", True)}

    def _check(self, x: TensorType, a: dict) -> tuple:
        n, c, h, w = image(x, "conv")
        if not isinstance(c, int):
            raise ShapeError(f"conv needs a static channel count, got {x}")
        out, groups = a["out"], a["groups"]
        if out < 1 or groups < 1:
            raise ShapeError(f"conv needs at least one output channel and group, got out={out}, "
                             f"groups={groups}")
        if c % groups or out % groups:
            raise ShapeError(f"conv with groups={groups} needs input channels ({c}) and output "
                             f"channels ({out}) divisible by {groups}")
        return n, c, h, w

    def infer(self, ins, attrs):
        n, c, h, w = self._check(ins[0], attrs)
        oh, ow = conv_out_hw(h, w, attrs)
        return [TensorType((n, attrs["out"], oh, ow), ins[0].dtype)]

    def state(self, ins, attrs):
        _, c, _, _ = self._check(ins[0], attrs)
        kh, kw = attrs["kernel"]
        cin = c // attrs["groups"]
        bound = inv_sqrt(cin * kh * kw)
        st = [LocalState("weight", (attrs["out"], cin, kh, kw), f"uniform({bound:.6g})")]
        if attrs["bias"]:
            st.append(LocalState("bias", (attrs["out"],), f"uniform({bound:.6g})"))
        return st

    def flops(self, ins, outs, attrs):
        n_out = outs[0].per_sample()                 # out * OH * OW; None when symbolic
        if n_out is None:
            return 0
        kh, kw = attrs["kernel"]
        macs = (ins[0].shape[1] // attrs["groups"]) * kh * kw
        return n_out * 2 * macs + (n_out if attrs["bias"] else 0)

    def forward(self, ins, attrs, ctx):
        x, w, *b = ins
        return (F.conv2d(x, w, b[0] if b else None, attrs["stride"], attrs["padding"],
                         attrs["dilation"], attrs["groups"]),)

    def vjp(self, b, node, gouts, needs):
        (gy,) = gouts                                               # (N, out, OH, OW)
        x, w, *bias = node.inputs
        a = _geometry(node.attrs)
        gx = b.emit1("conv2d_bwd_input", [gy, x, w], a) if needs[0] else None      # (N, C, H, W)
        gw = b.emit1("conv2d_bwd_weight", [gy, x], a) if needs[1] else None  # (out, C/g, kh, kw)
        grads = [gx, gw]
        if bias:
            grads.append(b.emit1("sum", [gy], {"dims": (0, 2, 3)}) if needs[2] else None)
        return grads


def _geometry(attrs: dict) -> dict:
    return {k: attrs[k] for k in ("kernel", "stride", "padding", "dilation", "groups")}


def _conv_backward(gy, x, w, attrs, mask):
    return torch.ops.aten.convolution_backward(
        gy, x, w, None, list(attrs["stride"]), list(attrs["padding"]), list(attrs["dilation"]),
        False, [0, 0], attrs["groups"], mask)


@register
class Conv2dBwdInput(Op):
    """dL/dx of conv2d: a transposed convolution of gy with the weight."""

    name = "conv2d_bwd_input"
    triton = "conv"
    triton_epilogue = True
    n_inputs = 3
    like = 1

    def flops(self, ins, outs, attrs):
        n = ins[0].per_sample()
        kh, kw = attrs["kernel"]
        return 0 if n is None else 2 * n * ins[2].shape[1] * kh * kw

    def forward(self, ins, attrs, ctx):
        gy, x, w = ins
        return (_conv_backward(gy, x, w, attrs, [True, False, False])[0],)


@register
class Conv2dBwdWeight(Op):
    """dL/dweight of conv2d: a correlation of the input with gy."""

    name = "conv2d_bwd_weight"
    triton = "conv"
    n_inputs = 2

    def infer(self, ins, attrs):
        gy, x = ins
        kh, kw = attrs["kernel"]
        return [TensorType((gy.shape[1], x.shape[1] // attrs["groups"], kh, kw), gy.dtype)]

    def flops(self, ins, outs, attrs):
        n = ins[0].per_sample()
        kh, kw = attrs["kernel"]
        return 0 if n is None else 2 * n * (ins[1].shape[1] // attrs["groups"]) * kh * kw

    def forward(self, ins, attrs, ctx):
        gy, x = ins
        kh, kw = attrs["kernel"]
        shape = (gy.shape[1], x.shape[1] // attrs["groups"], kh, kw)
        w = gy.new_empty(1).expand(shape)           # only its shape is read
        return (_conv_backward(gy, x, w, attrs, [False, True, False])[1],)

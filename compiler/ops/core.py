"""Dense-network ops: linear, activations, dropout, flatten, and the elementwise and
matrix primitives their vector-Jacobian products are written in."""
from __future__ import annotations

from ._lazy import torch

from ..ir import TensorType
from ..limits import inv_sqrt
from .registry import Arg, LocalState, Op, ShapeError, register


def _feature_dim(t: TensorType, what: str) -> int:
    if t.rank != 2:
        raise ShapeError(f"{what} expects a [N, features] input, got {t}; add `flatten` before it")
    d = t.shape[1]
    if not isinstance(d, int):
        raise ShapeError(f"{what} needs a static feature size, got {t}")
    return d


# -- layers ------------------------------------------------------------------------------------

@register
class Linear(Op):
    name = "linear"
    triton = "matmul"
    triton_epilogue = True
    layer = "linear"
    args = (Arg("out", kind="int", doc="output features"),
            Arg("bias", True, kind="bool", doc="add a learned bias"))
    doc = "Fully connected layer: y = x W^T + b (W is [out, in], PyTorch's layout)."

    def infer(self, ins, attrs):
        _feature_dim(ins[0], "linear")
        if attrs["out"] < 1:
            raise ShapeError(f"linear needs at least one output feature, got {attrs['out']}")
        return [TensorType((ins[0].shape[0], attrs["out"]))]

    def state(self, ins, attrs):
        fan_in = _feature_dim(ins[0], "linear")
        bound = inv_sqrt(fan_in)
        st = [LocalState("weight", (attrs["out"], fan_in), f"uniform({bound:.6g})")]
        if attrs["bias"]:
            st.append(LocalState("bias", (attrs["out"],), f"uniform({bound:.6g})"))
        return st

    def flops(self, ins, outs, attrs):
        return 2 * ins[0].shape[1] * attrs["out"] + (attrs["out"] if attrs["bias"] else 0)

    def forward(self, ins, attrs, ctx):
        x, w, *b = ins
        return (torch.nn.functional.linear(x, w, b[0] if b else None),)

    def vjp(self, b, node, gouts, needs):
        (gy,) = gouts
        x, w, *bias = node.inputs
        gx = b.emit1("matmul", [gy, w]) if needs[0] else None                       # (N, in)
        gw = b.emit1("matmul", [gy, x], {"transpose_a": True}) if needs[1] else None  # (out, in)
        grads = [gx, gw]
        if bias:
            grads.append(b.emit1("sum", [gy], {"dims": (0,)}) if needs[2] else None)
        return grads


class _Unary(Op):
    """An elementwise activation whose backward is written in terms of its output."""

    like = 0

    def flops(self, ins, outs, attrs):
        return ins[0].per_sample() or 0

    def vjp(self, b, node, gouts, needs):
        return [b.emit1(self.name + "_bwd", [gouts[0], node.outputs[0]])]


class _UnaryBwd(Op):
    n_inputs = 2
    like = 0


@register
class Relu(_Unary):
    name = layer = "relu"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        return [e.let(f"tl.maximum({ins[0]}, 0.0)")]
    doc = "max(x, 0)."

    def forward(self, ins, attrs, ctx):
        return (torch.relu(ins[0]),)


@register
class ReluBwd(_UnaryBwd):
    name = "relu_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, y)
        return [e.let(f"tl.where({ins[1]} > 0.0, {ins[0]}, 0.0)")]

    def forward(self, ins, attrs, ctx):
        gy, y = ins
        return (gy * (y > 0).to(gy.dtype),)


@register
class Sigmoid(_Unary):
    name = layer = "sigmoid"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        return [e.let(f"1.0 / (1.0 + tl.exp(-{ins[0]}))")]
    doc = "1 / (1 + exp(-x))."

    def forward(self, ins, attrs, ctx):
        return (torch.sigmoid(ins[0]),)


@register
class SigmoidBwd(_UnaryBwd):
    name = "sigmoid_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, y)
        gy, y = ins
        return [e.let(f"{gy} * {y} * (1.0 - {y})")]

    def forward(self, ins, attrs, ctx):
        gy, y = ins
        return (gy * y * (1 - y),)


@register
class Tanh(_Unary):
    name = layer = "tanh"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # 2*sigmoid(2x) - 1: no libdevice needed
        return [e.let(f"2.0 / (1.0 + tl.exp(-2.0 * {ins[0]})) - 1.0")]
    doc = "Hyperbolic tangent."

    def forward(self, ins, attrs, ctx):
        return (torch.tanh(ins[0]),)


@register
class TanhBwd(_UnaryBwd):
    name = "tanh_bwd"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):               # (gy, y)
        gy, y = ins
        return [e.let(f"{gy} * (1.0 - {y} * {y})")]

    def forward(self, ins, attrs, ctx):
        gy, y = ins
        return (gy * (1 - y * y),)


@register
class Softmax(_Unary):
    name = layer = "softmax"
    triton = "reduce"
    triton_prologue = (0,)                 # x read with ctx.load
    triton_epilogue = True
    doc = "Softmax over the feature (channel) dimension."

    def forward(self, ins, attrs, ctx):
        return (torch.softmax(ins[0], dim=1),)


@register
class SoftmaxBwd(_UnaryBwd):
    name = "softmax_bwd"
    triton = "reduce"
    triton_prologue = (0, 1)               # gy, y read with ctx.load
    triton_epilogue = True

    def forward(self, ins, attrs, ctx):
        gy, y = ins
        return (y * (gy - (gy * y).sum(dim=1, keepdim=True)),)


@register
class Flatten(Op):
    name = layer = "flatten"
    triton = "view"
    doc = "Flatten every dimension but the batch: [N, C, H, W] -> [N, C*H*W]."

    def infer(self, ins, attrs):
        t = ins[0]
        n = t.per_sample()
        if n is None:
            raise ShapeError(f"flatten needs static sizes, got {t}")
        return [TensorType((t.shape[0], n), t.dtype)]

    def forward(self, ins, attrs, ctx):
        return (ins[0].flatten(1),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("reshape", [gouts[0]], {"shape": node.inputs[0].type.shape[1:]})]


@register
class Reshape(Op):
    name = "reshape"
    triton = "view"

    def infer(self, ins, attrs):
        t = TensorType((ins[0].shape[0], *attrs["shape"]), ins[0].dtype)
        if t.per_sample() != ins[0].per_sample():
            raise ShapeError(f"cannot reshape {ins[0]} to {t}")
        return [t]

    def forward(self, ins, attrs, ctx):
        return (ins[0].reshape(ins[0].shape[0], *attrs["shape"]),)

    def vjp(self, b, node, gouts, needs):
        return [b.emit1("reshape", [gouts[0]], {"shape": node.inputs[0].type.shape[1:]})]


@register
class Dropout(Op):
    name = layer = "dropout"
    triton = "view"
    args = (Arg("p", 0.5, kind="float", doc="probability of zeroing an element"),)
    doc = "Zero each element with probability p in training, scaling the rest by 1/(1-p)."

    def infer(self, ins, attrs):
        if not 0.0 <= attrs["p"] < 1.0:
            raise ShapeError(f"dropout probability must be in [0, 1), got {attrs['p']}")
        return [ins[0]]

    def forward(self, ins, attrs, ctx):       # only reached if a graph was not lowered
        return (ins[0],)

    def lower_train(self, b, node, ins):
        if node.attrs["p"] == 0.0:
            return [ins[0]]
        mask = b.emit1("dropout_mask", [ins[0]], {"p": node.attrs["p"]})
        return [b.emit1("mul", [ins[0], mask])]

    def lower_eval(self, b, node, ins):
        return [ins[0]]


@register
class DropoutMask(Op):
    name = "dropout_mask"
    triton = "remat"
    triton_loads = False
    random = True

    def triton_ew(self, e, ins, attrs):
        """Regenerated from the step's seed wherever it is used (Philox), never stored:
        keep with probability 1-p, scaled by 1/(1-p)."""
        p = attrs["p"]
        r = e.let(f"tl.rand({e.seed()} + {e.salt()}, {e.offs}.to(tl.int32))")
        return [e.let(f"tl.where({r} >= {p!r}, {1.0 / (1.0 - p)!r}, 0.0)")]
    differentiable = False
    like = 0

    def forward(self, ins, attrs, ctx):
        x = ins[0]
        keep = 1.0 - attrs["p"]
        mask = torch.empty_like(x).bernoulli_(keep, generator=ctx.generator)
        return (mask / keep,)

    def vjp(self, b, node, gouts, needs):
        return [None]


@register
class GaussianNoise(Op):
    """std * N(0, 1) of the input's shape, drawn afresh every step (the seed's noise
    robustness: `weight_noise` adds it to each weight in the train graph). Like a dropout
    mask it is a constant to autodiff, so d(w + noise)/dw = 1; the Triton backend
    regenerates it from the step's seed (Philox) wherever it is used, never storing it."""

    name = "gaussian_noise"
    triton = "remat"
    triton_loads = False
    differentiable = False
    random = True
    like = 0

    def infer(self, ins, attrs):
        if attrs["std"] < 0:
            raise ShapeError(f"noise std must not be negative, got {attrs['std']}")
        return [ins[0]]

    def triton_ew(self, e, ins, attrs):
        return [e.let(f"tl.randn({e.seed()} + {e.salt()}, {e.offs}.to(tl.int32)) * "
                      f"{attrs['std']!r}")]

    def forward(self, ins, attrs, ctx):
        x = ins[0]
        z = torch.randn(x.shape, generator=ctx.generator, device=x.device, dtype=x.dtype)
        return (z * attrs["std"],)

    def vjp(self, b, node, gouts, needs):
        return [None]


# -- primitives used by backward passes --------------------------------------------------------

@register
class Add(Op):
    name = layer = "add"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        return [e.let(" + ".join(ins))]
    n_inputs = None
    doc = "Elementwise sum of two or more tensors of the same shape."

    def infer(self, ins, attrs):
        if len(ins) < 2:
            raise ShapeError(f"add needs at least two inputs, got {len(ins)}")
        for t in ins[1:]:
            if t.shape != ins[0].shape:
                raise ShapeError(f"add needs equal shapes, got {' and '.join(str(t) for t in ins)}")
        return [ins[0]]

    def flops(self, ins, outs, attrs):
        return (len(ins) - 1) * (ins[0].per_sample() or 0)

    def forward(self, ins, attrs, ctx):
        out = ins[0]
        for t in ins[1:]:
            out = out + t
        return (out,)

    def vjp(self, b, node, gouts, needs):
        return [gouts[0] if n else None for n in needs]


@register
class Mul(Op):
    name = "mul"
    triton = "elementwise"

    def triton_ew(self, e, ins, attrs):
        return [e.let(f"{ins[0]} * {ins[1]}")]
    n_inputs = 2

    def infer(self, ins, attrs):
        if ins[0].shape != ins[1].shape:
            raise ShapeError(f"mul needs equal shapes, got {ins[0]} and {ins[1]}")
        return [ins[0]]

    def forward(self, ins, attrs, ctx):
        return (ins[0] * ins[1],)

    def vjp(self, b, node, gouts, needs):
        a, c = node.inputs
        return [b.emit1("mul", [gouts[0], c]) if needs[0] else None,
                b.emit1("mul", [gouts[0], a]) if needs[1] else None]


@register
class Matmul(Op):
    """op(A) @ op(B) for 2-D tensors, where op transposes when asked."""

    name = "matmul"
    triton = "matmul"
    triton_epilogue = True
    n_inputs = 2

    def infer(self, ins, attrs):
        a, c = ins
        m, k = (a.shape[1], a.shape[0]) if attrs.get("transpose_a") else a.shape
        k2, n = (c.shape[1], c.shape[0]) if attrs.get("transpose_b") else c.shape
        if k != k2:
            raise ShapeError(f"matmul inner sizes differ: {a} and {c}")
        return [TensorType((m, n), a.dtype)]

    def forward(self, ins, attrs, ctx):
        a, c = ins
        if attrs.get("transpose_a"):
            a = a.t()
        if attrs.get("transpose_b"):
            c = c.t()
        return (a @ c,)


@register
class Sum(Op):
    name = "sum"
    triton = "reduce"
    triton_prologue = (0,)                 # x read with ctx.load: relu_bwd -> sum is one kernel
    triton_epilogue = True

    def infer(self, ins, attrs):
        dims = attrs["dims"]
        return [TensorType(tuple(d for i, d in enumerate(ins[0].shape) if i not in dims),
                           ins[0].dtype)]

    def forward(self, ins, attrs, ctx):
        return (ins[0].sum(dim=tuple(attrs["dims"])),)


@register
class OnesLike(Op):
    name = "ones_like"
    triton = "remat"
    triton_loads = False

    def triton_ew(self, e, ins, attrs):
        return ["1.0"]
    differentiable = False
    like = 0

    def forward(self, ins, attrs, ctx):
        return (torch.ones_like(ins[0]),)


@register
class ZerosLike(Op):
    name = "zeros_like"
    triton = "remat"
    triton_loads = False

    def triton_ew(self, e, ins, attrs):
        return ["0.0"]
    differentiable = False
    like = 0

    def forward(self, ins, attrs, ctx):
        return (torch.zeros_like(ins[0]),)


@register
class Concat(Op):
    name = layer = "concat"
    triton = "copy"
    triton_epilogue = True
    n_inputs = None
    args = (Arg("axis", 1, kind="int", doc="dimension to join along (1: channels/features)"),)
    doc = "Join tensors along a dimension (channels by default); other sizes must agree."

    def infer(self, ins, attrs):
        axis = attrs["axis"]
        ref = ins[0]
        if not 1 <= axis < ref.rank:
            raise ShapeError(f"concat axis {axis} is out of range for {ref}")
        for t in ins[1:]:
            if t.rank != ref.rank or any(a != b for i, (a, b) in enumerate(zip(t.shape, ref.shape))
                                         if i != axis):
                raise ShapeError("concat needs equal sizes outside dimension "
                                 f"{axis}: {' and '.join(str(t) for t in ins)}")
        sizes = [t.shape[axis] for t in ins]
        if not all(isinstance(d, int) for d in sizes):
            raise ShapeError(f"concat along dimension {axis} needs static sizes there, got "
                             f"{' and '.join(str(t) for t in ins)}")
        return [TensorType(ref.shape[:axis] + (sum(sizes),) + ref.shape[axis + 1:], ref.dtype)]

    def forward(self, ins, attrs, ctx):
        return (torch.cat(ins, dim=attrs["axis"]),)

    def vjp(self, b, node, gouts, needs):
        axis, start, grads = node.attrs["axis"], 0, []
        for v, need in zip(node.inputs, needs):
            stop = start + v.type.shape[axis]
            grads.append(b.emit1("slice", [gouts[0]], {"axis": axis, "start": start,
                                                        "stop": stop}) if need else None)
            start = stop
        return grads


@register
class Slice(Op):
    name = "slice"
    triton = "copy"
    triton_prologue = (0,)                 # gy read with ctx.load: a chain before it is inlined
    triton_epilogue = True

    def infer(self, ins, attrs):
        t, axis = ins[0], attrs["axis"]
        size = attrs["stop"] - attrs["start"]
        return [TensorType(t.shape[:axis] + (size,) + t.shape[axis + 1:], t.dtype)]

    def forward(self, ins, attrs, ctx):
        return (ins[0].narrow(attrs["axis"], attrs["start"], attrs["stop"] - attrs["start"]),)

    def vjp(self, b, node, gouts, needs):
        raise NotImplementedError("slice is only used in backward graphs")

"""ONNX export: the inference graph as an ONNX model (opset 17), weights as initializers.

    data = export_onnx(spec, model.state)        # bytes of an onnx.ModelProto
    open("net.onnx", "wb").write(data)           # or: dlc compile net.dls --emit onnx -o net.onnx

The exported graph is `lower(spec.graph, "eval")` (dropout gone, batch norm on its
running statistics).  The batch dimension is the symbolic "N"; declared spatial
symbols (`f32[3, H, W]`) stay symbolic.  Input names are the spec's input names and
output names are `graph.output_names`; every parameter and buffer becomes an
initializer under its dlc name (`block1.conv1.weight`).

Each IR op maps to ONNX through one function in `ONNX_OPS`, keyed by op name; an op
without a mapping is a `UserError` naming it.  The result passes `onnx.checker`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..spec.diagnostics import UserError
from .ir import Graph, Node, TensorType
from .lower import live_nodes, lower

OPSET = 17
IR_VERSION = 8                        # the IR version that goes with opset 17 (onnx 1.12)
MAX_PROTO_BYTES = 2**31 - 1           # protobuf's limit for one serialized message
_DTYPES = {"f32": TensorProto.FLOAT, "i64": TensorProto.INT64, "f16": TensorProto.FLOAT16}


class _Emitter:
    """Collects ONNX nodes and initializers; hands out fresh tensor names."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._names: set[str] = set()

    def fresh(self, hint: str) -> str:
        name, k = hint, 1
        while name in self._names:
            k += 1
            name = f"{hint}_{k}"
        self._names.add(name)
        return name

    def const(self, hint: str, array: np.ndarray) -> str:
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op_type: str, inputs: list[str], outputs: list[str], **attrs) -> None:
        node_name = self.fresh(f"{outputs[0]}/{op_type}")
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=node_name, **attrs))


Lowering = Callable[[_Emitter, Node, list[str], list[str]], None]
ONNX_OPS: dict[str, Lowering] = {}


def onnx_op(*names: str):
    """Register the ONNX lowering of the IR ops `names`."""
    def deco(fn: Lowering) -> Lowering:
        for n in names:
            ONNX_OPS[n] = fn
        return fn
    return deco


def _pair(v) -> list[int]:
    if isinstance(v, (tuple, list)):
        assert len(v) == 2, v
        return [int(v[0]), int(v[1])]
    return [int(v), int(v)]


def _pads(padding) -> list[int]:
    ph, pw = _pair(padding)
    return [ph, pw, ph, pw]                          # ONNX: [top, left, bottom, right]


# -- dense ops ----------------------------------------------------------------------------------

@onnx_op("linear")
def lower_linear(e, node, ins, outs):
    e.add("Gemm", ins, outs, transB=1)               # x (N, in) @ W^T (in, out) + b (out,)


@onnx_op("relu", "sigmoid", "tanh", "identity")
def lower_unary(e, node, ins, outs):
    op_type = {"relu": "Relu", "sigmoid": "Sigmoid", "tanh": "Tanh", "identity": "Identity"}
    e.add(op_type[node.op], ins[:1], outs)


@onnx_op("softmax")
def lower_softmax(e, node, ins, outs):
    e.add("Softmax", ins, outs, axis=1)


@onnx_op("flatten")
def lower_flatten(e, node, ins, outs):
    e.add("Flatten", ins, outs, axis=1)


@onnx_op("reshape")
def lower_reshape(e, node, ins, outs):
    dims = node.attrs["shape"]
    if any(not isinstance(d, int) for d in dims):
        raise UserError(f"cannot export reshape to a symbolic shape {list(dims)} to ONNX")
    shape = e.const(f"{outs[0]}/shape", np.array([-1, *dims], dtype=np.int64))
    e.add("Reshape", [ins[0], shape], outs)


@onnx_op("per_anchor")
def lower_per_anchor(e, node, ins, outs):
    """[N, A*k, H, W] -> [N, A, k, H, W] -> [N, H, W, A, k] -> [N, H*W*A(, k)]."""
    k = node.attrs["values"]
    _, c, h, w = node.inputs[0].type.shape
    split = e.const(f"{outs[0]}/split", np.array([0, c // k, k, h, w], dtype=np.int64))
    five, moved = e.fresh(f"{outs[0]}/5d"), e.fresh(f"{outs[0]}/moved")
    e.add("Reshape", [ins[0], split], [five])
    e.add("Transpose", [five], [moved], perm=[0, 3, 4, 1, 2])
    flat = [0, -1] if k == 1 else [0, -1, k]
    e.add("Reshape", [moved, e.const(f"{outs[0]}/shape", np.array(flat, dtype=np.int64))], outs)


@onnx_op("add")
def lower_add(e, node, ins, outs):
    e.add("Add" if len(ins) == 2 else "Sum", ins, outs)


@onnx_op("mul")
def lower_mul(e, node, ins, outs):
    e.add("Mul", ins, outs)


@onnx_op("concat")
def lower_concat(e, node, ins, outs):
    e.add("Concat", ins, outs, axis=int(node.attrs["axis"]))


# -- convolutional ops --------------------------------------------------------------------------

@onnx_op("conv2d")
def lower_conv2d(e, node, ins, outs):
    a = node.attrs
    e.add("Conv", ins, outs, kernel_shape=_pair(a["kernel"]), strides=_pair(a["stride"]),
          pads=_pads(a["padding"]), dilations=_pair(a["dilation"]), group=int(a["groups"]))


def _pool_attrs(a: dict) -> dict:
    return dict(kernel_shape=_pair(a["kernel"]), strides=_pair(a["stride"]),
                pads=_pads(a["padding"]), ceil_mode=int(bool(a["ceil"])))


def _onnx_ceil_out(size: int, k: int, s: int, p: int) -> int:
    """ONNX's ceil-mode output size: no clamp of a last window that starts in the padding."""
    return -(-(size + 2 * p - k) // s) + 1


def _add_pool(e, op_type: str, node, ins, outs, **extra) -> None:
    """A pool whose output size is dlc's (PyTorch's) also in ceil mode.

    PyTorch drops a last window that would start in the right padding; ONNX keeps it.
    Where that happens the ONNX pool's extra row/column is sliced off."""
    a = node.attrs
    (_, _, h, w), (_, _, oh, ow) = node.inputs[0].type.shape, node.outputs[0].type.shape
    extra_rows = []
    if a["ceil"]:
        for axis, size, want in ((2, h, oh), (3, w, ow)):
            k, st, p = a["kernel"][axis - 2], a["stride"][axis - 2], a["padding"][axis - 2]
            if not isinstance(size, int):
                if p + st > k:                     # the clamp may bite for some sizes
                    raise UserError(f"ONNX export: a ceil-mode pool whose last window may start "
                                    f"in the padding needs a static size, got {size}",
                                    node.loc, hint="declare fixed sizes in the input, or use "
                                    "ceil=false")
                continue
            if _onnx_ceil_out(size, k, st, p) != want:
                extra_rows.append((axis, want))
    if not extra_rows:
        e.add(op_type, ins[:1], outs, **_pool_attrs(a), **extra)
        return
    pooled = e.fresh(f"{outs[0]}/unclamped")
    e.add(op_type, ins[:1], [pooled], **_pool_attrs(a), **extra)
    axes = [ax for ax, _ in extra_rows]
    e.add("Slice", [pooled, e.const(f"{outs[0]}/starts", np.zeros(len(axes), np.int64)),
                    e.const(f"{outs[0]}/ends", np.array([n for _, n in extra_rows], np.int64)),
                    e.const(f"{outs[0]}/axes", np.array(axes, np.int64))], outs)


@onnx_op("max_pool2d")
def lower_max_pool2d(e, node, ins, outs):
    _add_pool(e, "MaxPool", node, ins, outs)


@onnx_op("avg_pool2d")
def lower_avg_pool2d(e, node, ins, outs):
    _add_pool(e, "AveragePool", node, ins, outs,
              count_include_pad=int(bool(node.attrs["count_include_pad"])))


@onnx_op("global_avg_pool")
def lower_global_avg_pool(e, node, ins, outs):
    e.add("GlobalAveragePool", ins[:1], outs)                  # (N, C, H, W) -> (N, C, 1, 1)


@onnx_op("batch_norm")
def lower_batch_norm(e, node, ins, outs):
    # Inference form: y = (x - running_mean) / sqrt(running_var + eps) * weight + bias.
    # ONNX's momentum weighs the old running value (PyTorch's weighs the new batch).
    a = node.attrs
    e.add("BatchNormalization", ins[:5], outs, epsilon=float(a["eps"]),
          momentum=1.0 - float(a["momentum"]))


@onnx_op("local_response_norm")
def lower_local_response_norm(e, node, ins, outs):
    # PyTorch: y_c = x_c / (k + alpha/size * sum_{c' in window(c)} x_c'^2)^beta, where
    # window(c) = [c - size//2, c + (size-1)//2].  ONNX LRN uses the same formula with the
    # window [c - (size-1)//2, c + ceil((size-1)/2)]: identical for odd sizes only, so even
    # sizes (and inputs that are not 4-D) are spelled out as a pooled mean of squares.
    a = node.attrs
    size, alpha, beta, k = int(a["size"]), float(a["alpha"]), float(a["beta"]), float(a["k"])
    if size % 2 == 1 and node.inputs[0].type.rank == 4:
        e.add("LRN", ins[:1], outs, size=size, alpha=alpha, beta=beta, bias=k)
        return
    x, rank, base = ins[0], node.inputs[0].type.rank, outs[0]
    sq = e.fresh(f"{base}/square")
    e.add("Mul", [x, x], [sq])                                         # (N, C, ...)
    axes = e.const(f"{base}/axes", np.array([1], dtype=np.int64))
    sq5 = e.fresh(f"{base}/unsqueeze")
    e.add("Unsqueeze", [sq, axes], [sq5])                              # (N, 1, C, ...)
    pads = [0] * (2 * (rank + 1))
    pads[2], pads[rank + 1 + 2] = size // 2, (size - 1) // 2           # channel axis, begin/end
    padded = e.fresh(f"{base}/pad")
    e.add("Pad", [sq5, e.const(f"{base}/pads", np.array(pads, dtype=np.int64))], [padded])
    avg = e.fresh(f"{base}/window_mean")
    e.add("AveragePool", [padded], [avg], kernel_shape=[size] + [1] * (rank - 2))
    mean = e.fresh(f"{base}/squeeze")
    e.add("Squeeze", [avg, axes], [mean])                              # (N, C, ...)
    scaled = e.fresh(f"{base}/scaled")
    e.add("Mul", [mean, e.const(f"{base}/alpha", np.array(alpha, dtype=np.float32))], [scaled])
    shifted = e.fresh(f"{base}/shifted")
    e.add("Add", [scaled, e.const(f"{base}/k", np.array(k, dtype=np.float32))], [shifted])
    div = e.fresh(f"{base}/divisor")
    e.add("Pow", [shifted, e.const(f"{base}/beta", np.array(beta, dtype=np.float32))], [div])
    e.add("Div", [x, div], outs)


@onnx_op("leaky_relu")
def lower_leaky_relu(e, node, ins, outs):
    e.add("LeakyRelu", ins[:1], outs, alpha=float(node.attrs["slope"]))


@onnx_op("upsample_nearest")
def lower_upsample_nearest(e, node, ins, outs):
    sh, sw = _pair(node.attrs["scale"])
    base = outs[0]
    scales = e.const(f"{base}/scales", np.array([1, 1, sh, sw], dtype=np.float32))
    # roi is unused in asymmetric mode; "" skips it.  asymmetric + floor is PyTorch's nearest.
    e.add("Resize", [ins[0], "", scales], outs, mode="nearest",
          coordinate_transformation_mode="asymmetric", nearest_mode="floor")


# -- dense prediction ---------------------------------------------------------------------------

@onnx_op("conv_transpose2d")
def lower_conv_transpose2d(e, node, ins, outs):
    a = node.attrs
    e.add("ConvTranspose", ins, outs, kernel_shape=_pair(a["kernel"]), strides=_pair(a["stride"]),
          pads=_pads(a["padding"]), output_padding=_pair(a["output_padding"]),
          dilations=[1, 1], group=int(a["groups"]))


def _bilinear(e, node, inputs: list[str], outs) -> None:
    """ONNX's linear Resize with PyTorch's source coordinates (no antialiasing)."""
    mode = "align_corners" if node.attrs["align_corners"] else "pytorch_half_pixel"
    e.add("Resize", inputs, outs, mode="linear", coordinate_transformation_mode=mode)


def _hw(e, hint: str, x: str) -> str:
    """The runtime [H, W] of x (int64)."""
    hw = e.fresh(f"{hint}/hw")
    e.add("Shape", [x], [hw], start=2, end=4)
    return hw


@onnx_op("resize_bilinear")
def lower_resize_bilinear(e, node, ins, outs):
    s = float(node.attrs["scale"])
    _bilinear(e, node, [ins[0], "", e.const(f"{outs[0]}/scales",
                                            np.array([1, 1, s, s], dtype=np.float32))], outs)


@onnx_op("resize_bilinear_to")
def lower_resize_bilinear_to(e, node, ins, outs):
    nc = e.fresh(f"{outs[0]}/nc")
    e.add("Shape", [ins[0]], [nc], start=0, end=2)
    sizes = e.fresh(f"{outs[0]}/sizes")
    e.add("Concat", [nc, _hw(e, outs[0], ins[1])], [sizes], axis=0)
    _bilinear(e, node, [ins[0], "", "", sizes], outs)


@onnx_op("crop")
def lower_crop(e, node, ins, outs):
    starts = e.const(f"{outs[0]}/starts", np.array(_pair(node.attrs["offset"]), dtype=np.int64))
    ends = e.fresh(f"{outs[0]}/ends")
    e.add("Add", [starts, _hw(e, outs[0], ins[1])], [ends])
    axes = e.const(f"{outs[0]}/axes", np.array([2, 3], dtype=np.int64))
    e.add("Slice", [ins[0], starts, ends, axes], outs)


@onnx_op("adaptive_avg_pool")
def lower_adaptive_avg_pool(e, node, ins, outs):
    (h, w), (sh, sw) = node.inputs[0].type.shape[2:], node.attrs["size"]
    if (sh, sw) == (1, 1):
        e.add("GlobalAveragePool", ins, outs)
        return
    if not (isinstance(h, int) and isinstance(w, int) and h % sh == 0 and w % sw == 0):
        raise UserError(f"cannot export adaptive_avgpool({[sh, sw]}) of a {h}x{w} input to "
                        "ONNX: only sizes that divide the input are windows of one size")
    k = [h // sh, w // sw]
    e.add("AveragePool", ins, outs, kernel_shape=k, strides=k)


# -- the graph ----------------------------------------------------------------------------------

def _value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    dims = [d if isinstance(d, int) else str(d) for d in t.shape]
    return helper.make_tensor_value_info(name, _DTYPES.get(t.dtype, TensorProto.FLOAT), dims)


def _as_numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):
        t = t.detach().to("cpu").numpy()
    return np.ascontiguousarray(t)


def graph_to_onnx(g: Graph, state: dict, *, doc: str = "") -> onnx.ModelProto:
    """An ONNX model of an inference graph `g`, with `state` as its initializers (unchecked)."""
    nodes = live_nodes(g)
    missing = [n for n in nodes if n.op not in ONNX_OPS]
    if missing:
        raise UserError(f"cannot export to ONNX: the op '{missing[0].op}' has no ONNX mapping",
                        missing[0].loc, hint=f"ops with a mapping: {', '.join(sorted(ONNX_OPS))}")
    e = _Emitter()
    names: dict[int, str] = {}
    for v in g.inputs:
        names[id(v)] = e.fresh(v.input_name)
    used = [v for n in nodes for v in n.inputs] + list(g.outputs)
    used_state = {v.state.name for v in used if v.state is not None}
    for sname, v in g.state.items():
        if sname in used_state:
            if sname not in state:
                raise UserError(f"cannot export to ONNX: no value for the state tensor {sname!r}")
            names[id(v)] = e.fresh(sname)
            e.initializers.append(numpy_helper.from_array(_as_numpy(state[sname]), names[id(v)]))
    # A graph output produced by a node takes the output's name directly; other outputs
    # (an input or a state tensor returned as it is, or one value returned twice) get an Identity.
    out_names = [e.fresh(n) for n in g.output_names]
    renamed: dict[int, str] = {}
    for v, oname in zip(g.outputs, out_names):
        if v.node is not None and id(v) not in renamed:
            renamed[id(v)] = oname
    for k, node in enumerate(nodes, 1):
        ins = [names[id(v)] for v in node.inputs]
        hint = f"{node.scope}/{node.op}_{k}" if node.scope else f"{node.op}_{k}"
        outs = []
        for i, o in enumerate(node.outputs):
            names[id(o)] = renamed.get(id(o)) or e.fresh(hint if i == 0 else f"{hint}.{i}")
            outs.append(names[id(o)])
        ONNX_OPS[node.op](e, node, ins, outs)
    for v, oname in zip(g.outputs, out_names):
        if names[id(v)] != oname:
            e.add("Identity", [names[id(v)]], [oname])
    graph = helper.make_graph(
        e.nodes, g.name,
        inputs=[_value_info(names[id(v)], v.type) for v in g.inputs],
        outputs=[_value_info(n, v.type) for n, v in zip(out_names, g.outputs)],
        initializer=e.initializers, doc_string=doc)
    model = helper.make_model(graph, producer_name="dlc", opset_imports=[
        helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model


def _check_size(g: Graph) -> None:
    """Refuse, before any weight is made, a model whose weights alone exceed 2 GiB."""
    sizes = {name: (v.type.numel() or 0) * 4 for name, v in g.state.items()}
    total = sum(sizes.values())
    if total < MAX_PROTO_BYTES:
        return
    biggest = max(sizes, key=sizes.get)
    where = next((n.loc for n in g.nodes if any(v.state is not None and v.state.name == biggest
                                                 for v in n.inputs)), None)
    raise UserError(f"{g.name} has {total / 2**30:.1f} GiB of weights, more than one protobuf "
                    "file can hold (2 GiB), so it cannot be exported as ONNX", where,
                    hint=f"the largest is {biggest}, {sizes[biggest] / 2**30:.2f} GiB")


def export_onnx(spec, state: dict | None = None) -> bytes:
    """The spec's inference graph as ONNX bytes; `state` defaults to a fresh init (spec seed)."""
    g = lower(spec.graph, "eval")
    _check_size(g)
    if state is None:
        from ..runtime.state import init_state
        state = init_state(spec.graph, spec.config.seed)
    doc = f"{g.name} from {spec.path.name} (spec sha256 {spec.spec_hash[:12]})"
    model = graph_to_onnx(g, state, doc=doc)
    if model.ByteSize() >= MAX_PROTO_BYTES:
        raise UserError(f"{g.name} is {model.ByteSize() / 2**30:.1f} GiB of ONNX, more than one "
                        "protobuf file can hold (2 GiB)")
    data = model.SerializeToString()
    onnx.checker.check_model(data, full_check=True)            # checks the bytes we return
    return data

"""Ops without Triton kernels inside a Triton program: the `torch` lowering.

An op whose registry class says `triton = "torch"` gets a step of its own in the kernel
plan — never fused with anything — that calls the op's reference forward (PyTorch) on the
plan's buffers and copies the outputs it must keep into theirs:

    def torch_<hash>(b):
        ins = [b[3].view(2, 8, 4, 4), b[7].view(6, 5)]
        outs = _forward("roi_pool", ins, _ATTRS_<hash>, training=True)
        b[9].view(6, 8, 2, 2).copy_(outs[0])

It is what torch.compile calls a fallback kernel: the rest of the step keeps its fused
kernels, and `--emit plan` shows the step as `torch`. An op that samples at random (its class
says `samples = True`: assign_targets) gets the program's torch.Generator, seeded as the
reference backend's and saved with it in checkpoints, so both backends draw alike. Values that the plan recomputes
instead of storing (remat nodes: constants, masks) are recomputed here by their own
reference forwards. A plan holding such a step is not captured as a CUDA graph (some of
these ops read data-dependent sizes on the host, e.g. non-maximum suppression).

Used for the detection ops (compiler/ops/boxes.py, roi.py, detection.py): data-dependent
post-processing and target assignment, and the RoI and detection losses that have no
kernels yet.
"""
from __future__ import annotations

import hashlib
import math
import re

from .ir import Value
from .ops import get as get_op
from .render import Arg, TableRef

HEADER = '''
from dlc.compiler.ops import get as _get_op
from dlc.compiler.ops.registry import ExecContext as _ExecContext


def _forward(op, ins, attrs, training, generator=None):
    return _get_op(op).forward(ins, attrs, _ExecContext(training=training, generator=generator))

'''


def _literal(value) -> str:
    """Python source for an attribute value (ints, floats, bools, strings, None, tuples,
    lists, dicts of them); infinities and NaN as float('inf') / float('nan')."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"float({str(value)!r})"
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_literal(v) for v in value)
        return f"({inner},)" if isinstance(value, tuple) else f"[{inner}]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in value.items()) + "}"
    if value is None or isinstance(value, (bool, int, float, str)):
        return repr(value)
    raise TypeError(f"attribute value {value!r} cannot be written into a torch step")


def _tuple(shape: tuple) -> str:
    return repr(tuple(int(d) for d in shape))


def render_torch(plan, k, table) -> None:
    """Fill kernel k (family "torch") with the source of its step function."""
    lines: list[str] = []
    argv: list = []
    known: dict[int, str] = {}
    consts: list[str] = []

    def buffer(v: Value) -> str:
        shape = plan.shape(v)
        base = plan.base(v)
        at = table.ref(Arg("buf", (id(base),)))
        argv.append(TableRef(at))
        return f"b[{at}].view({_tuple(shape)})"

    def value(v: Value) -> str:
        """A variable holding v: its buffer, or its remat producer recomputed."""
        base = plan.base(v)
        if id(v) in known:
            return known[id(v)]
        prod = plan.producer.get(id(base))
        if prod is not None and id(prod) in plan.remat:
            outs = call(prod)
            name = f"{outs}[{prod.outputs.index(base)}]"
            known[id(v)] = f"{name}.reshape({_tuple(plan.shape(v))})"
            return known[id(v)]
        known[id(v)] = buffer(v)
        return known[id(v)]

    def call(node) -> str:
        ins = ", ".join(value(v) for v in node.inputs)
        attrs = f"_A{len(consts)}"
        consts.append(f"{attrs} = {_literal(dict(node.attrs))}")
        out = f"o{len(lines)}"
        gen = ""
        if getattr(get_op(node.op), "samples", False):      # the program's torch.Generator
            at = table.ref(Arg("generator", ()))
            argv.append(TableRef(at))
            gen = f", b[{at}]"
        lines.append(f"    {out} = _forward({node.op!r}, [{ins}], {attrs}, {plan.training}{gen})")
        return out

    outs = call(k.anchor)
    writes = {id(v) for v in k.writes}
    for j, o in enumerate(k.anchor.outputs):
        if id(o) in writes:
            lines.append(f"    {buffer(o)}.copy_({outs}[{j}])")
    body = "\n".join(lines)
    draft = "\n".join(consts) + f"\ndef KERNEL(b):\n{body}\n"
    digest = hashlib.sha256(draft.encode()).hexdigest()[:10]
    k.name = f"torch_{k.anchor.op}_{digest}"
    k.source = re.sub(r"\b_A(\d+)\b", lambda m: f"_A{digest}_{m.group(1)}", draft) \
        .replace("def KERNEL(", f"def {k.name}(", 1)
    k.grid = ()
    k.argv = argv
    k.tunables, k.config = {}, {}

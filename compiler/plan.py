"""Kernel planning: a graph becomes a list of kernels, a memory plan and Triton source.

The PLAN pipeline is a straight list of named passes, like TRAIN/EVAL/INFER:

    bind      concrete sizes for the batch and every size symbol
    inline    elementwise chains recomputed inside the anchor that reads them (prologues)
    fuse      anchors (matmul, conv, pool, reductions, norms, losses) with the elementwise
              chains after them (epilogues), elementwise chains with each other, sibling
              fusions (a bias gradient inside its weight-gradient matmul, cross-entropy
              and its gradient in one kernel), and every parameter, slot and
              running-statistics update of a step in at most two multi-tensor launches
    layout    flat state: parameters, slots and running statistics in the order the
              multi-tensor updates walk them; gradients pinned in the same order
    memory    every other intermediate placed in one arena by liveness (first fit)
    render    each kernel's Triton source from its family's template (compiler/render.py)

How an op lowers is declared in its registry class (`Op.triton`): "elementwise" (its
`triton_ew` writes the expression), "remat" (elementwise with no tensor loads, recomputed
wherever it is used: masks, constants, step counters), "view" (no kernel: a reshape of a
contiguous buffer), or the name of the template family that anchors a kernel.

`format_plan` is the `--emit plan` text; `uncovered` lists nodes without a lowering.
"""
from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field

from .ir import Graph, Node, TensorType, Value
from .lower import live_nodes
from .ops import get

ALIGN = 256                                   # bytes: every arena buffer starts aligned
DTYPE_BYTES = {"f32": 4, "i64": 8, "bf16": 2, "f16": 2, "i32": 4}
MAX_INLINE = 8                                # longest elementwise chain recomputed in a load
UPDATE_OPS = ("sgd_update", "adam_update", "rmsprop_update", "adagrad_update",
              "adadelta_update")


def uncovered(graph: Graph) -> list[Node]:
    """The nodes of `graph` whose ops have no Triton lowering."""
    return [n for n in graph.nodes if get(n.op).triton is None]


# -- sizes ---------------------------------------------------------------------------------------

def eval_dim(d, env: dict[str, int]) -> int:
    if isinstance(d, int):
        return d
    try:
        return int(eval(d, {"__builtins__": {}, "min": min, "max": max}, dict(env)))
    except NameError as e:
        raise KeyError(str(e)) from None


def concrete(t: TensorType, env: dict[str, int]) -> tuple[int, ...]:
    return tuple(eval_dim(d, env) for d in t.shape)


def bind_inputs(graph: Graph, shapes: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Size symbols (N, H, W, ...) bound from the shapes of actual inputs."""
    env: dict[str, int] = {}
    for v in graph.inputs:
        for d, n in zip(v.type.shape, shapes.get(v.input_name, ())):
            if isinstance(d, str) and d.isidentifier():
                env[d] = int(n)
    return env


# -- the plan ------------------------------------------------------------------------------------

@dataclass(eq=False)
class Buffer:
    """Where one value lives while the step runs."""

    name: str                       # as the IR prints it: %x, %12, @linear1.weight
    shape: tuple[int, ...]
    dtype: str
    where: str                      # input | state | arena | pinned | alias | const
    offset: int = 0                 # bytes into the arena, or elements into the flat state
    base: "Buffer | None" = None    # alias: the buffer it views
    live: tuple[int, int] = (0, 0)  # first and last kernel that touch it

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPE_BYTES[self.dtype]


@dataclass(eq=False)
class Kernel:
    family: str                                  # elementwise, matmul, conv, pool, ...
    anchor: Node | None = None
    body: list[Node] = field(default_factory=list)       # elementwise nodes, in order
    siblings: list[Node] = field(default_factory=list)   # extra anchor nodes of the same kernel
    multi: list[Node] = field(default_factory=list)      # multi-tensor update nodes
    scalar_updates: list[tuple[str, Value]] = field(default_factory=list)
    advance_seed: bool = False                   # the step's dropout seed += 1 (last kernel)
    pos: int = 0                                 # position of its last member in the graph
    index: int = 0
    # filled by render
    name: str = ""
    source: str = ""
    grid: tuple = ()
    args: list = field(default_factory=list)     # ("buf", Value) | ("int", n) | ("float", x)
    tunables: dict = field(default_factory=dict)  # constexpr name -> choices (autotuning)
    config: dict = field(default_factory=dict)    # tuned constexpr values in force
    reads: list[Value] = field(default_factory=list)
    writes: list[Value] = field(default_factory=list)

    def nodes(self) -> list[Node]:
        head = [self.anchor] if self.anchor is not None else []
        return head + self.siblings + self.body + self.multi


@dataclass(eq=False)
class Plan:
    graph: Graph
    training: bool
    env: dict[str, int]
    target: str = "gpu"             # gpu | interpreter (which launch configurations to pick)
    nodes: list[Node] = field(default_factory=list)
    kernels: list[Kernel] = field(default_factory=list)
    inlined: dict[int, Node] = field(default_factory=dict)    # id(value) -> inlined producer
    remat: set = field(default_factory=set)                    # ids of remat nodes
    alias: dict[int, Value] = field(default_factory=dict)      # view output id -> base value
    buffers: dict[int, Buffer] = field(default_factory=dict)   # id(value) -> buffer
    state_order: list[str] = field(default_factory=list)       # flat-state layout (training)
    state_numel: int = 0
    arena_bytes: int = 0
    pinned_bytes: int = 0
    naive_peak: int = 0
    producer: dict[int, Node] = field(default_factory=dict)
    consumers: dict[int, list[Node]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    module: str = ""                                           # the rendered Python module
    flat_state: bool = False

    # -- helpers used by every pass
    def shape(self, v: Value) -> tuple[int, ...]:
        return concrete(v.type, self.env)

    def base(self, v: Value) -> Value:
        while id(v) in self.alias:
            v = self.alias[id(v)]
        return v

    def name(self, v: Value) -> str:
        return self.names.get(id(v), "%?")

    def kind(self, node: Node) -> str | None:
        return get(node.op).triton

    @property
    def launches(self) -> int:
        return len(self.kernels)


def _value_names(g: Graph) -> dict[int, str]:
    names = {id(v): "%" + v.input_name for v in g.inputs}
    names.update({id(v): "@" + n for n, v in g.state.items()})
    i = 0
    for node in g.nodes:
        for o in node.outputs:
            i += 1
            names[id(o)] = f"%{i}"
    return names


def pattern(vshape: tuple, ishape: tuple) -> str | None:
    """How a value of shape `vshape` is read at an element of an iteration over `ishape`:
    'full' (same shape: the flat offset), 'chan' (one value per channel, dim 1), 'scalar'."""
    if vshape == ishape:
        return "full"
    if vshape == ():
        return "scalar"
    if len(vshape) == 1 and len(ishape) >= 2 and ishape[1] == vshape[0]:
        return "chan"
    if len(vshape) == 1 and len(ishape) == 1 and vshape[0] == 1:
        return "scalar"
    if _numel(vshape) == _numel(ishape):       # a reshape: contiguous, same flat order
        return "full"
    return None


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# -- passes --------------------------------------------------------------------------------------

def bind_pass(p: Plan) -> Plan:
    g = p.graph
    p.nodes = live_nodes(g)
    p.names = _value_names(g)
    for node in p.nodes:
        if p.kind(node) is None:
            from ..spec.diagnostics import UserError
            raise UserError(f"the triton backend has no kernels for op '{node.op}'", node.loc,
                            hint="use --backend reference for this spec")
        for v in node.inputs:
            p.consumers.setdefault(id(v), []).append(node)
        for o in node.outputs:
            p.producer[id(o)] = node
    for v in list(g.inputs) + [n for node in p.nodes for n in node.outputs]:
        try:
            concrete(v.type, p.env)
        except KeyError as e:
            from ..spec.diagnostics import UserError
            raise UserError(f"the kernel plan needs a concrete size for {e} "
                            f"({p.name(v)}: {v.type})") from None
    for node in p.nodes:
        k = p.kind(node)
        if k == "view":
            p.alias[id(node.outputs[0])] = node.inputs[0]
        elif k == "remat":
            p.remat.add(id(node))
    return p


def _sinks(p: Plan) -> set[int]:
    g = p.graph
    return ({id(p.base(v)) for v in g.outputs} | {id(p.base(v)) for v in g.updates.values()})


def _ew_loadable(p: Plan, node: Node) -> bool:
    """Every input of an elementwise node is read with a known pattern at its output's index."""
    ishape = p.shape(node.outputs[0])
    return all(pattern(p.shape(v), ishape) is not None for v in node.inputs)


def inline_pass(p: Plan) -> Plan:
    """Mark elementwise nodes whose every use is an anchor's prologue input (or another
    inlined node): they are recomputed in the anchor's loads and never stored."""
    sinks = _sinks(p)
    inl: dict[int, int] = {}                     # id(node) -> chain length
    for node in reversed(p.nodes):
        if p.kind(node) != "elementwise" or len(node.outputs) != 1 or node.op in UPDATE_OPS:
            continue
        out = node.outputs[0]
        if id(out) in sinks or not _ew_loadable(p, node):
            continue
        users = p.consumers.get(id(out), [])
        ok, depth = bool(users), 1
        for u in users:
            if p.kind(u) == "elementwise" and id(u) in inl:
                depth = max(depth, inl[id(u)] + 1)
            elif p.kind(u) not in ("elementwise", "remat", "view", None) and \
                    all(i in get(u.op).triton_prologue
                        for i, v in enumerate(u.inputs) if v is out):
                continue
            else:
                ok = False
        if ok and depth <= MAX_INLINE:
            inl[id(node)] = depth
            p.inlined[id(out)] = node
    return p


def fuse_pass(p: Plan) -> Plan:
    """Group nodes into kernels, in graph order (see the module docstring)."""
    kernels: list[Kernel] = []
    owner: dict[int, Kernel] = {}                # id(value) -> kernel that stores/computes it
    reads: dict[int, set[int]] = {}              # id(kernel) -> ids of values it reads
    pending: list[Node] = []
    updates = [n for n in p.nodes if n.op in UPDATE_OPS or n.op == "ema_update"]
    upd_ids = {id(n) for n in updates}

    def iter_shape(k: Kernel) -> tuple | None:
        if k.anchor is None:
            return p.shape(k.body[0].outputs[0])
        if get(k.anchor.op).triton_epilogue:
            return p.shape(k.anchor.outputs[0])
        return None

    def ext_reads(node: Node) -> set[int]:
        out, seen, stack = set(), set(), list(node.inputs)
        while stack:
            v = p.base(stack.pop())
            if id(v) in seen:
                continue
            seen.add(id(v))
            reads = _recomputed_reads(p, v)
            if reads is None:
                out.add(id(v))
            else:
                stack.extend(reads)
        return out

    def new_kernel(k: Kernel, at: int) -> Kernel:
        k.pos = at
        kernels.append(k)
        reads[id(k)] = set()
        return k

    def add(k: Kernel, node: Node, at: int, where: str) -> None:
        getattr(k, where).append(node)
        k.pos = max(k.pos, at)
        reads[id(k)] |= ext_reads(node)
        for o in node.outputs:
            owner[id(o)] = k

    def legal_move(k: Kernel, at: int) -> bool:
        """k may run at position `at`: no kernel placed after k reads what k produces."""
        made = {vid for vid, kk in owner.items() if kk is k}
        return not any(kk.pos > k.pos and kk.pos <= at and reads[id(kk)] & made
                       for kk in kernels if kk is not k)

    def flush(node_inputs, at) -> None:
        """Pending elementwise nodes a kernel at `at` reads get their own kernels, placed
        just before it (positions sort the kernels)."""
        for v in node_inputs:
            v = p.base(v)
            prod = p.producer.get(id(v))
            if prod is not None and prod in pending:
                pending.remove(prod)
                flush(prod.inputs, at - 0.5)
                k = new_kernel(Kernel("elementwise"), at - 0.5)
                add(k, prod, at - 0.5, "body")

    for at, node in enumerate(p.nodes):
        kind = p.kind(node)
        if kind in ("view", "remat") or id(node) in upd_ids:
            continue
        if kind == "elementwise":
            if node.outputs and id(node.outputs[0]) in p.inlined:
                continue
            ishape = p.shape(node.outputs[0])
            # a kernel iterating over another shape of as many elements (a flatten between)
            # serves too when the node reads nothing per channel: offsets are flat
            flat_ok = all(pattern(p.shape(v), ishape) != "chan" for v in node.inputs)

            def same_walk(k):
                shape = iter_shape(k)
                return shape == ishape or (flat_ok and shape is not None
                                           and _numel(shape) == _numel(ishape))
            cands = []
            for v in node.inputs:
                k = owner.get(id(p.base(v)))
                if k is not None and same_walk(k) and k not in cands:
                    cands.append(k)
            # an epilogue sees the anchor's output 0 and its own chain, nothing else the
            # kernel makes (batch statistics are written by other programs of the kernel)
            cands = [k for k in cands if all(
                owner.get(id(p.base(v))) is not k or k.anchor is None or
                p.base(v) is k.anchor.outputs[0] or
                any(p.base(v) is o for n in k.body for o in n.outputs) for v in node.inputs)]
            cands.sort(key=lambda k: -k.pos)
            target = next((k for k in cands if legal_move(k, at)), None)
            if target is None and not cands:         # horizontal: the latest same-shape kernel
                same = [k for k in kernels if iter_shape(k) == ishape and not k.multi and
                        not any(owner.get(id(p.base(v))) is k for v in node.inputs)]
                target = next((k for k in sorted(same, key=lambda k: -k.pos)
                               if legal_move(k, at)), None)
            if target is None and not cands:
                pend = [p.producer.get(id(p.base(v))) for v in node.inputs]
                pend = [q for q in pend if q is not None and q in pending]
                if not pend:
                    pending.append(node)
                    continue
            # pending producers of this node join its kernel when they share its shape;
            # the others get kernels of their own, before it
            joining = []
            for v in node.inputs:
                prod = p.producer.get(id(p.base(v)))
                if prod is not None and prod in pending and \
                        p.shape(prod.outputs[0]) == ishape and prod not in joining:
                    pending.remove(prod)
                    joining.append(prod)
            for prod in joining:
                flush(prod.inputs, at)
            flush(node.inputs, at)
            if target is None:
                target = new_kernel(Kernel("elementwise"), at)
            for prod in joining:
                add(target, prod, at, "body")
            add(target, node, at, "body")
            continue
        # an anchor
        flush(node.inputs, at)
        sib = _sibling_target(p, node, owner)
        if sib is not None and legal_move(sib, at):
            add(sib, node, at, "siblings")
            continue
        k = new_kernel(Kernel(kind, anchor=node), at)
        add(k, node, at, "body")
        k.body.remove(node)
    for node in pending:                                # never joined anything
        k = new_kernel(Kernel("elementwise"), p.nodes.index(node))
        add(k, node, k.pos, "body")
    kernels.sort(key=lambda k: k.pos)
    kernels.extend(_update_kernels(p, updates))
    for i, k in enumerate(kernels):
        k.index = i
    p.kernels = kernels
    return p


BIAS_GRAD_HOSTS = {(0,): "matmul", (0, 2, 3): "conv2d_bwd_weight"}   # sum dims -> anchor


def _sibling_target(p: Plan, node: Node, owner: dict) -> Kernel | None:
    """A kernel this anchor joins as a sibling: a bias gradient sum(G, dims) inside the
    anchor that reads the same G for the weight gradient (the matmul computing Gᵀ X, or
    conv2d_bwd_weight), and cross_entropy_bwd inside its cross_entropy."""
    if node.op == "sum":
        host = BIAS_GRAD_HOSTS.get(tuple(node.attrs["dims"]))
        g = node.inputs[0]
        ok = (lambda u: u.op == host and u.inputs[0] is g and
              (host != "matmul" or (u.attrs.get("transpose_a") and len(p.shape(g)) == 2)))
        users = p.consumers.get(id(g), []) if host else []
    elif node.op == "cross_entropy_bwd":
        gy, logits, labels = node.inputs
        prod = p.producer.get(id(gy))
        ok = (lambda u: u.op == "cross_entropy" and u.inputs[1] is labels and
              u.attrs == node.attrs and prod is not None and prod.op == "ones_like")
        users = p.consumers.get(id(logits), [])
    else:
        return None
    for user in users:
        if ok(user):
            k = owner.get(id(user.outputs[0]))
            if k is not None and k.anchor is user and not k.siblings:
                return k
    return None


def _update_kernels(p: Plan, updates: list[Node]) -> list[Kernel]:
    """Optimizer updates in one multi-tensor launch per optimizer (one optimizer per spec),
    then running statistics, scalar state (the step counter) and the dropout seed in one
    more, last: it writes what the optimizer launch still reads."""
    g = p.graph
    groups: dict[tuple, list[Node]] = {}
    for n in updates:
        key = (n.op, tuple(sorted((a, str(b)) for a, b in n.attrs.items())))
        groups.setdefault(key, []).append(n)
    out = [Kernel("elementwise", multi=ns, pos=len(p.nodes))
           for key, ns in groups.items() if key[0] != "ema_update"]
    ema = [ns for key, ns in groups.items() if key[0] == "ema_update"]
    scalars = []
    for name, v in g.updates.items():
        prod = p.producer.get(id(p.base(v)))
        if prod is not None and id(prod) in p.remat:
            scalars.append((name, v))
    dropout = p.training and any(n.op == "dropout_mask" for n in p.nodes)
    last = [Kernel("elementwise", multi=ns, pos=len(p.nodes)) for ns in ema]
    if (scalars or dropout) and not last:
        last.append(Kernel("elementwise", pos=len(p.nodes)))
    if last:
        last[-1].scalar_updates = scalars
        last[-1].advance_seed = dropout
    return out + last


def layout_pass(p: Plan) -> Plan:
    """Flat state for a training program: each multi-tensor input walked contiguously."""
    g = p.graph
    if not p.training:
        return p
    p.flat_state = True
    order: list[str] = []
    for k in p.kernels:
        if not k.multi:
            continue
        width = len(k.multi[0].inputs)
        for j in range(width):
            for n in k.multi:
                v = n.inputs[j]
                if v.state is not None and v.type.rank > 0 or \
                        (v.state is not None and k.multi[0].op == "ema_update"):
                    if v.state.name not in order:
                        order.append(v.state.name)
    for name in g.state:
        if name not in order:
            order.append(name)
    p.state_order = order
    return p


def memory_pass(p: Plan) -> Plan:
    """Buffers: inputs, state, pinned gradients/statistics, and an arena by liveness."""
    g = p.graph
    kpos = {}
    for k in p.kernels:
        for n in k.nodes():
            kpos[id(n)] = k.index
    bufs: dict[int, Buffer] = {}
    for v in g.inputs:
        bufs[id(v)] = Buffer(p.name(v), p.shape(v), v.type.dtype, "input")
    off = 0
    for name in (p.state_order or list(g.state)):
        v = g.state[name]
        b = Buffer("@" + name, p.shape(v), v.type.dtype, "state", offset=off)
        bufs[id(v)] = b
        off += b.numel
    p.state_numel = off
    # multi-tensor inputs that are not state: pinned contiguously, in walk order
    pinned: list[Value] = []
    for k in p.kernels:
        width = len(k.multi[0].inputs) if k.multi else 0
        for j in range(width):
            vals = [p.base(n.inputs[j]) for n in k.multi]
            if all(v.state is None and v.input_name is None for v in vals) and \
                    any(v.type.rank > 0 for v in vals):
                pinned.extend(v for v in vals if id(v) not in {id(x) for x in pinned})
    # materialised values: produced by one kernel and read by another, or sinks
    sinks = _sinks(p)
    first: dict[int, int] = {}
    last: dict[int, int] = {}
    for k in p.kernels:
        for v in k.writes:
            first.setdefault(id(v), k.index)
            last.setdefault(id(v), k.index)
        for v in k.reads:
            last[id(v)] = max(last.get(id(v), k.index), k.index)
    n_k = len(p.kernels)
    vals = {id(v): v for k in p.kernels for v in k.writes}
    poff = 0
    for v in pinned:
        b = Buffer(p.name(v), p.shape(v), v.type.dtype, "pinned", offset=poff,
                   live=(first.get(id(v), 0), n_k))
        bufs[id(v)] = b
        poff += b.nbytes
    p.pinned_bytes = _align(poff)
    # updates computed elementwise are written in place into their state
    for name, v in g.updates.items():
        v = p.base(v)
        prod = p.producer.get(id(v))
        if prod is not None and (prod.op in UPDATE_OPS or prod.op == "ema_update"
                                 or id(prod) in p.remat):
            bufs[id(v)] = Buffer(p.name(v), p.shape(v), v.type.dtype, "alias",
                                 base=bufs[id(g.state[name])])
    arena: list[Buffer] = []
    for vid, v in vals.items():
        if vid in bufs:
            continue
        end = n_k if vid in sinks else last[vid]
        b = Buffer(p.name(v), p.shape(v), v.type.dtype, "arena", live=(first[vid], end))
        bufs[vid] = b
        arena.append(b)
    p.arena_bytes = p.pinned_bytes + _first_fit(arena, p.pinned_bytes)
    for vid, base in p.alias.items():
        src = bufs.get(id(p.base(base)))
        v = _find_value(p, vid)
        if src is not None and v is not None:
            bufs[vid] = Buffer(p.name(v), p.shape(v), v.type.dtype, "alias", base=src)
    p.buffers = bufs
    p.naive_peak = _node_by_node_peak(p)
    return p


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def _first_fit(bufs: list[Buffer], start: int) -> int:
    """Offsets for buffers whose lifetimes overlap, largest first (tinygrad's planner idea)."""
    placed: list[Buffer] = []
    top = 0
    for b in sorted(bufs, key=lambda b: (-b.nbytes, b.live)):
        size = _align(b.nbytes)
        clash = sorted((o.offset, o.offset + _align(o.nbytes)) for o in placed
                       if o.live[0] <= b.live[1] and b.live[0] <= o.live[1])
        off = start
        for lo, hi in clash:
            if off + size <= lo:
                break
            off = max(off, hi)
        b.offset = off
        placed.append(b)
        top = max(top, off + size - start)
    return top


def _find_value(p: Plan, vid: int) -> Value | None:
    for node in p.nodes:
        for o in node.outputs:
            if id(o) == vid:
                return o
    return None


def _node_by_node_peak(p: Plan) -> int:
    """Peak bytes of intermediates when every node's outputs are stored (as the reference
    backend runs), for comparison with the arena."""
    keep = _sinks(p)
    last: dict[int, int] = {}
    for i, node in enumerate(p.nodes):
        for v in node.inputs:
            last[id(v)] = i
    live, peak = 0, 0
    alive: dict[int, int] = {}
    for i, node in enumerate(p.nodes):
        for o in node.outputs:
            if id(o) in p.alias:
                continue
            n = 1
            for d in p.shape(o):
                n *= d
            alive[id(o)] = n * DTYPE_BYTES[o.type.dtype]
            live += alive[id(o)]
        peak = max(peak, live)
        for v in node.inputs:
            if last.get(id(v)) == i and id(v) in alive and id(v) not in keep:
                live -= alive.pop(id(v))
    return peak


def _recomputed_reads(p: Plan, v: Value) -> list[Value] | None:
    """For a value recomputed wherever it is used (remat, or inlined into a prologue), the
    values its producer reads; None for a value that is stored."""
    prod = p.producer.get(id(v))
    if prod is not None and (id(prod) in p.remat or id(v) in p.inlined):
        return list(prod.inputs) if get(prod.op).triton_loads else []
    return None


def io_pass(p: Plan) -> Plan:
    """What each kernel reads (values made elsewhere) and writes (values used elsewhere)."""
    sinks = _sinks(p)
    made_by: dict[int, int] = {}
    for k in p.kernels:
        for n in k.nodes():
            for o in n.outputs:
                made_by[id(o)] = k.index
    used_by: dict[int, set[int]] = {}
    for k in p.kernels:
        k.reads = []
        seen: set[int] = set()
        inside = {id(o) for n in k.nodes() for o in n.outputs}
        stack = [v for n in k.nodes() for v in n.inputs] + [v for _, v in k.scalar_updates]
        order: list[Value] = []
        while stack:
            v = p.base(stack.pop(0))
            if id(v) in seen or id(v) in inside:
                continue
            seen.add(id(v))
            reads = _recomputed_reads(p, v)
            if reads is None:
                order.append(v)
            else:
                stack.extend(reads)
        k.reads = order
        for v in order:
            used_by.setdefault(id(v), set()).add(k.index)
    for k in p.kernels:
        k.writes = []
        for n in k.nodes():
            for o in n.outputs:
                if id(o) in sinks or used_by.get(id(o), set()) - {k.index}:
                    k.writes.append(o)
        for name, v in k.scalar_updates:
            if v not in k.writes:
                k.writes.append(v)
    return p


def render_pass(p: Plan) -> Plan:
    from .render import render_plan
    p.module = render_plan(p)
    return p


PLAN = [("bind", bind_pass), ("inline", inline_pass), ("fuse", fuse_pass), ("io", io_pass),
        ("layout", layout_pass), ("memory", memory_pass), ("render", render_pass)]


def make_plan(graph: Graph, env: dict[str, int], *, training: bool,
              target: str = "gpu") -> Plan:
    """The plan of `graph` at sizes `env`; `target` "interpreter" picks launch
    configurations for Triton's CPU interpreter (few large programs)."""
    debug = int(os.environ.get("DLC_DEBUG", "0") or 0)
    p = Plan(graph, training, dict(env), target)
    for name, fn in PLAN:
        t0 = time.perf_counter()
        p = fn(p)
        if debug >= 1:
            sys.stderr.write(f"[dlc] plan {graph.name}: {name:<8} {len(p.kernels):>4} kernels "
                             f"{(time.perf_counter() - t0) * 1e3:7.2f} ms\n")
    return p


# -- the text form (`dlc compile --emit plan`) ---------------------------------------------------

def _mib(n: int) -> str:
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.1f} KiB"


def format_plan(p: Plan) -> str:
    env = ", ".join(f"{k}={v}" for k, v in sorted(p.env.items()))
    lines = [f"plan {p.graph.name} ({env})"]
    for k in p.kernels:
        grid = "x".join(str(x) for x in k.grid)
        lines.append(f"kernel {k.index} {k.name}  grid {grid}")
        for n in k.nodes():
            outs = ", ".join(p.name(o) for o in n.outputs)
            where = "  ".join(x for x in (n.scope, n.loc.short if n.loc is not None else "") if x)
            role = ("anchor" if n is k.anchor else "sibling" if n in k.siblings
                    else "update" if n in k.multi else "fused")
            lines.append(f"  {role:<7} {outs} = {n.op}" + (f"  # {where}" if where else ""))
        inl = [p.inlined[id(v)] for v in _inlined_reads(p, k)]
        for n in inl:
            lines.append(f"  inline  {p.name(n.outputs[0])} = {n.op}  (recomputed in the load)")
        for name, v in k.scalar_updates:
            lines.append(f"  scalar  @{name} <- {p.name(v)}")
        if k.advance_seed:
            lines.append("  scalar  dropout seed += 1  (the next step draws new masks)")
        lines.append("  reads  " + (", ".join(_buf_text(p, v) for v in k.reads) or "-"))
        lines.append("  writes " + (", ".join(_buf_text(p, v) for v in k.writes) or "-"))
    lines.append("memory")
    lines.append(f"  state    {p.state_numel * 4:>12,} bytes"
                 + ("  (flat: parameters, slots and statistics in update order)"
                    if p.flat_state else ""))
    lines.append(f"  pinned   {p.pinned_bytes:>12,} bytes  (gradients and statistics the "
                 "multi-tensor updates walk)")
    lines.append(f"  arena    {p.arena_bytes:>12,} bytes  (planned peak of intermediates, "
                 f"{_mib(p.arena_bytes)})")
    lines.append(f"  node-by-node peak {p.naive_peak:>6,} bytes  ({_mib(p.naive_peak)})")
    n_nodes = len(p.nodes)
    lines.append(f"totals: {n_nodes} IR nodes in {len(p.kernels)} kernels "
                 f"({len({k.name for k in p.kernels})} distinct sources)")
    lines.append(f"launches: {len(p.kernels)} per step")
    return "\n".join(lines) + "\n"


def _inlined_reads(p: Plan, k: Kernel) -> list[Value]:
    out, seen = [], set()
    stack = [v for n in k.nodes() for v in n.inputs]
    while stack:
        v = p.base(stack.pop(0))
        if id(v) in seen:
            continue
        seen.add(id(v))
        if id(v) in p.inlined:
            out.append(v)
            stack.extend(p.inlined[id(v)].inputs)
    return out


def _buf_text(p: Plan, v: Value) -> str:
    b = p.buffers.get(id(v))
    shape = "x".join(str(d) for d in p.shape(v)) or "1"
    if b is None:
        return f"{p.name(v)}[{shape}]"
    if b.where == "arena":
        return f"{p.name(v)}[{shape}]@arena+{b.offset}"
    if b.where == "pinned":
        return f"{p.name(v)}[{shape}]@pinned+{b.offset}"
    if b.where == "alias" and b.base is not None and b.base.where == "state":
        return f"{p.name(v)}[{shape}]->{b.base.name}"
    return f"{p.name(v)}[{shape}]"

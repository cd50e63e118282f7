"""Kernel formation: the `inline`, `fuse` and `io` passes of the kernel plan.

    inline   elementwise nodes whose every use is an anchor's prologue input are marked to
             be recomputed in that anchor's loads
    fuse     nodes grouped into kernels in graph order: anchors with their epilogues,
             elementwise chains, siblings, and the multi-tensor update kernels
    io       what each kernel reads and writes
"""
from __future__ import annotations

from .ir import Node, Value, numel
from .kernels import UPDATE_OPS, Kernel, Plan, pattern, sink_ids
from .ops import get

MAX_INLINE = 8                                # longest elementwise chain recomputed in a load


def _ew_loadable(p: Plan, node: Node) -> bool:
    """Every input of an elementwise node is read with a known pattern at its output's index."""
    ishape = p.shape(node.outputs[0])
    return all(pattern(p.shape(v), ishape) is not None for v in node.inputs)


def inline_pass(p: Plan) -> Plan:
    """Mark elementwise nodes whose every use is an anchor's prologue input (or another
    inlined node): they are recomputed in the anchor's loads and never stored."""
    sinks = sink_ids(p)
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
                                           and numel(shape) == numel(ishape))
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
        k = new_kernel(Kernel("elementwise"), p.position[id(node)])
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
    dropout = p.training and any(get(n.op).random for n in p.nodes)
    last = [Kernel("elementwise", multi=ns, pos=len(p.nodes)) for ns in ema]
    if (scalars or dropout) and not last:
        last.append(Kernel("elementwise", pos=len(p.nodes)))
    if last:
        last[-1].scalar_updates = scalars
        last[-1].advance_seed = dropout
    return out + last


def _recomputed_reads(p: Plan, v: Value) -> list[Value] | None:
    """For a value recomputed wherever it is used (remat, or inlined into a prologue), the
    values its producer reads; None for a value that is stored."""
    prod = p.producer.get(id(v))
    if prod is not None and (id(prod) in p.remat or id(v) in p.inlined):
        return list(prod.inputs) if get(prod.op).triton_loads else []
    return None


def io_pass(p: Plan) -> Plan:
    """What each kernel reads (values made elsewhere) and writes (values used elsewhere)."""
    sinks = sink_ids(p)
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

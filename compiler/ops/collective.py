"""Collectives: ops that combine values across the processes of a data-parallel run.

    g1', g2', ... = all_reduce(g1, g2, ...) {reduce=mean, world=N}

The `all-reduce` pass (compiler/pipeline.py) puts one such node between the backward
and the optimizer update of a train graph for N processes: every gradient of the step in
one bucket, so a step makes one collective call however many parameters it has. The
reference forward flattens the bucket into one buffer, all-reduces it with
torch.distributed (gloo on the CPU, NCCL on CUDA) and splits it again.

With one process (`world=1`, or no process group) the collective is the identity, so a
graph built for N processes also runs alone, as the tests of the op do.

On the Triton backend the node is a `torch` step of the kernel plan (compiler/torch_call.py):
the replayed step calls this forward on the plan's gradient buffers between the backward
kernels and the update kernels, so the all-reduce sits inside the step.
"""
from __future__ import annotations

from ._lazy import torch

from .registry import Op, ShapeError, register

REDUCTIONS = ("mean", "sum")


def process_world() -> int:
    """The number of processes of the running torch.distributed group (1 without one)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def all_reduce_flat(tensors: list, reduce: str = "sum") -> list:
    """`tensors` summed (or averaged) over every process in one collective call on a
    flat buffer; the identity with one process."""
    world = process_world()
    if world == 1:
        return list(tensors)
    import torch.distributed as dist
    flat = torch.cat([t.reshape(-1).to(torch.float32) for t in tensors])   # (sum numel,)
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    if reduce == "mean":
        flat = flat / world
    out, at = [], 0
    for t in tensors:
        out.append(flat[at:at + t.numel()].view(t.shape).to(t.dtype))
        at += t.numel()
    return out


@register
class AllReduce(Op):
    """One bucket of tensors reduced across the processes (mean or sum); each output has
    its input's type. Linear and the same on every process, so its VJP is itself."""

    name = "all_reduce"
    n_inputs = None
    triton = "torch"      # a step of the replayed Triton program (compiler/torch_call.py)

    def infer(self, ins, attrs):
        if not ins:
            raise ShapeError("all_reduce needs at least one input")
        if attrs.get("reduce", "mean") not in REDUCTIONS:
            raise ShapeError(f"all_reduce reduces by {' or '.join(REDUCTIONS)}, "
                             f"got {attrs['reduce']}")
        return list(ins)

    def flops(self, ins, outs, attrs):
        return 0

    def forward(self, ins, attrs, ctx):
        world = process_world()
        if world != attrs["world"] and world != 1:
            raise RuntimeError(f"all_reduce was compiled for {attrs['world']} processes but "
                               f"runs in a group of {world}")
        return tuple(all_reduce_flat(ins, attrs.get("reduce", "mean")))

    def vjp(self, b, node, gouts, needs):
        live = [g for g, n in zip(gouts, needs) if n and g is not None]
        reduced = iter(b.emit("all_reduce", live, node.attrs) if live else [])
        return [next(reduced) if n and g is not None else None for g, n in zip(gouts, needs)]

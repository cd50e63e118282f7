"""Kernel planning (stub until the planner lands): which ops have Triton kernels."""
from __future__ import annotations


def uncovered(graph) -> list:
    """The nodes of `graph` whose ops have no Triton lowering."""
    from .ops import get
    return [n for n in graph.nodes if getattr(get(n.op), "triton", None) is None]

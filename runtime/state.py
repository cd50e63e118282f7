"""Materialise a graph's state (parameters, buffers, optimizer slots) from its init rules."""
from __future__ import annotations

import math
import re

import torch

from ..compiler.ir import Graph, StateSpec
from ..spec.diagnostics import UserError

_RULE = re.compile(r"^(\w+)(?:\(([^)]*)\))?$")


def init_tensor(spec: StateSpec, generator: torch.Generator) -> torch.Tensor:
    """One tensor for `spec`, drawn from its init rule.

    Rules: zeros, ones, constant(v), uniform(a) = U(-a, a), normal(std) = N(0, std^2),
    kaiming_normal(fan) = N(0, 2/fan) (He, fan_out for ReLU conv nets).
    """
    shape = tuple(spec.type.shape)
    m = _RULE.match(spec.init)
    if not m:
        raise ValueError(f"bad init rule {spec.init!r} for {spec.name}")
    kind, arg = m.group(1), m.group(2)
    dtype = torch.int64 if spec.type.dtype == "i64" else torch.float32
    if kind == "zeros":
        return torch.zeros(shape, dtype=dtype)
    if kind == "ones":
        return torch.ones(shape, dtype=dtype)
    if kind == "constant":
        return torch.full(shape, float(arg), dtype=dtype)
    t = torch.empty(shape, dtype=torch.float32)
    if kind == "uniform":
        a = float(arg)
        return t.uniform_(-a, a, generator=generator)
    if kind == "normal":
        return t.normal_(0.0, float(arg), generator=generator)
    if kind == "kaiming_normal":
        return t.normal_(0.0, math.sqrt(2.0 / float(arg)), generator=generator)
    raise ValueError(f"unknown init rule {spec.init!r} for {spec.name}")


def memory_bytes(device) -> int | None:
    """The memory of `device` (host RAM for the CPU), or None when it cannot be told."""
    try:
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.cuda.get_device_properties(dev).total_memory
        import os
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError, RuntimeError, AssertionError):
        return None


def check_fits(g: Graph, device="cpu") -> None:
    """Refuse, before allocating, state that cannot fit in the device's memory at all."""
    need = sum((v.type.numel() or 0) * (8 if v.type.dtype == "i64" else 4)
               for v in g.state.values())
    have = memory_bytes(device)
    if have is not None and need > have:
        raise UserError(f"{g.name} needs {need / 2**30:,.1f} GiB for its parameters, buffers "
                        f"and optimizer state, more than the {have / 2**30:,.1f} GiB of memory "
                        f"of {device}", hint="`dlc compile --emit summary` shows where the "
                        "parameters are")


def init_state(g: Graph, seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """Fresh values for every state entry of g, in declaration order (deterministic per seed)."""
    check_fits(g, device)
    gen = torch.Generator().manual_seed(seed)
    return {name: init_tensor(v.state, gen).to(device) for name, v in g.state.items()}

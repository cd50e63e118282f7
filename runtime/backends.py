"""Backends: the one place a graph becomes an executable program.

    make_program(graph, training=..., backend=..., device=..., seed=...) -> Program

A `Program` runs one graph: `run(state, inputs, fetch=()) -> (outputs, updates, fetched)`,
where `state` maps state names to tensors, `inputs` maps graph input names to tensors,
`outputs` follow `graph.outputs`, and `updates` maps state names to their new values
(a train graph's `@name <- %value` lines).  `profile(state, inputs)` runs once with the
device synchronised around each kernel (or node) and returns `KernelTime`s.

    reference   runtime/reference.py: node by node with each op's PyTorch forward
    triton      runtime/triton_backend.py: the kernel plan (compiler/plan.py) rendered to
                Triton source and run from the kernel cache; on a machine without a GPU,
                under Triton's interpreter (TRITON_INTERPRET=1)
    auto        triton on a CUDA GPU when every op of the graph has kernels, else reference
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from ..spec.diagnostics import UserError

BACKENDS = ("auto", "reference", "triton")


@dataclass
class KernelTime:
    name: str            # the kernel (or node) name
    covers: str          # what it covers: IR ops and the layers (scopes) they belong to
    seconds: float


def cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()


def interpreted() -> bool:
    """True when Triton kernels run in its CPU interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def resolve(backend: str, device: str | None, graphs=()) -> tuple[str, str]:
    """(backend, device) after 'auto', or a UserError for what this machine cannot do.

    `graphs` are the graphs that will run: `auto` picks triton only on a GPU where every
    op of all of them has kernels, and `triton` refuses a graph with an op that has none,
    naming the op and where the spec made it."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend '{backend}' (choose {', '.join(BACKENDS)})")
    gpu = cuda_available()
    if device is None:
        device = "cuda" if gpu else "cpu"
    if device.startswith("cuda") and not gpu:
        raise UserError(f"device {device} was asked for, but no CUDA GPU is available")
    if backend == "reference":
        return backend, device
    from ..compiler.plan import uncovered
    missing = [n for g in graphs for n in uncovered(g)]
    if backend == "auto":
        return ("triton" if device.startswith("cuda") and not missing else "reference"), device
    if missing:
        n = missing[0]
        raise UserError(f"the triton backend has no kernels for op '{n.op}'", n.loc,
                        hint="use --backend reference for this spec")
    if device == "cpu":
        _enable_interpreter()
    return backend, device


_ANNOUNCED = False


def _enable_interpreter() -> None:
    """Triton on the CPU: its interpreter, which must be chosen before kernels are made."""
    global _ANNOUNCED
    if not interpreted():
        if "triton" in sys.modules and any(m.startswith("dlc_kernels_") for m in sys.modules):
            raise UserError("Triton kernels were already loaded for a GPU in this process; "
                            "set TRITON_INTERPRET=1 before starting dlc")
        os.environ["TRITON_INTERPRET"] = "1"
    if not _ANNOUNCED:
        _ANNOUNCED = True
        sys.stderr.write("dlc: no GPU: the triton backend runs under Triton's interpreter "
                         "(TRITON_INTERPRET=1), which is slow; it is meant for testing\n")


def make_program(graph, *, training: bool, backend: str, device: str, seed: int = 0):
    """The executable for one graph on a resolved backend ('reference' or 'triton')."""
    if backend == "reference":
        from .reference import ReferenceProgram
        return ReferenceProgram(graph, training=training, device=device, seed=seed)
    if backend == "triton":
        from .triton_backend import TritonProgram
        return TritonProgram(graph, training=training, device=device, seed=seed)
    raise ValueError(f"unresolved backend {backend!r}")

"""Checkpoints: parameters and buffers as safetensors, in PyTorch layouts, written atomically."""
from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..compiler.ir import Graph
from ..spec.diagnostics import UserError


def model_state_names(g: Graph) -> list[str]:
    return [n for n, v in g.state.items() if v.state.kind in ("param", "buffer")]


def save(path: Path, g: Graph, state: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """Write the model's parameters and buffers to `path` (via a temporary file + rename)."""
    write_atomic(Path(path), {n: state[n] for n in model_state_names(g)}, meta)


def write_atomic(path: Path, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    """Write tensors to `path` through a temporary file and a rename: a kill during the
    write leaves the previous file whole."""
    # cloned: a backend may hold state as views of one flat buffer, which safetensors refuses
    tensors = {n: t.detach().to("cpu").contiguous().clone() for n, t in tensors.items()}
    tmp = path.with_name(path.name + ".tmp")
    try:
        save_file(tensors, str(tmp), metadata={k: str(v) for k, v in meta.items()})
        os.replace(tmp, path)
    except (SafetensorError, OSError) as e:
        raise UserError(f"cannot write the checkpoint {path}: {e}") from None


def load(path: Path, g: Graph) -> dict[str, torch.Tensor]:
    """Read a checkpoint and check it against the graph's names and shapes."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{path} is not a readable safetensors checkpoint ({e})") from None
    want = model_state_names(g)
    missing = [n for n in want if n not in tensors]
    if missing:
        raise UserError(f"{path} does not hold {missing[0]!r}"
                        f"{f' (and {len(missing) - 1} more)' if len(missing) > 1 else ''}; "
                        "was it written for another model?")
    out = {}
    for n in want:
        expect = tuple(g.state[n].type.shape)
        if tuple(tensors[n].shape) != expect:
            raise UserError(f"{path}: {n} has shape {list(tensors[n].shape)}, "
                            f"the model needs {list(expect)}")
        out[n] = tensors[n]
    return out

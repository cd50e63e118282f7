"""Convert a PyTorch state dict into a dlc checkpoint (`dlc convert`).

    dlc convert net.dls --from resnet.pth -o resnet.safetensors

The source is a `.safetensors` file or a `.pt`/`.pth` file read with
`torch.load(weights_only=True)` — never an unrestricted unpickle, so a file holding
arbitrary Python objects is refused.  `num_batches_tracked` entries are dropped, and
the remaining tensors are mapped onto the model's parameters and buffers BY ORDER
(the model's graph order against the state dict's order), each pair's shape checked.
When the source names are exactly the model's names, they are mapped by name instead.

A `.safetensors` file does not keep the order its tensors were registered in (it
stores them sorted), so its names are put in natural order: module paths compared
with their numbers as numbers (`layer2` before `layer10`), and inside one module
`weight, bias, running_mean, running_var` first.  For a module whose attribute names
do not sort in execution order, convert from a `.pt` state dict instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compiler.ir import Graph
from ..spec.diagnostics import UserError
from . import checkpoint as ckpt

_LOCAL_ORDER = {"weight": 0, "bias": 1, "running_mean": 2, "running_var": 3}
_WRAPPERS = ("state_dict", "model_state_dict", "model")   # common {"state_dict": {...}} layouts


@dataclass
class Conversion:
    """What `convert` did: the pairs it mapped and what it dropped."""

    pairs: list[tuple[str, str]]            # (dlc name, source name)
    dropped: list[str]                      # num_batches_tracked entries
    by_name: bool                           # True when source names were the model's names
    source_ordered: bool                    # False for .safetensors (natural name order)
    warnings: list[str] = field(default_factory=list)   # pairs whose names disagree

    @property
    def count(self) -> int:
        return len(self.pairs)


def _natural_key(name: str) -> tuple:
    module, _, local = name.rpartition(".")
    parts = tuple((0, int(p), "") if p.isdigit() else (1, 0, p)
                  for p in re.split(r"(\d+)", module) if p)
    return (parts, _LOCAL_ORDER.get(local, len(_LOCAL_ORDER)), local)


def _why_refused(e: Exception) -> str:
    text = str(e)
    m = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if m:
        return f"it holds the Python object {m.group(1)}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines and not isinstance(e, KeyError) else "not a PyTorch file"


def _load_pickle(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:                  # noqa: BLE001 — UnpicklingError, RuntimeError, ...
        raise UserError(
            f"refusing to load {path}: it is not a weights-only PyTorch state dict "
            f"({_why_refused(e)})",
            hint="dlc reads .pt/.pth files with torch.load(weights_only=True) and never unpickles "
                 "arbitrary objects; save with torch.save(model.state_dict(), path) or as "
                 ".safetensors") from None
    if isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        for key in _WRAPPERS:
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    return obj


def read_state_dict(path: str | Path) -> tuple[dict[str, torch.Tensor], bool]:
    """The tensors of a state dict file in their order, and whether that order is the source's."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            tensors = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise UserError(f"{path} is not a readable safetensors file ({e})") from None
        return {k: tensors[k] for k in sorted(tensors, key=_natural_key)}, False
    if suffix not in (".pt", ".pth", ".bin"):
        raise UserError(f"cannot read {path}: expected a .safetensors, .pt or .pth state dict")
    obj = _load_pickle(path)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict",
                        hint="save with torch.save(model.state_dict(), path)")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path} is not a flat state dict: the entry {bad[0]!r} is not a tensor")
    return dict(obj), True


def _fmt(shape) -> str:
    return "[" + ", ".join(str(d) for d in shape) + "]"


def map_state(g: Graph, src: dict[str, torch.Tensor], *, where: str,
              source_ordered: bool = True) -> tuple[dict[str, torch.Tensor], Conversion]:
    """Pair the model's parameters and buffers with `src`'s tensors; check counts and shapes."""
    dropped = [k for k in src if k.rsplit(".", 1)[-1] == "num_batches_tracked"]
    kept = [(k, v) for k, v in src.items() if k not in set(dropped)]
    names = ckpt.model_state_names(g)
    by_name = set(names) == {k for k, _ in kept}
    kept, warnings = _pair(names, kept)
    counts = (f"the model has {len(names)} parameter/buffer tensors, {where} has {len(kept)}"
              + (f" (after dropping {len(dropped)} num_batches_tracked)" if dropped else ""))
    hint = None if source_ordered or by_name else (
        ".safetensors keeps no tensor order, so the source was sorted by name; "
        "convert from a .pt state dict saved in execution order instead")
    for i in range(max(len(names), len(kept))):
        mine = names[i] if i < len(names) else None
        theirs = kept[i] if i < len(kept) else None
        want = tuple(g.state[mine].type.shape) if mine else None
        have = tuple(theirs[1].shape) if theirs else None
        if want != have:
            left = f"{mine} {_fmt(want)}" if mine else "(no more model tensors)"
            right = f"{theirs[0]} {_fmt(have)}" if theirs else "(no more source tensors)"
            raise UserError(f"cannot map {where} onto model {g.name}: tensor #{i + 1} is "
                            f"{left} in the model but {right} in the source; {counts}",
                            hint=hint)
    out: dict[str, torch.Tensor] = {}
    for name, (sname, t) in zip(names, kept):
        want_dtype = torch.int64 if g.state[name].type.dtype == "i64" else torch.float32
        if t.is_floating_point() != want_dtype.is_floating_point:
            raise UserError(f"cannot map {where}: {sname} is {t.dtype}, but the model's {name} "
                            f"is {g.state[name].type.dtype}")
        out[name] = t.detach().to("cpu", want_dtype).contiguous()
    return out, Conversion([(n, k) for n, (k, _) in zip(names, kept)], dropped, by_name,
                           source_ordered, warnings)


def _pair(names: list[str], kept: list) -> tuple[list, list[str]]:
    """The source tensors in the model's order: those with one of the model's names by
    name, the others by order into the remaining places; a warning for each pair mapped by
    order whose kinds (weight, bias, running_mean, ...) disagree, or whose source would have
    a by-name partner elsewhere."""
    by_src = dict(kept)
    rest = iter([(k, v) for k, v in kept if k not in set(names)])
    paired, warnings = [], []
    for i, n in enumerate(names):
        if n in by_src:
            paired.append((n, by_src[n]))
            continue
        nxt = next(rest, None)
        if nxt is None:
            break
        paired.append(nxt)
        if nxt[0].rpartition(".")[2] != n.rpartition(".")[2]:
            warnings.append(f"tensor #{i + 1}: the model's {n} is taken from the source's "
                            f"{nxt[0]} by order, but their names disagree")
    paired.extend(rest)                       # more source tensors than places: reported
    return paired, warnings


def convert(spec, src_path: str | Path, out_path: str | Path) -> Conversion:
    """Read a PyTorch state dict, map it onto `spec`'s model, and write a dlc checkpoint."""
    src_path, out_path = Path(src_path), Path(out_path)
    tensors, ordered = read_state_dict(src_path)
    state, conv = map_state(spec.graph, tensors, where=str(src_path), source_ordered=ordered)
    meta = {"model": spec.graph.name, "spec_sha256": spec.spec_hash,
            "converted_from": src_path.name}
    from safetensors import SafetensorError
    try:
        ckpt.save(out_path, spec.graph, state, meta)
    except (OSError, SafetensorError) as e:
        why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise UserError(f"cannot write {out_path}: {why}") from None
    return conv

"""The disk cache of generated kernel modules.

A rendered plan is one Python module of `@triton.jit` kernels (compiler/render.py). It is
written to `$DLC_CACHE_DIR/kernels/dlc_kernels_<key>.py` (default `~/.cache/dlc`), where
the key hashes the source, the Triton version, the device and whether the interpreter
runs it; Triton's own compiled binaries go under the same folder (`TRITON_CACHE_DIR`,
unless set), so a warm cache skips both our rendering's import and Triton's compilation.

An index remembers, per graph and sizes, the last key's parts, so a miss says why:
a new graph, changed source (the spec or dlc changed), another Triton, another device.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import sys
from pathlib import Path


def cache_root() -> Path:
    return Path(os.environ.get("DLC_CACHE_DIR") or Path.home() / ".cache" / "dlc")


def _parts(source: str, device: str) -> dict:
    import triton
    return {"source": hashlib.sha256(source.encode()).hexdigest()[:16],
            "triton": triton.__version__, "device": device,
            "interpreter": os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")}


def _why(old: dict | None, new: dict) -> str:
    if old is None:
        return "first compile of this graph at these sizes"
    changed = [k for k in new if old.get(k) != new[k]]
    if not changed:
        return "the cached file is missing"
    return "changed: " + ", ".join(f"{k} {old.get(k)} -> {new[k]}" for k in changed)


def load(source: str, *, label: str, device: str):
    """(module, hit, why) for the rendered `source`; `label` names the graph and sizes."""
    root = cache_root()
    kdir = root / "kernels"
    kdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("TRITON_CACHE_DIR", str(root / "triton"))
    parts = _parts(source, device)
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    path = kdir / f"dlc_kernels_{key}.py"
    index_path = kdir / "index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError):
        index = {}
    hit = path.exists() and path.read_text() == source
    why = "" if hit else _why(index.get(label), parts)
    if not hit:
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(source)
        os.replace(tmp, path)
        index[label] = parts
        tmp = index_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(index, indent=1, sort_keys=True))
        os.replace(tmp, index_path)
    if int(os.environ.get("DLC_DEBUG", "0") or 0) >= 1:
        sys.stderr.write(f"[dlc] kernel cache {'hit' if hit else 'miss'}: {label} -> {path.name}"
                         + (f" ({why})" if why else "") + "\n")
    name = path.stem
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return module, hit, why

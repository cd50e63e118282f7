"""Per-shape autotuning of the kernel plan's tunable constexprs, on a GPU, with the
choices cached on disk.

Templates declare what may change with `ctx.tunable("BLOCK_M", 32, (32, 64, 128))`
(compiler/render.py). Under Triton's interpreter the defaults are fixed. On a GPU, the
first time a plan runs, every kernel with tunables is rendered once per configuration
(at most `MAX_CONFIGS`), the variants are compiled together in one module and timed on
the plan's real buffers, and the fastest configuration is kept. Choices are cached in
`$DLC_CACHE_DIR/tuning.json`, keyed by the kernel's default source hash, its launch
arguments (the sizes) and the GPU's name, so a warm cache tunes nothing. The plan is then
rendered again with the choices (`render_plan(plan, configs)`).

Set DLC_AUTOTUNE=0 to keep the defaults on a GPU; DLC_AUTOTUNE=1 tunes even under the
interpreter (for testing the mechanism; the timings there mean nothing).
"""
from __future__ import annotations

import copy
import itertools
import json
import os
import time

from . import kcache

MAX_CONFIGS = 12


def enabled(device) -> bool:
    flag = os.environ.get("DLC_AUTOTUNE")
    if flag is not None:
        return flag not in ("", "0")
    interp = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return device.type == "cuda" and not interp


def _device_name(device) -> str:
    import torch
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return "cpu"


def _key(k, device_name: str) -> str:
    from ..compiler.render import TableRef
    sizes = ",".join(repr(a) for a in k.argv if not isinstance(a, TableRef))
    return f"{k.name}|{sizes}|{device_name}"


def _load_cache() -> dict:
    try:
        return json.loads((kcache.cache_root() / "tuning.json").read_text())
    except (OSError, ValueError):
        return {}


def _save_cache(cache: dict) -> None:
    path = kcache.cache_root() / "tuning.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    os.replace(tmp, path)


def configs_of(k) -> list[dict]:
    names = sorted(k.tunables)
    combos = itertools.product(*(k.tunables[n] for n in names))
    return [dict(zip(names, c)) for c in itertools.islice(combos, MAX_CONFIGS)]


def tune(plan, table: list, device, *, reps: int = 5) -> dict[int, dict]:
    """{kernel index: best config} for every tunable kernel of `plan`, timing variants on
    `table` (the materialised argument table of the default plan)."""
    from ..compiler.render import ArgTable, launch_args, render_kernel
    cache = _load_cache()
    name = _device_name(device)
    chosen: dict[int, dict] = {}
    todo = []
    for k in plan.kernels:
        if not k.tunables:
            continue
        key = _key(k, name)
        if key in cache:
            chosen[k.index] = cache[key]
        else:
            todo.append((k, key))
    if not todo:
        return chosen
    variants = []                         # (kernel, key, config, scratch kernel)
    sources: dict[str, str] = {}
    for k, key in todo:
        for cfg in configs_of(k):
            v = copy.copy(k)
            render_kernel(plan, v, ArgTable(plan.table), cfg)
            sources.setdefault(v.name, v.source)
            variants.append((k, key, cfg, v))
    module_src = "import triton\nimport triton.language as tl\n\n\n" + "\n\n".join(sources.values())
    module, _, _ = kcache.load(module_src, label=f"{plan.graph.name}/tuning", device=str(device))
    timings: dict[str, list] = {}
    for k, key, cfg, v in variants:
        fn = getattr(module, v.name)
        args = launch_args(v, table)
        try:
            t = _time(fn, v.grid, args, device, reps)
        except Exception:                 # a configuration that does not compile or fit
            continue
        timings.setdefault(key, []).append((t, cfg, k.index))
    for key, runs in timings.items():
        t, cfg, index = min(runs, key=lambda r: r[0])
        cache[key] = cfg
        chosen[index] = cfg
    _save_cache(cache)
    return chosen


def _time(fn, grid, args, device, reps: int) -> float:
    import torch
    fn[grid](*args)                       # compile and warm up
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            fn[grid](*args)
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        fn[grid](*args)
    return (time.perf_counter() - t0) / reps

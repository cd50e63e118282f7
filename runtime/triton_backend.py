"""The Triton backend: run a graph as its kernel plan (compiler/plan.py).

A `TritonProgram` has the reference backend's interface, `run(state, inputs)`. Per set of
concrete sizes (the batch, size symbols) it makes a plan once, renders it, loads the module
from the kernel cache (runtime/kcache.py) and allocates:

    arena    one uint8 tensor holding every intermediate at its planned offset (the pinned
             gradients and batch statistics first)
    state    for a training program, one flat float32 tensor: parameters, optimizer slots
             and running statistics in the order the multi-tensor updates walk them; the
             state handed to `run` is copied in once, and the updates returned are views of
             it, updated in place, so the loop's next call passes them straight back
    seed     the dropout seed, an int32 device scalar the last kernel of a step advances

The step is `module.step(table)`. On a CUDA GPU it is captured as a CUDA graph after a
warm-up run and replayed, with the inputs (the batch, the labels and the learning rate)
copied into static buffers, so nothing recompiles and the host only launches one graph
(set DLC_CUDA_GRAPH=0 to launch kernel by kernel). A plan with `torch` steps (ops without
kernels, compiler/torch_call.py) is launched step by step, not captured. A last short batch gets its own plan.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import torch

from ..compiler.kernels import bind_inputs
from ..compiler.plan import format_plan, make_plan
from ..compiler.render import launch_args
from . import kcache

TORCH_DTYPES = {"f32": torch.float32, "i64": torch.int64, "bf16": torch.bfloat16,
                "f16": torch.float16, "i32": torch.int32}


@dataclass
class Compiled:
    """One plan at one set of sizes, ready to launch."""

    plan: object
    module: object
    table: list                      # tensors (None where filled per run)
    fill: list = field(default_factory=list)    # (index, "input"/"state", name, shape, dtype)
    inputs: dict = field(default_factory=dict)  # input name -> static buffer (CUDA graphs)
    graph: object = None             # torch.cuda.CUDAGraph once captured
    runs: int = 0
    tuned: bool = False
    arena: object = None             # the uint8 tensor behind every intermediate


class TritonProgram:
    backend = "triton"

    def __init__(self, graph, *, training: bool, device: str = "cpu", seed: int = 0):
        self.graph = graph
        self.training = training
        self.device = torch.device(device)
        self.seed = torch.tensor([seed & 0x7FFFFFFF], dtype=torch.int32, device=self.device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self._compiled: dict[tuple, Compiled] = {}
        self._flat: torch.Tensor | None = None
        self._views: dict[str, torch.Tensor] = {}
        self.compile_seconds = 0.0
        self.cache_hits = 0
        self.cache_misses: list[str] = []
        self._input_dtypes = {v.input_name: TORCH_DTYPES[v.type.dtype] for v in graph.inputs}
        self.cuda_graphs = (self.device.type == "cuda"
                            and os.environ.get("DLC_CUDA_GRAPH", "1") != "0")

    # -- planning
    def compiled(self, shapes: dict[str, tuple]) -> Compiled:
        env = bind_inputs(self.graph, shapes)
        key = tuple(sorted(env.items()))
        c = self._compiled.get(key)
        if c is None:
            t0 = time.perf_counter()
            # DLC_PLAN_TARGET=gpu keeps the GPU's launch configurations under the
            # interpreter (tests use it to run many small programs)
            target = os.environ.get("DLC_PLAN_TARGET") or (
                "interpreter" if _interpreted() else "gpu")
            plan = make_plan(self.graph, env, training=self.training, target=target)
            label = f"{self.graph.name}[{','.join(f'{k}={v}' for k, v in key)}]"
            module, hit, why = kcache.load(plan.module, label=label, device=str(self.device))
            if hit:
                self.cache_hits += 1
            else:
                self.cache_misses.append(why)
            c = self._materialise(plan, module)
            self._compiled[key] = c
            self.compile_seconds += time.perf_counter() - t0
        return c

    @property
    def launches_per_step(self) -> int | None:
        c = next(iter(self._compiled.values()), None)
        return None if c is None else c.plan.launches

    def plan_text(self, shapes: dict[str, tuple]) -> str:
        return format_plan(self.compiled(shapes).plan)

    def _materialise(self, plan, module) -> Compiled:
        dev = self.device
        arena = torch.empty(max(plan.arena_bytes, 16), dtype=torch.uint8, device=dev)
        if plan.flat_state and self._flat is None:
            self._flat = torch.zeros(max(plan.state_numel, 1), dtype=torch.float32, device=dev)
            for name, v in self.graph.state.items():
                b = plan.buffers[id(v)]
                if v.type.dtype != "f32":
                    raise NotImplementedError(f"flat state holds float32 only: @{name}")
                self._views[name] = self._flat[b.offset:b.offset + b.numel].view(b.shape)
        c = Compiled(plan, module, [])
        for i, arg in enumerate(plan.table):
            if arg.kind == "seed":
                c.table.append(self.seed)
            elif arg.kind == "generator":
                c.table.append(self.generator)
            elif arg.kind == "seg":
                region, off, n = arg.key
                if region == "state":
                    c.table.append(self._flat[off:off + n])
                else:
                    c.table.append(arena[off * 4:(off + n) * 4].view(torch.float32))
            else:
                b = plan.buffers[arg.key[0]]
                while b.where == "alias":
                    b = b.base
                dtype = TORCH_DTYPES[b.dtype]
                if b.where in ("arena", "pinned"):
                    c.table.append(arena[b.offset:b.offset + b.nbytes].view(dtype).view(b.shape))
                elif b.where == "state" and plan.flat_state:
                    c.table.append(self._views[b.name[1:]])
                elif b.where == "state":
                    c.table.append(None)
                    c.fill.append((i, "state", b.name[1:]))
                elif b.where == "input":
                    c.table.append(None)
                    c.fill.append((i, "input", b.name[1:]))
                else:
                    raise AssertionError(f"no buffer for {b.name} ({b.where})")
        c.arena = arena
        return c

    # -- the random state, for a checkpoint to resume from: the dropout seed (updated in
    # place: kernels hold it), then the torch steps' generator (assign_targets' sampling)
    def rng_state(self) -> torch.Tensor:
        seed = self.seed.cpu().clone().view(torch.uint8)
        return torch.cat([seed, self.generator.get_state()])

    def set_rng_state(self, t: torch.Tensor) -> None:
        t = t.cpu()
        if t.dtype == torch.int32:                      # a checkpoint of the seed alone
            self.seed.copy_(t.to(self.seed.device))
            return
        self.seed.copy_(t[:4].clone().view(torch.int32).to(self.seed.device))
        self.generator.set_state(t[4:].clone())

    # -- running
    def _load_state(self, state: dict) -> None:
        for name, view in self._views.items():
            t = state.get(name)
            if t is not None and t is not view:
                view.copy_(t.reshape(view.shape))

    def _bind(self, c: Compiled, state: dict, inputs: dict) -> list:
        b = list(c.table)
        for i, kind, name in c.fill:
            if kind == "state":
                t = state[name]
            elif c.inputs:
                t = c.inputs[name]
            else:
                t = inputs[name]
            if t.device != self.device or not t.is_contiguous():
                t = t.to(self.device).contiguous()
            b[i] = t
        return b

    def run(self, state: dict, inputs: dict, fetch=()):
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        c = self.compiled(shapes)
        plan = c.plan
        if plan.flat_state:
            self._load_state(state)
        inputs = {k: self._as_input(k, v) for k, v in inputs.items()}
        if not c.tuned:
            self._tune(c, state, inputs)
        if self.cuda_graphs and plan.flat_state and not plan.torch_steps:
            self._run_captured(c, state, inputs)
        else:
            c.module.step(self._bind(c, state, inputs))
        c.runs += 1
        outputs = [self._read(c, v, state, inputs).clone() for v in self.graph.outputs]
        updates = {}
        if plan.flat_state:
            updates = {name: self._views[name] for name in self.graph.updates}
        fetched = [self._read(c, v, state, inputs).clone() for v in fetch]
        return outputs, updates, fetched

    def _tune(self, c: Compiled, state: dict, inputs: dict) -> None:
        """Autotune the plan's tunable kernels on its real buffers (GPU), then re-render."""
        from . import autotune
        from ..compiler.render import render_plan
        c.tuned = True
        if not autotune.enabled(self.device) or not any(k.tunables for k in c.plan.kernels):
            return
        t0 = time.perf_counter()
        configs = autotune.tune(c.plan, self._bind(c, state, inputs), self.device)
        if configs:
            table = list(c.plan.table)
            c.plan.module = render_plan(c.plan, configs)
            assert c.plan.table == table, "tuning changed the argument table"
            c.module, _, _ = kcache.load(c.plan.module, label=f"{self.graph.name}/tuned",
                                         device=str(self.device))
        self.compile_seconds += time.perf_counter() - t0

    def _as_input(self, name: str, t) -> torch.Tensor:
        """An input as the kernels read it: on the device, contiguous, of the graph's dtype."""
        t = torch.as_tensor(t, device=self.device)
        want = self._input_dtypes[name]
        if t.dtype != want:
            t = t.to(want)
        return t.contiguous()

    def _run_captured(self, c: Compiled, state: dict, inputs: dict) -> None:
        """Warm up once, then capture the whole step as one CUDA graph and replay it."""
        if not c.inputs:
            c.inputs = {k: torch.empty_like(v) for k, v in inputs.items()}
        for k, v in inputs.items():
            c.inputs[k].copy_(v, non_blocking=True)
        if c.graph is not None:
            c.graph.replay()
            return
        b = self._bind(c, state, c.inputs)
        if c.runs >= 1:
            torch.cuda.synchronize(self.device)
            g = torch.cuda.CUDAGraph()
            # the capture records launches without running them: state is not advanced
            with torch.cuda.graph(g):
                c.module.step(b)
            c.graph = g
            g.replay()
        else:
            c.module.step(b)

    def _read(self, c: Compiled, v, state: dict, inputs: dict) -> torch.Tensor:
        plan = c.plan
        shape = plan.shape(v)                 # a view is read back in its own shape
        v = plan.base(v)
        if v.state is not None:
            return self._views.get(v.state.name, state.get(v.state.name)).reshape(shape)
        if v.input_name is not None:
            return (c.inputs or inputs)[v.input_name].reshape(shape)
        b = plan.buffers[id(v)]
        while b.where == "alias":
            b = b.base
        if b.where == "state":
            return self._views.get(b.name[1:], state.get(b.name[1:])).reshape(shape)
        dtype = TORCH_DTYPES[b.dtype]
        return c.arena[b.offset:b.offset + b.nbytes].view(dtype).view(shape)

    def profile(self, state: dict, inputs: dict) -> list:
        """One step kernel by kernel, synchronised around each: a KernelTime per kernel."""
        from .backends import KernelTime
        shapes = {k: tuple(v.shape) for k, v in inputs.items()}
        c = self.compiled(shapes)
        if c.plan.flat_state:
            self._load_state(state)
        inputs = {k: self._as_input(k, v) for k, v in inputs.items()}
        b = self._bind(c, state, inputs)
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        times = []
        for k in c.plan.kernels:
            fn = getattr(c.module, k.name)
            args = launch_args(k, b)
            sync()
            t0 = time.perf_counter()
            if k.family == "torch":            # compiler/torch_call.py: takes the table
                fn(b)
            else:
                fn[k.grid](*args)
            sync()
            times.append(KernelTime(k.name, _covers(k), time.perf_counter() - t0))
        return times


def _covers(k) -> str:
    """What a kernel computes, for people: its ops (repeats counted) and their layers."""
    ops: dict[str, int] = {}
    for n in k.nodes():
        ops[n.op] = ops.get(n.op, 0) + 1
    parts = [op if c == 1 else f"{op} x{c}" for op, c in ops.items()]
    parts += [f"@{name}" for name, _ in k.scalar_updates]
    if k.advance_seed:
        parts.append("dropout seed")
    scopes = sorted({n.scope for n in k.nodes() if n.scope and not k.multi})
    return ", ".join(parts) + (f" [{', '.join(scopes)}]" if scopes else "")


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

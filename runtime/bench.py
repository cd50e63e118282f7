"""`dlc bench`: time a spec's training step (and inference) on a backend, and optionally
the same network as PyTorch baselines in the same process.

    bench(spec, backend="auto", device=None, batch=None, steps=20, warmup=3,
          infer=True, compare=False, seed=0) -> dict

What is measured, on synthetic data of the model's input shape (labels drawn in the range
of the output width for cross-entropy, per-pixel labels for a segmentation loss, for a
detector generated ground-truth boxes, as many per image as the data promises
(compiler/emit.py `boxes_per_image`) (and sliding windows as the
`proposals` input), normal targets otherwise):

    train     median / min / max ms per training step, samples/s, peak device memory
              (torch.cuda.max_memory_allocated over the timed steps; None on the CPU),
              compile time cold (program built and its first step run with an empty
              kernel cache: a fresh $DLC_CACHE_DIR) and warm (the same again, with that
              cache populated), and a per-kernel breakdown from `program.profile`
              aggregated by what each kernel covers, sorted by time, with its share
    infer     the inference graph's median ms per batch, samples/s, first-run time
    compare   (--compare; runtime/baselines.py) PyTorch baselines of the same network:
              `EagerNet`, an nn.Module
              initialised from the same dlc state whose forward runs the spec's
              train-lowered forward graph (with the loss, no autodiff or optimizer) through
              the reference ops, backward by autograd, and the matching torch.optim
              optimizer; then on a GPU `torch.compile` of that step (default and
              reduce-overhead) and the whole eager step captured as one CUDA graph. Each
              gets its median ms per step and dlc's time ratio to it.

On CUDA each step is timed with a pair of `torch.cuda.Event`s and the device is
synchronised only around the timed region; on the CPU with `time.perf_counter`.
Nothing here asserts a ratio; they are reported.
"""
from __future__ import annotations

import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

import torch

from ..compiler.config import target_input
from ..compiler.pipeline import (build_infer_graph, build_train_graph, target_type,
                                 term_output)
from ..compiler.emit import boxes_per_image, text_table
from ..spec.diagnostics import UserError
from .backends import make_program, resolve
from .checks import check_batch_norm
from .detect import detector_of
from .proposals import INPUT as PROPOSALS, sliding_windows
from .state import init_state


# -- setup -------------------------------------------------------------------------------------

@dataclass
class Setup:
    """A spec made ready to time: its graphs, backend, device, batch and synthetic data."""

    spec: object
    train_graph: object
    infer_graph: object | None
    backend: str
    device: str
    batch: int
    inputs: dict                       # the train graph's inputs: %x..., %y, %lr
    seed: int = 0
    notes: list = field(default_factory=list)

    @property
    def model_inputs(self) -> dict:
        return {v.input_name: self.inputs[v.input_name] for v in self.spec.graph.inputs}

    @property
    def lr(self) -> float:
        return float(self.spec.config.optimizer.args["lr"])


def check_args(batch, steps: int, warmup: int) -> None:
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise UserError(f"--batch must be a whole number of at least 1, got {batch}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"--steps must be at least 1, got {steps}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise UserError(f"--warmup must not be negative, got {warmup}")


def _batch_size(spec, batch: int | None) -> int:
    if batch is not None:
        return batch
    b = spec.config.batch
    if b == "full":
        raise UserError("the spec trains with `batch full` (the whole data set per step); "
                        "bench needs a batch size", spec.config.spans.get("batch"),
                        hint="give one with --batch N")
    return int(b)


def _concrete(shape, what: str) -> tuple:
    if any(not isinstance(d, int) for d in shape):
        raise UserError(f"bench needs concrete sizes, but {what} is "
                        f"[{', '.join(str(d) for d in shape)}] per example",
                        hint="fix the size symbols with --set model.NAME=VALUE")
    return tuple(shape)


def synthetic_inputs(spec, batch: int, device, seed: int = 0) -> dict:
    """The train graph's inputs: random model inputs (sliding windows as proposals), each
    loss's target (see `_target`), and the optimizer's learning rate as %lr."""
    gen = torch.Generator().manual_seed(seed)
    g = spec.graph
    inputs = {}
    for v in g.inputs:
        shape = _concrete(v.type.shape[1:], f"the input {v.input_name}")
        if v.input_name == PROPOSALS and spec.config.proposals is not None:
            windows = torch.from_numpy(sliding_windows(*_image_size(g), shape[0]))  # (P, 4)
            inputs[v.input_name] = windows.expand(batch, *shape).clone()
        elif v.type.dtype == "f32":
            inputs[v.input_name] = torch.randn((batch, *shape), generator=gen)
        else:
            inputs[v.input_name] = torch.zeros((batch, *shape), dtype=torch.int64)
    for term in spec.config.loss_terms():
        inputs[target_input(term.target)] = _target(spec, term, batch, gen)
    inputs["lr"] = torch.tensor(float(spec.config.optimizer.args["lr"]), dtype=torch.float32)
    if spec.config.label_mixer is not None and spec.config.loss.name == "cross_entropy":
        inputs.update(y_b=inputs["y"].roll(1), lam_a=torch.tensor(0.7), lam_b=torch.tensor(0.3))
    return {k: t.to(device) for k, t in inputs.items()}


def _target(spec, term, batch: int, gen) -> torch.Tensor:
    """A loss term's synthetic target: class indices in range of the scored output's width
    (cross-entropy, per pixel for pixel_cross_entropy), boxes (a detection loss), else
    normal values of the output's shape."""
    g, name, det = spec.graph, term.call.name, detector_of(spec.config)
    if det is not None and term.target == det.target:
        return _boxes(g, det.classes(g), batch, boxes_per_image(spec.config), gen)
    out = term_output(g, term).type
    want = target_type(out, name)
    shape = _concrete(want.shape[1:], "the target")
    if want.dtype == "i64":
        classes = out.shape[1] if out.rank >= 2 and isinstance(out.shape[1], int) else None
        if classes is None:
            raise UserError(f"{name} needs [N, classes, ...] outputs, the model gives {out}")
        return torch.randint(0, classes, (batch, *shape), generator=gen)
    return torch.randn((batch, *shape), generator=gen)


def _image_size(g) -> tuple[int, int]:
    """(H, W) of the model's first input, an image [C, H, W]."""
    h, w = _concrete(g.inputs[0].type.shape[-2:], "the image input")
    return h, w


def _boxes(g, classes: int, batch: int, m: int, gen) -> torch.Tensor:
    """(batch, m, 5) ground truth [class 1..C, x0, y0, x1, y1]: squares of a sixth to a
    half of the image's shorter side, anywhere inside it."""
    h, w = _image_size(g)
    side = min(h, w) * (1 / 6 + torch.rand((batch, m), generator=gen) / 3)
    x0 = (w - side) * torch.rand((batch, m), generator=gen)
    y0 = (h - side) * torch.rand((batch, m), generator=gen)
    cls = torch.randint(1, classes + 1, (batch, m), generator=gen).float()
    return torch.stack([cls, x0, y0, x0 + side, y0 + side], dim=2)


def prepare(spec, *, backend: str = "auto", device: str | None = None, batch: int | None = None,
            infer: bool = True, seed: int = 0) -> Setup:
    batch = _batch_size(spec, batch)
    check_args(batch, 1, 0)
    check_batch_norm(spec, batch, at_layer=True, hint="use --batch 2 or more")
    train = build_train_graph(spec.graph, spec.config)
    inf = build_infer_graph(spec.graph, spec.config) if infer else None
    backend, device = resolve(backend, device, [train] + ([inf] if inf is not None else []))
    inputs = synthetic_inputs(spec, batch, device, seed)
    return Setup(spec, train, inf, backend, device, batch, inputs, seed)


# -- timing ------------------------------------------------------------------------------------

def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_steps(step, *, steps: int, warmup: int, device) -> dict:
    """Run `step()` warmup times, then time `steps` calls: seconds per step, the wall time of
    the timed loop, and the peak device memory over it (None off CUDA)."""
    for _ in range(warmup):
        step()
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
                  for _ in range(steps)]
        t0 = time.perf_counter()
        for start, end in events:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize(dev)
        wall = time.perf_counter() - t0
        seconds = [s.elapsed_time(e) / 1e3 for s, e in events]
        peak = int(torch.cuda.max_memory_allocated(dev))
    else:
        seconds = []
        for _ in range(steps):
            t0 = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - t0)
        wall, peak = sum(seconds), None
    return {"seconds": seconds, "wall": wall, "peak": peak}


def summarize(timing: dict, batch: int) -> dict:
    s = timing["seconds"]
    med = statistics.median(s)
    return {"median_ms": med * 1e3, "min_ms": min(s) * 1e3, "max_ms": max(s) * 1e3,
            "wall_ms_per_step": timing["wall"] / len(s) * 1e3,
            "samples_per_s": batch / med if med > 0 else None,
            "peak_memory_bytes": timing["peak"], "step_ms": [x * 1e3 for x in s]}


@contextlib.contextmanager
def kernel_cache(path: str):
    """Kernel and Triton caches in `path` for the duration, and no generated kernel module
    left loaded, so a program built inside really reads (or fills) that cache."""
    keys = ("DLC_CACHE_DIR", "TRITON_CACHE_DIR")
    old = {k: os.environ.get(k) for k in keys}
    os.environ["DLC_CACHE_DIR"] = path
    os.environ["TRITON_CACHE_DIR"] = os.path.join(path, "triton")
    _forget_kernel_modules()
    try:
        yield path
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _forget_kernel_modules() -> None:
    for name in [m for m in sys.modules if m.startswith("dlc_kernels_")]:
        del sys.modules[name]


def _first_step(setup: Setup, state: dict, training: bool = True):
    """Build the program and run its first step: (program, seconds, outputs, updates)."""
    graph = setup.train_graph if training else setup.infer_graph
    inputs = setup.inputs if training else setup.model_inputs
    _sync(setup.device)
    t0 = time.perf_counter()
    program = make_program(graph, training=training, backend=setup.backend,
                           device=setup.device, seed=setup.seed)
    with torch.no_grad():
        outs, updates, _ = program.run(state, inputs)
    _sync(setup.device)
    return program, time.perf_counter() - t0, outs, updates


def kernel_breakdown(runs: list[list]) -> tuple[list[dict], float]:
    """KernelTimes of one or more profiled steps, aggregated by what they cover (mean per
    step), sorted by time: rows of covers, ms, share, kernels; and the total ms."""
    agg: dict[str, list] = {}
    for times in runs:
        for kt in times:
            row = agg.setdefault(kt.covers or f"({kt.name})", [0.0, 0, kt.name])
            row[0] += kt.seconds / len(runs)
            row[1] += 1
    total = sum(r[0] for r in agg.values()) * 1e3
    rows = [{"covers": covers, "ms": s * 1e3, "share": (s * 1e3 / total) if total else 0.0,
             "kernels": n // len(runs), "name": name}
            for covers, (s, n, name) in agg.items()]
    rows.sort(key=lambda r: -r["ms"])
    return rows, total


def bench_dlc_train(setup: Setup, *, steps: int, warmup: int, profile_runs: int = 3) -> dict:
    """dlc's training step: cold and warm compile, timed steps, memory, kernel breakdown.

    The timed program's untimed steps are its first (the warm compile), a second whose loss
    is read (the first two losses are kept for the baselines' same-network check), and
    `warmup - 2` more."""
    init = init_state(setup.train_graph, setup.seed, setup.device)
    cache = tempfile.mkdtemp(prefix="dlc-bench-cache-")
    try:
        with kernel_cache(cache):
            cold, cold_s, _, _ = _first_step(setup, dict(init))
            cold_compile = getattr(cold, "compile_seconds", None)
            del cold
            gc.collect()
            program, warm_s, outs, updates = _first_step(setup, dict(init))
        state = {**init, **updates}
        losses = [float(outs[0])]

        def step():
            _, upd, _ = program.run(state, setup.inputs)
            state.update(upd)

        with torch.no_grad():
            outs, upd, _ = program.run(state, setup.inputs)     # its loss: after one update
            state.update(upd)
            losses.append(float(outs[0]))
            timing = time_steps(step, steps=steps, warmup=max(warmup - 2, 0),
                                device=setup.device)
            profiles = [program.profile(state, setup.inputs) for _ in range(max(profile_runs, 1))]
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    kernels, total = kernel_breakdown(profiles)
    return {**summarize(timing, setup.batch), "compile_cold_s": cold_s, "compile_warm_s": warm_s,
            "backend_compile_cold_s": cold_compile,
            "backend_compile_warm_s": getattr(program, "compile_seconds", None),
            "launches_per_step": getattr(program, "launches_per_step", None),
            "first_losses": losses, "profile_total_ms": total, "kernels": kernels}


def bench_dlc_infer(setup: Setup, *, steps: int, warmup: int) -> dict:
    state = init_state(setup.spec.graph, setup.seed, setup.device)
    program, first_s, _, _ = _first_step(setup, state, training=False)

    def step():
        program.run(state, setup.model_inputs)

    with torch.no_grad():
        timing = time_steps(step, steps=steps, warmup=warmup, device=setup.device)
    return {**summarize(timing, setup.batch), "first_run_s": first_s,
            "launches_per_step": getattr(program, "launches_per_step", None)}


# -- the PyTorch baselines ---------------------------------------------------------------------

def bench(spec, *, backend: str = "auto", device: str | None = None, batch: int | None = None,
          steps: int = 20, warmup: int = 3, infer: bool = True, compare: bool = False,
          seed: int = 0, profile_runs: int = 3) -> dict:
    """Time `spec`'s training step (and inference) on a backend; see the module docstring."""
    check_args(batch, steps, warmup)
    setup = prepare(spec, backend=backend, device=device, batch=batch, infer=infer, seed=seed)
    gpu = torch.device(setup.device).type == "cuda"
    result = {
        "spec": str(spec.path), "model": spec.graph.name, "params": spec.num_params(),
        "backend": setup.backend, "device": setup.device,
        "gpu": torch.cuda.get_device_name(setup.device) if gpu else None,
        "torch": str(torch.__version__), "batch": setup.batch, "steps": steps,
        "warmup": warmup, "optimizer": str(spec.config.optimizer), "loss": spec.config.loss.name,
        "notes": [],
    }
    if not gpu:
        result["notes"].append("CPU: no device memory figures; times from time.perf_counter")
    if detector_of(spec.config) is not None:
        result["notes"].append(f"detector: {boxes_per_image(spec.config)} generated "
                               "ground-truth boxes per image")
    result["train"] = bench_dlc_train(setup, steps=steps, warmup=warmup,
                                      profile_runs=profile_runs)
    result["infer"] = bench_dlc_infer(setup, steps=steps, warmup=warmup) if infer else None
    result["compare"] = None
    if compare:
        from .baselines import compare_baselines, loss_check, ratios
        baselines = compare_baselines(setup, steps=steps, warmup=warmup)
        result["compare"] = {
            "baselines": baselines,
            "best": ratios(result["train"]["median_ms"], baselines),
            "loss_check": loss_check(setup, result["train"]["first_losses"][:2]),
        }
        skipped = [b["name"] for b in baselines if "skipped" in b]
        if skipped:
            result["notes"].append(f"skipped off the GPU: {', '.join(skipped)}")
    return result


# -- dlc train-style start to the first finished step (run in a fresh process) ------------------

def first_step(spec_path: str, sets=(), *, backend: str = "auto", device: str | None = None,
               batch: int | None = None, seed: int = 0) -> dict:
    """What `dlc train` does before its first step finishes (compile the spec, build the
    train, evaluation and inference graphs, resolve the backend, initialise state, make the
    train program and run it once), with a synthetic batch instead of the data set; seconds
    of each part. Meant for a fresh process, as a user would start one."""
    from ..api import compile_spec
    from ..compiler.pipeline import build_eval_graph
    t0 = time.perf_counter()
    spec = compile_spec(spec_path, list(sets))
    batch = _batch_size(spec, batch)
    check_batch_norm(spec, batch, at_layer=True, hint="use --batch 2 or more")
    train = build_train_graph(spec.graph, spec.config)
    others = [build_infer_graph(spec.graph, spec.config),
              build_eval_graph(spec.graph, spec.config)]
    backend, device = resolve(backend, device, [train, *others])
    state = init_state(train, seed, device)
    program = make_program(train, training=True, backend=backend, device=device, seed=seed)
    inputs = synthetic_inputs(spec, batch, device, seed)
    t1 = time.perf_counter()
    (loss, *_), updates, _ = program.run(state, inputs)
    state.update(updates)
    loss = float(loss)                               # the step is finished when its loss is read
    t2 = time.perf_counter()
    return {"backend": backend, "device": device, "batch": batch,
            "setup_s": t1 - t0, "first_step_s": t2 - t1, "loss": loss,
            "backend_compile_s": getattr(program, "compile_seconds", None),
            "cache_hits": getattr(program, "cache_hits", None),
            "cache_misses": (len(program.cache_misses) if hasattr(program, "cache_misses")
                             else None)}


# -- the report --------------------------------------------------------------------------------

def _ms(x) -> str:
    return "-" if x is None else f"{x:,.3f}" if x < 10 else f"{x:,.1f}"


def _mem(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.1f} MiB"


def format_report(r: dict, top: int = 12) -> str:
    t = r["train"]
    lines = [f"dlc bench {r['spec']}: {r['model']} ({r['params']:,} parameters), "
             f"{r['backend']} on {r['gpu'] or r['device']}, batch {r['batch']}, "
             f"{r['steps']} timed steps after {r['warmup']} warm-up, {r['optimizer']}", ""]
    rows = [["", "median ms", "min ms", "max ms", "samples/s", "peak memory"]]
    for name, s in (("train step", t), ("inference", r.get("infer"))):
        if s:
            rows.append([name, _ms(s["median_ms"]), _ms(s["min_ms"]), _ms(s["max_ms"]),
                         f"{s['samples_per_s']:,.0f}" if s["samples_per_s"] else "-",
                         _mem(s["peak_memory_bytes"])])
    lines += text_table(rows, {1, 2, 3, 4, 5})
    lines.append("")
    lines.append(f"compile + first step: cold {t['compile_cold_s']:.3f} s (empty kernel cache), "
                 f"warm {t['compile_warm_s']:.3f} s (cache populated)")
    if t.get("backend_compile_cold_s") is not None:
        lines.append(f"  of which the backend compiled: cold {t['backend_compile_cold_s']:.3f} s, "
                     f"warm {t['backend_compile_warm_s']:.3f} s")
    if t.get("launches_per_step") is not None:
        lines.append(f"launches per step: {t['launches_per_step']}")
    if r.get("infer"):
        lines.append(f"inference first run: {r['infer']['first_run_s'] * 1e3:.1f} ms")
    kernels = t["kernels"]
    lines += ["", f"per-kernel breakdown of one training step (profiled, synchronised around "
                  f"each; {t['profile_total_ms']:.3f} ms in all):"]
    rows = [["covers", "kernels", "ms", "share"]]
    for k in kernels[:top]:
        covers = k["covers"] if len(k["covers"]) <= 60 else k["covers"][:57] + "..."
        rows.append([covers, str(k["kernels"]), _ms(k["ms"]), f"{k['share'] * 100:5.1f}%"])
    lines += ["  " + x for x in text_table(rows, {1, 2, 3})]
    if len(kernels) > top:
        rest = kernels[top:]
        lines.append(f"  ... {len(rest)} more ({sum(k['ms'] for k in rest):.3f} ms, "
                     f"{sum(k['share'] for k in rest) * 100:.1f}%)")
    c = r.get("compare")
    if c:
        lines += ["", "PyTorch baselines of the same network (dlc time / baseline time: "
                      "below 1 means dlc is faster):"]
        lines += ["  " + x for x in format_baselines(c["baselines"], t["median_ms"])]
        if c["best"]:
            lines.append(f"  best baseline: {c['best']['name']} {_ms(c['best']['median_ms'])} ms"
                         f" -> dlc/best {c['best']['dlc_over_best']:.2f}x")
        lc = c["loss_check"]
        lines.append(f"  same network: first losses dlc {', '.join(f'{x:.6f}' for x in lc['dlc'])}"
                     f"; eager {', '.join(f'{x:.6f}' for x in lc['eager'])} "
                     f"(max difference {lc['max_abs_diff']:.2e})")
    for note in r.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def format_baselines(baselines: list[dict], dlc_ms: float | None) -> list[str]:
    """The baselines as a table (timed ones) and a line for each skipped or failed one."""
    rows = [["", "median ms", "samples/s", "peak memory", "first call s", "dlc/baseline"],
            ["dlc", _ms(dlc_ms), "", "", "", ""]]
    others = []
    for b in baselines:
        if "median_ms" in b:
            ratio = b.get("dlc_over_baseline")
            rows.append([b["name"], _ms(b["median_ms"]),
                         f"{b['samples_per_s']:,.0f}" if b["samples_per_s"] else "-",
                         _mem(b["peak_memory_bytes"]), f"{b['first_call_s']:.3f}",
                         "-" if ratio is None else f"{ratio:.2f}x"])
        else:
            others.append(f"{b['name']}: " + (f"skipped ({b['skipped']})" if "skipped" in b
                                              else f"failed ({b.get('failed')})"))
    return text_table(rows, {1, 2, 3, 4, 5}) + others

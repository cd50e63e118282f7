"""PyTorch baselines for `dlc bench --compare` and benchmarks/gpu_bench.py: the same network
as the spec (its train-lowered forward graph run by the reference ops as an nn.Module, with
autograd and the matching torch.optim optimizer), eager, under torch.compile (default and
reduce-overhead) and captured whole as a CUDA graph; ratios of dlc's step time to each."""
from __future__ import annotations

import gc
import inspect
import time

import torch

from ..compiler.pipeline import PassContext, add_loss, dce, lower_train, run, verify_pass
from ..compiler.ops import get as get_op
from ..spec.diagnostics import UserError
from .bench import Setup, _sync, summarize, time_steps
from .state import init_state

FORWARD = [("lower-train", lower_train), ("add-loss", add_loss), ("dce", dce),
           ("verify", verify_pass)]
BASELINES = ("eager", "torch.compile", "torch.compile reduce-overhead", "cuda graph")


def forward_graph(spec):
    """The spec's training-mode forward graph with its loss (running-statistics updates
    included), without autodiff or the optimizer: outputs (loss, model outputs...)."""
    return run(FORWARD, spec.graph, PassContext(spec.config, f"{spec.graph.name}.forward",
                                                training=True))


class EagerNet(torch.nn.Module):
    """A graph as an nn.Module: trainable state as parameters, the rest as buffers, and a
    forward that runs the graph's nodes in order through the reference ops' forwards.
    `forward(inputs)` returns the loss (the graph's first output) and writes the graph's
    state updates (running statistics) into the buffers, as nn.BatchNorm does."""

    def __init__(self, graph, state: dict, *, device, seed: int = 0):
        super().__init__()
        from ..compiler.lower import live_nodes
        from ..compiler.ops import ExecContext, get
        self.params = torch.nn.ParameterList()
        self.names: dict[str, tuple[str, object]] = {}
        slots: dict[int, int] = {}

        def slot(v) -> int:
            return slots.setdefault(id(v), len(slots))

        self._state = []
        for name, v in graph.state.items():
            t = state[name].detach().clone().to(device)
            if v.state.trainable:
                self.params.append(torch.nn.Parameter(t))
                key = ("p", len(self.params) - 1)
            else:
                key = ("b", f"_buffer{len(self._state)}")
                self.register_buffer(key[1], t)
            self.names[name] = key
            self._state.append((slot(v), key))
        self._inputs = [(v.input_name, slot(v)) for v in graph.inputs]
        self._nodes = []
        for node in live_nodes(graph):
            ins = [slot(v) for v in node.inputs]
            self._nodes.append((get(node.op).forward, ins, [slot(o) for o in node.outputs],
                                node.attrs))
        self._loss = slot(graph.outputs[0])
        self._updates = [(self.names[name], slot(v)) for name, v in graph.updates.items()]
        self._size = len(slots)
        gen = torch.Generator(device=torch.device(device)).manual_seed(seed)
        self.ctx = ExecContext(training=True, generator=gen)

    def tensor(self, key):
        kind, k = key
        return self.params[k] if kind == "p" else getattr(self, k)

    def named_state(self) -> dict:
        return {name: self.tensor(key) for name, key in self.names.items()}

    def forward(self, inputs: dict):
        env = [None] * self._size
        for name, s in self._inputs:
            env[s] = inputs[name]
        for s, key in self._state:
            env[s] = self.tensor(key)
        for fwd, ins, outs, attrs in self._nodes:
            res = fwd([env[i] for i in ins], attrs, self.ctx)
            for o, t in zip(outs, res):
                env[o] = t
        with torch.no_grad():
            for key, s in self._updates:
                self.tensor(key).copy_(env[s])
        return env[self._loss]


def torch_optimizer(call, params, *, capturable: bool = False):
    """The torch.optim optimizer for a dlc `optimizer` setting (the mapping that
    tests/runtime/test_optimizers.py checks step for step)."""
    a, name = call.args, call.name
    optim = torch.optim
    if a.get("eps_inside"):
        raise UserError(f"no torch.optim counterpart for {name}(eps_inside=true)")
    if name == "sgd":
        cls, kw = optim.SGD, {k: a[k] for k in ("momentum", "dampening", "nesterov",
                                                "weight_decay")}
    elif name in ("adam", "adamw"):
        cls = optim.Adam if name == "adam" else optim.AdamW
        kw = {"betas": (a["beta1"], a["beta2"]), "eps": a["eps"],
              "weight_decay": a["weight_decay"], "amsgrad": a["amsgrad"]}
    elif name == "rmsprop":
        cls, kw = optim.RMSprop, {k: a[k] for k in ("alpha", "eps", "momentum", "centered",
                                                    "weight_decay")}
    elif name == "adagrad":
        cls, kw = optim.Adagrad, {"lr_decay": a["lr_decay"], "eps": a["eps"],
                                  "initial_accumulator_value": a["initial_accumulator"],
                                  "weight_decay": a["weight_decay"]}
    elif name == "adadelta":
        cls, kw = optim.Adadelta, {k: a[k] for k in ("rho", "eps", "weight_decay")}
    else:
        raise UserError(f"no torch.optim counterpart for optimizer {name}")
    if capturable and "capturable" in inspect.signature(cls.__init__).parameters:
        kw["capturable"] = True
    return cls(list(params), lr=float(a["lr"]), **kw)


def eager_baseline(setup: Setup, *, capturable: bool = False, autocast=None,
                   channels_last: bool = False, init: dict | None = None):
    """(module, optimizer, step, inputs): the PyTorch eager training step of the same network
    from the same initial state. `autocast` is a dtype to run the forward under
    torch.autocast (bf16); `channels_last` converts 4-d weights and inputs."""
    spec = setup.spec
    if init is None:
        init = init_state(setup.train_graph, setup.seed, setup.device)
    module = EagerNet(forward_graph(spec), init, device=setup.device, seed=setup.seed)
    inputs = {k: v for k, v in setup.inputs.items() if k != "lr"}
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
        inputs = {k: (v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v)
                  for k, v in inputs.items()}
    opt = torch_optimizer(spec.config.optimizer, module.parameters(), capturable=capturable)
    device_type = torch.device(setup.device).type

    def step():
        opt.zero_grad(set_to_none=True)
        if autocast is not None:
            with torch.autocast(device_type, dtype=autocast, cache_enabled=False):
                loss = module(inputs)
        else:
            loss = module(inputs)
        loss.backward()
        opt.step()
        return loss

    return module, opt, step, inputs


def loss_check(setup: Setup, dlc_losses: list[float]) -> dict:
    """The eager baseline's first losses from the dlc initial state and batch (the first is
    the initial loss, the second follows one optimizer step) beside dlc's."""
    _, _, step, _ = eager_baseline(setup)
    eager = [float(step().detach()) for _ in range(len(dlc_losses))]
    diff = max(abs(a - b) for a, b in zip(eager, dlc_losses))
    return {"dlc": dlc_losses, "eager": eager, "max_abs_diff": diff}


def _capture_cuda_graph(step, device, generator=None):
    """Warm the eager step up on a side stream, then capture it whole and return a replay.
    `generator`: a CUDA generator the step draws from (dropout masks), registered with the
    graph so that every replay advances it."""
    dev = torch.device(device)
    side = torch.cuda.Stream(dev)
    side.wait_stream(torch.cuda.current_stream(dev))
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream(dev).wait_stream(side)
    torch.cuda.synchronize(dev)
    graph = torch.cuda.CUDAGraph()
    if generator is not None:
        graph.register_generator_state(generator)
    with torch.cuda.graph(graph):
        step()
    return graph.replay


def run_baseline(setup: Setup, name: str, *, steps: int, warmup: int, autocast=None,
                 channels_last: bool = False) -> dict:
    """One baseline's timing (or the reason it was skipped or failed)."""
    gpu = torch.device(setup.device).type == "cuda"
    if name != "eager" and not gpu:
        why = ("torch.compile is too slow to be worth it on the CPU" if "compile" in name
               else "CUDA graphs need a GPU")
        return {"name": name, "skipped": f"GPU only: {why}"}
    try:
        module, _, step, _ = eager_baseline(setup, capturable=(name == "cuda graph"),
                                            autocast=autocast, channels_last=channels_last)
        t0 = time.perf_counter()
        if name == "eager":
            fn = step
        elif name == "cuda graph":
            random = any(get_op(n.op).random for n in setup.train_graph.nodes)
            fn = _capture_cuda_graph(step, setup.device,
                                     module.ctx.generator if random else None)
        else:
            mode = "reduce-overhead" if "reduce-overhead" in name else None
            fn = torch.compile(step, mode=mode)
        fn()                                          # compiles (torch.compile) or warms up
        _sync(setup.device)
        first = time.perf_counter() - t0
        timing = time_steps(fn, steps=steps, warmup=max(warmup - 1, 0), device=setup.device)
        return {"name": name, **summarize(timing, setup.batch), "first_call_s": first}
    except Exception as e:                            # noqa: BLE001 — a baseline may not work
        return {"name": name, "failed": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                if str(e) else type(e).__name__}
    finally:
        if "compile" in name:
            import importlib                          # drop compiled code and its graph pools
            importlib.import_module("torch._dynamo").reset()
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()


def ratios(dlc_ms: float | None, baselines: list[dict]) -> dict | None:
    """dlc's time over each timed baseline's (below 1: dlc is faster), and over the best."""
    timed = [b for b in baselines if "median_ms" in b]
    for b in timed:
        b["dlc_over_baseline"] = dlc_ms / b["median_ms"] if dlc_ms and b["median_ms"] else None
    if not timed:
        return None
    best = min(timed, key=lambda b: b["median_ms"])
    return {"name": best["name"], "median_ms": best["median_ms"],
            "dlc_over_best": dlc_ms / best["median_ms"] if dlc_ms and best["median_ms"] else None}


def compare_baselines(setup: Setup, *, steps: int, warmup: int, names=BASELINES,
                      autocast=None, channels_last: bool = False) -> list[dict]:
    return [run_baseline(setup, n, steps=steps, warmup=warmup, autocast=autocast,
                         channels_last=channels_last) for n in names]


# -- the whole benchmark -----------------------------------------------------------------------

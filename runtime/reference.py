"""The reference backend: run IR node by node with each op's PyTorch forward.

It is the oracle every other backend is checked against, and runs on the CPU (the
default) or on CUDA.  Intermediate values are dropped after their last use.
"""
from __future__ import annotations

import torch

from ..compiler.ir import Graph, Value
from ..compiler.lower import live_nodes
from ..compiler.ops import ExecContext, get


class ReferenceProgram:
    """An executable graph: `run(state, inputs)` -> (outputs, updated state entries)."""

    backend = "reference"

    def __init__(self, graph: Graph, *, training: bool, device: str = "cpu", seed: int = 0):
        self.graph = graph
        self.device = torch.device(device)
        self.nodes = live_nodes(graph)
        self.ctx = ExecContext(training=training,
                               generator=torch.Generator(device=self.device).manual_seed(seed))
        self.ops = [get(n.op) for n in self.nodes]
        keep = {id(v) for v in graph.outputs} | {id(v) for v in graph.updates.values()}
        self._last_use: list[list[int]] = [[] for _ in self.nodes]
        seen: set[int] = set()
        for i in range(len(self.nodes) - 1, -1, -1):
            for v in self.nodes[i].inputs:
                if v.node is not None and id(v) not in seen and id(v) not in keep:
                    seen.add(id(v))
                    self._last_use[i].append(id(v))

    def rng_state(self) -> torch.Tensor:
        """The dropout generator's state, for a checkpoint to resume from."""
        return self.ctx.generator.get_state()

    def set_rng_state(self, t: torch.Tensor) -> None:
        self.ctx.generator.set_state(t.cpu())

    def profile(self, state: dict, inputs: dict) -> list:
        """One run with the device synchronised around every node: a `KernelTime` per node."""
        import time
        from .backends import KernelTime
        timed = []
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        def call(node, op, ins):
            sync()
            t0 = time.perf_counter()
            outs = op.forward(ins, node.attrs, self.ctx)
            sync()
            timed.append(KernelTime(node.op, f"{node.op} [{node.scope or '-'}]",
                                    time.perf_counter() - t0))
            return outs

        self.run(state, inputs, call=call)
        return timed

    def run(self, state: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
            fetch: list[Value] = (), call=None
            ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor], list]:
        """`call(node, op, ins)`, when given, runs each node instead of `op.forward`."""
        g = self.graph
        env: dict[int, torch.Tensor] = {}
        for v in g.inputs:
            env[id(v)] = inputs[v.input_name]
        for name, v in g.state.items():
            env[id(v)] = state[name]
        fetch_ids = {id(v) for v in fetch}
        fetched: dict[int, torch.Tensor] = {}
        for node, op, dead in zip(self.nodes, self.ops, self._last_use):
            ins = [env[id(v)] for v in node.inputs]
            outs = op.forward(ins, node.attrs, self.ctx) if call is None else call(node, op, ins)
            for o, t in zip(node.outputs, outs):
                env[id(o)] = t
                if id(o) in fetch_ids:
                    fetched[id(o)] = t
            for vid in dead:
                env.pop(vid, None)
        outputs = [env[id(v)] for v in g.outputs]
        updates = {name: env[id(v)] for name, v in g.updates.items()}
        return outputs, updates, [fetched.get(id(v), env.get(id(v))) for v in fetch]

"""A model on a backend: its state, an inference program and an evaluation program."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..compiler.pipeline import build_eval_graph, build_infer_graph
from ..spec.diagnostics import UserError
from . import checkpoint as ckpt
from .backends import make_program, resolve
from .state import init_state


class Model:
    def __init__(self, spec, backend: str = "auto", device: str | None = None,
                 checkpoint: str | Path | None = None, seed: int | None = None,
                 extra_graphs: list | None = None):
        """`extra_graphs`: other graphs that will run on the same backend (the train graph),
        so that `auto` and `triton` decide for all of them at once."""
        extra_graphs = list(extra_graphs or [])
        self.spec = spec
        self.seed = spec.config.seed if seed is None else seed
        g = spec.graph
        self.infer_graph = build_infer_graph(g, spec.config)
        self.eval_graph = build_eval_graph(g, spec.config)
        self.backend, self.device = resolve(backend, device, extra_graphs +
                                            [self.infer_graph, self.eval_graph])
        self.state = init_state(g, self.seed, self.device)
        if checkpoint is not None:
            self.load(checkpoint)
        self._infer = make_program(self.infer_graph, training=False, backend=self.backend,
                                   device=self.device)
        self._eval = make_program(self.eval_graph, training=False, backend=self.backend,
                                  device=self.device)

    # -- state
    def load(self, path: str | Path) -> None:
        for name, t in ckpt.load(Path(path), self.spec.graph).items():
            self.state[name] = t.to(self.device)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        ckpt.save(Path(path), self.spec.graph, self.state,
                  {"model": self.spec.graph.name, "spec_sha256": self.spec.spec_hash,
                   **(meta or {})})

    # -- inputs
    def input_shape(self) -> tuple:
        return tuple(self.spec.graph.inputs[0].type.shape[1:])

    def shape_batch(self, x: np.ndarray, what: str) -> torch.Tensor:
        """Features as the model's input tensor: reshaped when only the layout differs."""
        want = self.input_shape()
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise UserError(f"{what} must be numeric, got dtype {x.dtype}")
        if any(not isinstance(d, int) for d in want):
            if x.ndim != len(want) + 1:
                raise UserError(f"{what} has shape {list(x.shape)}; the model's input is "
                                f"{self.spec.graph.inputs[0].type}")
        else:
            per = int(np.prod(want))
            if x.ndim == 0 or int(np.prod(x.shape[1:])) != per:
                name = self.spec.graph.inputs[0].input_name
                raise UserError(f"{what} has shape {list(x.shape)}, but the model's input "
                                f"{name} is {self.spec.graph.inputs[0].type} "
                                f"({per} values per example)")
            x = x.reshape((len(x), *want))
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)

    # -- running
    def predict(self, x: np.ndarray, batch: int = 512) -> np.ndarray:
        """The model's first output for every row of x (no softmax applied)."""
        xt = self.shape_batch(x, "the input")
        name = self.spec.graph.inputs[0].input_name
        outs = []
        with torch.no_grad():
            for i in range(0, len(xt), batch):
                (y, *_), _, _ = self._infer.run(self.state, {name: xt[i:i + batch]})
                outs.append(y.cpu())
        if not outs:
            return np.zeros((0, *self.infer_graph.outputs[0].type.shape[1:]), np.float32)
        return torch.cat(outs).numpy()

    def evaluate_arrays(self, x: np.ndarray, y: np.ndarray, batch: int = 512) -> dict:
        """Mean loss and (for classification) accuracy over (x, y)."""
        if len(x) == 0:
            return {"loss": None, "acc": None}
        xt = self.shape_batch(x, "the data")
        yt = torch.as_tensor(y, device=self.device)
        name = self.spec.graph.inputs[0].input_name
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)   # loss sum, correct
        classify = self.spec.config.loss.name == "cross_entropy"
        with torch.no_grad():
            for i in range(0, len(xt), batch):
                xb, yb = xt[i:i + batch], yt[i:i + batch]
                (loss, logits, *_), _, _ = self._eval.run(self.state, {name: xb, "y": yb})
                sums[0] += loss.double() * len(xb)          # on the device: one read-back
                if classify:
                    sums[1] += (logits.argmax(dim=1) == yb).sum()
        total, correct = sums.tolist()
        return {"loss": total / len(xt), "acc": correct / len(xt) if classify else None}

    def evaluate(self, split: str = "test") -> dict:
        from .data import load
        data = load(self.spec.config.data, self.spec.config.seed, self.spec.path.parent)
        s = getattr(data, split)
        return self.evaluate_arrays(s.x, s.y)

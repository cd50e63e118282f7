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
        self.eval_graph, self._no_eval = _eval_graph(spec)
        self.backend, self.device = resolve(backend, device, extra_graphs +
                                            [self.infer_graph] +
                                            ([self.eval_graph] if self.eval_graph else []))
        self.state = init_state(g, self.seed, self.device)
        if checkpoint is not None:
            self.load(checkpoint)
        self._infer = make_program(self.infer_graph, training=False, backend=self.backend,
                                   device=self.device)
        self._eval = self.eval_graph and make_program(self.eval_graph, training=False,
                                                      backend=self.backend, device=self.device)

    # -- state
    def load(self, path: str | Path) -> None:
        for name, t in ckpt.load(Path(path), self.spec.graph).items():
            self.state[name] = t.to(self.device)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        ckpt.save(Path(path), self.spec.graph, self.state,
                  {"model": self.spec.graph.name, "spec_sha256": self.spec.spec_hash,
                   **(meta or {})})

    # -- inputs
    @property
    def input_names(self) -> list[str]:
        return [v.input_name for v in self.spec.graph.inputs]

    def input_shape(self, name: str | None = None) -> tuple:
        v = self._input(name)
        return tuple(v.type.shape[1:])

    def _input(self, name: str | None):
        ins = self.spec.graph.inputs
        return ins[0] if name is None else next(v for v in ins if v.input_name == name)

    def shape_batch(self, x: np.ndarray, what: str, name: str | None = None) -> torch.Tensor:
        """Features as the model's input tensor `name` (default: the first): reshaped when
        only the layout differs."""
        v = self._input(name)
        want = tuple(v.type.shape[1:])
        x = np.asarray(x)
        if x.dtype.kind not in "fiub":
            raise UserError(f"{what} must be numeric, got dtype {x.dtype}")
        if any(not isinstance(d, int) for d in want):
            if x.ndim != len(want) + 1:
                raise UserError(f"{what} has shape {list(x.shape)}; the model's input is "
                                f"{v.type}")
        else:
            per = int(np.prod(want))
            if x.ndim == 0 or int(np.prod(x.shape[1:])) != per:
                raise UserError(f"{what} has shape {list(x.shape)}, but the model's input "
                                f"{v.input_name} is {v.type} ({per} values per example)")
            x = x.reshape((len(x), *want))
        return torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)

    def shape_inputs(self, x, what: str) -> dict[str, torch.Tensor]:
        """Every input of the model as a tensor, from one array (a model with one input)
        or a dict of arrays named after the inputs."""
        names = self.input_names
        if not isinstance(x, dict):
            if len(names) > 1:
                raise UserError(f"the model has {len(names)} inputs ({', '.join(names)}), but "
                                f"{what} is one array",
                                hint="name the array that feeds each input (for npz data: "
                                     f'x="{",".join(names)}")')
            return {names[0]: self.shape_batch(x, what)}
        missing = [n for n in names if n not in x]
        if missing:
            raise UserError(f"{what} has no array for the model's input {missing[0]!r} "
                            f"(arrays: {', '.join(x)})")
        out = {n: self.shape_batch(x[n], f"{what} ({n})", n) for n in names}
        sizes = {n: len(t) for n, t in out.items()}
        if len(set(sizes.values())) > 1:
            raise UserError(f"{what}: the inputs have different numbers of examples "
                            f"({', '.join(f'{n}: {k}' for n, k in sizes.items())})")
        return out

    # -- running
    def predict(self, x, batch: int = 512) -> np.ndarray:
        """The model's first output for every row of x (no softmax applied)."""
        return next(iter(self.predict_outputs(x, batch).values()))

    def predict_outputs(self, x, batch: int = 512) -> dict[str, np.ndarray]:
        """Every output of the model (by name) for every example of x: an array for a model
        with one input, else a dict of arrays named after the inputs."""
        xs = self.shape_inputs(x, "the input")
        n = len(next(iter(xs.values())))
        names = self.infer_graph.output_names or [f"out{i}" for i in
                                                  range(len(self.infer_graph.outputs))]
        outs: list[list[torch.Tensor]] = [[] for _ in names]
        with torch.no_grad():
            for i in range(0, n, batch):
                ys, _, _ = self._infer.run(self.state, {k: t[i:i + batch] for k, t in xs.items()})
                for o, y in zip(outs, ys):
                    o.append(y.cpu())
        if n == 0:
            return {name: np.zeros((0, *v.type.shape[1:]), np.float32)
                    for name, v in zip(names, self.infer_graph.outputs)}
        return {name: torch.cat(o).numpy() for name, o in zip(names, outs)}

    def evaluate_arrays(self, x, y: np.ndarray, batch: int = 512) -> dict:
        """Mean loss and (for classification) accuracy over (x, y)."""
        if len(y) == 0:
            return {"loss": None, "acc": None}
        if self._no_eval is not None:
            raise self._no_eval
        xs = self.shape_inputs(x, "the data")
        yt = torch.as_tensor(y, device=self.device)
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)   # loss sum, correct
        classify = self.spec.config.loss.name == "cross_entropy"
        with torch.no_grad():
            for i in range(0, len(yt), batch):
                yb = yt[i:i + batch]
                inputs = {k: t[i:i + batch] for k, t in xs.items()}
                (loss, logits, *_), _, _ = self._eval.run(self.state, {**inputs, "y": yb})
                sums[0] += loss.double() * len(yb)          # on the device: one read-back
                if classify:
                    sums[1] += (logits.argmax(dim=1) == yb).sum()
        total, correct = sums.tolist()
        return {"loss": total / len(yt), "acc": correct / len(yt) if classify else None}

    def evaluate(self, split: str = "test") -> dict:
        from .data import load
        cfg = self.spec.config
        data = load(cfg.data, cfg.seed, self.spec.path.parent)
        s = getattr(data, split)
        if len(s) == 0:
            raise UserError(f"the data has no {split} split (its {split} fraction is 0)",
                            cfg.data.arg_spans.get(split, cfg.data.span),
                            hint=f"set {split} > 0 in data, or evaluate another --split")
        return self.evaluate_arrays(s.x, s.y)


def _eval_graph(spec):
    """The evaluation graph (the loss on the model's first output), or None and the
    UserError that says why the loss does not fit: such a model still predicts."""
    from ..compiler.ops.registry import ShapeError
    try:
        return build_eval_graph(spec.graph, spec.config), None
    except ShapeError as e:
        return None, UserError(f"cannot evaluate: {e}", spec.config.loss.span)
    except UserError as e:                  # the pipeline's located form of the same error
        return None, e

"""A model on a backend: its state, an inference program and an evaluation program."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..compiler.config import target_input
from ..compiler.pipeline import build_eval_graph, build_infer_graph
from ..spec.diagnostics import UserError
from . import checkpoint as ckpt
from .backends import make_program, resolve
from .proposals import with_proposals
from .detect import Detector, class_names, detection_scores, detections, detector_of
from .seg_metrics import confusion, seg_scores
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
    def predict(self, x, batch: int = 512, output: int = 0) -> np.ndarray:
        """The model's first (or `output`-th) output for every row of x (no softmax)."""
        return list(self.predict_outputs(x, batch).values())[output]

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

    def objective(self) -> "Objective":
        return Objective(self.spec, self.eval_graph)

    def segmentation_output(self) -> int | None:
        """The output a per-pixel loss scores (the first [N, C, H, W] output when the spec
        trains none), or None when the model predicts no per-pixel classes."""
        seg = self.objective().seg if self.eval_graph is not None else None
        if seg is not None:
            return seg[0] - 1                                  # eval outputs start with the loss
        return next((i for i, v in enumerate(self.infer_graph.outputs) if v.type.rank == 4),
                    None)

    def evaluate_arrays(self, x: np.ndarray, y: np.ndarray, batch: int = 512,
                        extra: dict | None = None, names: list | None = None,
                        score_boxes: bool = True) -> dict:
        """Mean loss and (for classification) accuracy over (x, y); with several loss terms
        each term's mean (`losses`), with a per-pixel loss pixel accuracy and mean IoU, for a
        detector mAP@0.5 (`map50`), mAP@[.5:.95] (`map`) and per class (`ap`).
        `extra`: the other target fields the losses read (masks, boxes, ...), by name;
        `names`: the data's class names (index 0 the background), for per-class scores;
        `score_boxes` False leaves a detector's mAP out (train's map_every)."""
        if len(y) == 0:
            return {"loss": None, "acc": None}
        if self._no_eval is not None:
            raise self._no_eval
        obj = Objective(self.spec, self.eval_graph)
        xs = self.shape_inputs(x, "the data")
        targets = {"y": torch.as_tensor(y, device=self.device),
                   **{k: torch.as_tensor(v, device=self.device) for k, v in (extra or {}).items()
                      if k in obj.inputs}}
        n = len(y)
        sums = obj.zeros(self.device)
        det = detector_of(self.spec.config) if score_boxes else None
        found = []
        with torch.no_grad():
            for i in range(0, n, batch):
                tb = {k: v[i:i + batch] for k, v in targets.items() if k in obj.inputs}
                xb = {k: t[i:i + batch] for k, t in xs.items()}
                outs, _, _ = self._eval.run(self.state, {**xb, **tb})
                obj.accumulate(sums, outs, tb)              # on the device: one read-back
                if det is not None:
                    found += self._detections(det, outs[1:], xb)
        scores = obj.means(sums.tolist(), n)
        if det is not None:
            scores.update(detection_scores(
                extra[det.target], found, class_names(names, det.classes(self.spec.graph))))
        return scores

    def _detections(self, det: Detector, outs: list, inputs: dict) -> list:
        """Detection rows per image from a batch's model outputs (in the model's order)."""
        g = self.spec.graph
        tensors = {**inputs, **dict(zip(g.output_names, outs))}
        return detections(det, tensors[det.output or g.output_names[0]], tensors)

    def detect(self, x, batch: int = 512) -> list:
        """A detector's detections for every example of x: per image an array of rows
        (class, score, x0, y0, x1, y1), best first (runtime/detect.py)."""
        det = detector_of(self.spec.config)
        if det is None:
            raise UserError(f"the model {self.spec.graph.name} is not a detector: no loss of its "
                            "train section reads ground-truth boxes")
        xs = self.shape_inputs(x, "the input")
        n = len(next(iter(xs.values())))
        found = []
        with torch.no_grad():
            for i in range(0, n, batch):
                xb = {k: t[i:i + batch] for k, t in xs.items()}
                ys, _, _ = self._infer.run(self.state, xb)
                found += self._detections(det, ys, xb)
        return found

    def evaluate_split(self, split, names: list | None = None, score_boxes: bool = True) -> dict:
        """evaluate_arrays over a data Split (its labels or targets and its extra fields)."""
        return self.evaluate_arrays(split.x, split.y, extra=split.extra, names=names,
                                    score_boxes=score_boxes)

    def evaluate(self, split: str = "test") -> dict:
        from .data import load
        cfg = self.spec.config
        data = with_proposals(load(cfg.data, cfg.seed, self.spec.path.parent), cfg.proposals,
                              self.spec.graph)
        s = getattr(data, split)
        if len(s) == 0:
            raise UserError(f"the data has no {split} split (its {split} fraction is 0)",
                            cfg.data.arg_spans.get(split, cfg.data.span),
                            hint=f"set {split} > 0 in data, or evaluate another --split")
        return self.evaluate_split(s, data.class_names)


class Objective:
    """What a train or eval graph's outputs (loss, model outputs..., term losses...) measure,
    summed per batch on the device in one vector:

        [0]  loss * batch          [1]  correct predictions (classification)
        [2:2+T]  each term's loss * batch, when there are T > 1 terms
        [2+T:]   the confusion matrix of the first per-pixel loss (K*K counts)"""

    def __init__(self, spec, graph):
        cfg = spec.config
        terms = cfg.loss_terms()
        self.inputs = cfg.target_inputs()                    # graph input -> data field
        names = graph.output_names
        self.term_names = [t.output for t in terms] if len(terms) > 1 else []
        first = terms[0]
        self.classify = first.call.name == "cross_entropy"
        self.acc_out = names.index(first.output) if first.output else 1
        self.acc_target = target_input(first.target)
        seg = next((t for t in terms if t.call.name == "pixel_cross_entropy"), None)
        self.seg = None
        if seg is not None:                # (output index, target input, classes, ignore)
            out = names.index(seg.output) if seg.output else 1
            self.seg = (out, target_input(seg.target), graph.outputs[out].type.shape[1],
                        seg.call.args["ignore"])
        self.k = self.seg[2] if self.seg else 0

    def zeros(self, device) -> torch.Tensor:
        return torch.zeros(2 + len(self.term_names) + self.k * self.k, dtype=torch.float64,
                           device=device)

    def accumulate(self, sums: torch.Tensor, outs: list, targets: dict, batch=None) -> None:
        """Add a batch's outputs to `sums`; `batch`: how augmentation mixed it (mixup/cutmix:
        each label's correct predictions count by its weight λ)."""
        n = len(next(iter(targets.values())))
        sums[0] += outs[0].double() * n
        if self.classify:
            pred, y = outs[self.acc_out].argmax(dim=1), targets[self.acc_target]
            hit = (pred == y).sum()
            if getattr(batch, "perm", None) is not None:
                hit = batch.lam * hit + (1 - batch.lam) * (pred == y[batch.perm]).sum()
            sums[1] += hit
        t = len(self.term_names)
        if t:
            sums[2:2 + t] += torch.stack([o.double() for o in outs[-t:]]) * n
        if self.seg is not None:
            out, name, k, ignore = self.seg
            conf = confusion(outs[out].argmax(dim=1), targets[name], k, ignore)
            sums[2 + t:] += conf.reshape(-1).double()

    def empty(self) -> dict:
        r = {"loss": None, "acc": None}
        if self.term_names:
            r["losses"] = None
        if self.seg is not None:
            r.update(pixel_acc=None, miou=None)
        return r

    def means(self, v: list, n: int) -> dict:
        """The metrics of the sums `v` (read back) over n examples."""
        r = {"loss": v[0] / n, "acc": v[1] / n if self.classify else None}
        t = len(self.term_names)
        if t:
            r["losses"] = {name: x / n for name, x in zip(self.term_names, v[2:2 + t])}
        if self.seg is not None:
            r.update(seg_scores(np.array(v[2 + t:]).reshape(self.k, self.k)))
        return r


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

"""One epoch of training on the device: the step's programs and state (TrainStep), the pass
over the batches (train_epoch) and the loop's one device-to-host read (read_back, which also
detects divergence).

    TrainStep      the train program (runtime/backends.py) and its state on the device; one
                   step per batch, the epoch's loss sum and correct count kept on the device
    train_epoch    one pass over the batches; the sums are read back only when the progress
                   bar redraws, at most every Progress.REFRESH_S seconds on a terminal, and
                   at the end of the epoch
    EpochStats     what the epoch measured
    Diverged       raised by read_back when the loss is no longer finite or has exploded
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .augment import Augmented, Augmenter
from .backends import make_program
from .batches import Batches
from .distributed import World
from .model import Model, Objective
from .progress import Progress
from .schedules import Schedule
from .state import init_state


class TrainStep:
    """The step's programs and the state they update, on the model's backend and device.

    `run` takes one optimizer step and adds the batch's loss (times its size) and its
    number of correct predictions to `sums`, on the device: nothing waits for the device
    until `read_back` reads `sums`.

    One graph is the whole step (compiler/pipeline.py: TRAIN). With `accumulate k` there
    are two (a list, or one graph for the single-graph step): the grad graph runs on k
    micro-batches, whose gradients are averaged here (weighted by their sizes), and the
    apply graph updates the parameters with them."""

    def __init__(self, graphs, model: Model, data, seed: int):
        graphs = graphs if isinstance(graphs, list) else [graphs]
        self.device = model.device
        self.mixed_loss = any(v.input_name == "y_b" for v in graphs[0].inputs)
        self.programs = [make_program(g, training=True, backend=model.backend,
                                      device=model.device, seed=seed) for g in graphs]
        self.program = self.programs[0]          # the one drawing dropout masks
        self.state = {}
        for g in graphs:
            self.state.update(init_state(g, seed, model.device))    # slots start at zero
        self.state.update(model.state)                                # parameters and buffers
        train_graph = graphs[0]
        self.grad_names = [n for n in train_graph.output_names if n.startswith("grad.")]
        self.accumulate = model.spec.config.accumulate if len(graphs) > 1 else 1
        self.grad_lr = any(v.input_name == "lr" for v in train_graph.inputs)   # nag
        self.x_name = model.spec.graph.inputs[0].input_name     # the one augment transforms
        # input name -> (n, *input) f32: every example of the training split
        self.xs = model.shape_inputs(data.train.x, f"{data.name} examples")
        self.objective = Objective(model.spec, train_graph)
        seg = self.objective.seg               # (output, mask input, classes, ignore label)
        self.mask_name = seg[1] if seg else None     # masks move with their images
        self.box_name = next((name for name, fld in self.objective.inputs.items()
                              if fld == "boxes"), None)          # and so do boxes
        self.augment = Augmenter(model.spec.config.augment, seed, model.device,
                                 mask_fill=seg[3] if seg else 255)
        # target inputs: y (n,) i64 / (n, k) f32, masks (n, H, W) i64, ...
        self.targets = {name: torch.as_tensor(data.train.target(name), device=model.device)
                        for name in self.objective.inputs}
        self.classify = self.objective.classify
        self.lr = torch.zeros((), dtype=torch.float32, device=model.device)   # () filled per step
        self.lam = torch.zeros(2, dtype=torch.float32, device=model.device)   # (2,) λ, 1 - λ
        # f64: the sum of loss * batch size, the number of correct predictions, and what else
        # the objective measures (Objective in runtime/model.py)
        self.sums = self.objective.zeros(model.device)
        # the run's first loss (-1 until the first step), divergence's yardstick
        self.first = torch.tensor(-1.0, dtype=torch.float64, device=model.device)
        self.started = False

    def run(self, idx: torch.Tensor, lr: float) -> None:
        """One optimizer step on the examples `idx` at learning rate `lr`."""
        self.lr.fill_(lr)
        if self.accumulate == 1:
            self._forward_backward(idx, with_lr=True)
            return
        grads = None
        # micro-batches (a last batch shorter than k: one example each)
        for part in torch.tensor_split(idx, min(self.accumulate, len(idx))):
            outs = self._forward_backward(part, with_lr=self.grad_lr)
            weight = len(part) / len(idx)
            if grads is None:
                grads = [g * weight for g in outs]
            else:
                for acc, g in zip(grads, outs):
                    acc.add_(g, alpha=weight)
        inputs = dict(zip(self.grad_names, grads), lr=self.lr)
        _, updates, _ = self.programs[1].run(self.state, inputs)
        self.state.update(updates)

    def _forward_backward(self, idx: torch.Tensor, with_lr: bool) -> list:
        """Run the first program on the examples `idx`: its state updates taken, the
        objective's sums added; returns its gradient outputs (a grad graph's)."""
        targets = {k: v.index_select(0, idx) for k, v in self.targets.items()}  # (batch, ...)
        inputs = {name: x.index_select(0, idx) for name, x in self.xs.items()}
        inputs.update(targets)
        if with_lr:
            inputs["lr"] = self.lr
        batch = self.augment(inputs[self.x_name], targets.get(self.mask_name),
                             targets.get(self.box_name)) if self.augment else None
        if batch is not None:
            inputs[self.x_name] = batch.x
            if batch.masks is not None:
                targets[self.mask_name] = inputs[self.mask_name] = batch.masks
            if batch.boxes is not None:
                targets[self.box_name] = inputs[self.box_name] = batch.boxes
            inputs.update(self._mixed_inputs(inputs, batch))
            inputs.update(self._mixed_labels(targets.get("y"), batch))
        outs, updates, _ = self.program.run(self.state, inputs)
        self.state.update(updates)
        if not self.started:
            self.first.copy_(outs[0])
            self.started = True
        n_model = len(outs) - len(self.grad_names)
        self.objective.accumulate(self.sums, outs[:n_model], targets, batch)
        return outs[n_model:]

    def _mixed_inputs(self, inputs: dict, batch: Augmented) -> dict:
        """A model's other inputs in a mixup/cutmix batch: λ·x + (1 − λ)·x[perm], with the
        batch's λ and partners, so every input of an example comes from the same pair."""
        if batch.perm is None:
            return {}
        return {name: batch.lam * inputs[name] + (1 - batch.lam) * inputs[name][batch.perm]
                for name in self.xs if name != self.x_name}

    def _mixed_labels(self, y: torch.Tensor, batch: Augmented) -> dict:
        """The inputs that say how a mixup/cutmix batch mixed its labels: for cross-entropy
        the partners' labels and (λ, 1 - λ); regression targets are mixed as the examples."""
        if batch.perm is None:
            return {}
        if not self.mixed_loss:
            return {"y": batch.lam * y + (1 - batch.lam) * y[batch.perm]}
        self.lam[0], self.lam[1] = batch.lam, 1.0 - batch.lam
        return {"y_b": y[batch.perm], "lam_a": self.lam[0], "lam_b": self.lam[1]}

    def copy_to(self, model: Model) -> None:
        """Give the model copies of its parameters and buffers: a backend may go on updating
        its own in place (the triton backend's are views of one flat buffer)."""
        for name in model.state:
            model.state[name] = self.state[name].clone()


class EpochStats(NamedTuple):
    """What one epoch of training measured."""
    loss: float              # the mean training loss of the epoch
    acc: float | None        # the training accuracy (None for regression)
    lr: float                # the learning rate of the epoch's last step
    scores: dict = {}        # per-term losses, pixel accuracy and mean IoU, when measured


class Diverged(Exception):
    """The loss became NaN or infinite, or grew far past where it started; the message
    says when."""


DIVERGED_FACTOR = 1e6        # a mean loss this many times the first step's has diverged


def read_back(step: TrainStep, epoch: int, i: int, seen: int) -> list[float]:
    """The loop's one device-to-host read: the loss sum, correct count (and the rest of the
    objective's sums) of the epoch so far (`seen` examples). A loss that has become NaN or
    infinite by step `i` of `epoch`, or whose mean is DIVERGED_FACTOR times the run's first
    step's loss, raises Diverged."""
    *values, first = torch.cat([step.sums, step.first.view(1)]).tolist()
    if not math.isfinite(values[0]):
        raise Diverged(f"the loss became {values[0]} in epoch {epoch}, by step {i}")
    mean = values[0] / max(seen, 1)
    if first > 0 and mean > DIVERGED_FACTOR * first:
        raise Diverged(f"the loss grew to {mean:.3g} in epoch {epoch}, by step {i} "
                        f"(from {first:.3g} at the first step)")
    return values                                # fractional in mixup/cutmix batches


def train_epoch(step: TrainStep, batches: Batches, epoch: int, schedule: Schedule,
                 bar: Progress, world: World = World()) -> EpochStats:
    """One pass over the training split, reading the sums back only when the bar redraws
    (this process's share) and once at the end (summed over the processes)."""
    step.sums.zero_()
    seen, lr = 0, None
    for i, idx in enumerate(batches.epoch(step.device)):
        lr = schedule.lr((epoch - 1) * batches.steps + i)
        step.run(idx, lr)
        seen += len(idx)
        if bar.due():
            loss_sum = read_back(step, epoch, i + 1, seen)[0]
            bar.step(epoch, i + 1, loss_sum / seen, seen)
    world.sum_(step.sums)
    m = step.objective.means(read_back(step, epoch, batches.steps, batches.used), batches.used)
    scores = {k: v for k, v in m.items() if k not in ("loss", "acc")}
    return EpochStats(m["loss"], m["acc"], lr, scores)

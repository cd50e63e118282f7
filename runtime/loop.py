"""The training loop and the run directory it writes.

    metrics.jsonl            one JSON object per epoch (epoch, train_loss, train_acc,
                             val_loss, val_acc, lr, seconds), flushed as it goes
    checkpoint.safetensors   weights after the last finished epoch (best epoch with early stopping)
    best.safetensors         with early stopping, the best epoch's weights
    last.safetensors         the whole training state to resume from (runtime/resume.py)
    final.json               test_loss, test_acc, epochs_run, stopped (why), best_epoch
    run.yaml                 resolved configuration, versions, spec hash, command
    curves.png, curves.svg   loss, accuracy and learning rate per epoch (runtime/plot.py)
    tensorboard/             with --tensorboard, the same records as event files (runtime/tblog.py)
    detections.png           a detector's boxes on a few validation images (runtime/detviz.py)

`run_training` is put together from small parts:

    Batches          batch boundaries of the training split and a seeded permutation per epoch
    TrainStep        the train program (runtime/backends.py) and its state on the device; one
                     step per batch, the epoch's loss sum and correct count kept on the device
    _train_epoch     one pass over the batches; the sums are read back (`_read_back`, which
                     also detects divergence) only when the progress bar redraws, at most every
                     Progress.REFRESH_S seconds on a terminal, and at the end of the epoch
    _record          validation and the epoch's metrics.jsonl record
    _save_epoch      the epoch's checkpoints, the resumable state last
    EarlyStopping    monitor, patience, min_delta and the best epoch's state
    _finish          the best state restored, the test split evaluated, final.json written

A data-parallel run (`world`, runtime/distributed.py) runs this same loop in every
process: each takes its share of every batch (Batches), the train graph averages the
gradients across them, the epoch's sums are added over the processes, and every process
validates so that schedules and early stopping decide alike; rank 0 alone writes the run
directory and evaluates the test split.
"""
from __future__ import annotations

import json
import math
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
import torch
import yaml

from ..compiler.config import target_input
from ..compiler.ops import get as get_op
from ..compiler.pipeline import build_step_graphs, term_output
from ..spec.diagnostics import UserError
from ..spec.train import check_batch_split
from .augment import IMAGE_ONLY, MASK_SAFE, Augmented, Augmenter
from .backends import make_program
from .data import load
from .detect import class_names, detector_of
from .distributed import World
from .proposals import with_proposals
from .model import Model, Objective
from .plot import write_curves
from . import memory_advice, metrics, resume, rundir, tblog
from .tblog import TensorBoardLog
from .confusion_png import write_confusion
from .progress import Progress
from .schedules import Schedule
from .state import init_state


class Batches:
    """The batches of a training split of `n` examples: fixed boundaries, and a fresh
    permutation from the seeded numpy generator every epoch (`shuffle false`: the split's
    own order every epoch).

    A short last batch of one example joins the one before it: batch norm cannot normalise
    a single example in training (`batch 1` keeps every batch at one). `drop_last` leaves a
    short last batch out instead.

    Sharding: in a run on `world` processes `batch` is the global batch. Every process
    draws the same permutation and takes its `rank`-th share of each batch; a last batch
    that does not split evenly is cut to a multiple of `world` (its few left-over
    examples, different ones each epoch, wait for the next)."""

    def __init__(self, n: int, batch: int | str, seed: int, *, shuffle: bool = True,
                 drop_last: bool = False, rank: int = 0, world: int = 1):
        size = n if batch == "full" else min(batch, n)
        bounds = list(range(0, n, size)) + [n]
        if drop_last and len(bounds) > 2 and bounds[-1] - bounds[-2] < size:
            del bounds[-1]
        elif size > 1 and len(bounds) > 2 and bounds[-1] - bounds[-2] == 1:
            del bounds[-2]
        bounds[-1] -= (bounds[-1] - bounds[-2]) % world
        if len(bounds) > 2 and bounds[-1] == bounds[-2]:
            del bounds[-1]
        self.n = n
        self.bounds = bounds                 # batch i is perm[bounds[i]:bounds[i + 1]]
        self.shuffle = shuffle
        self.rank, self.world = rank, world
        self.rng = np.random.default_rng(seed)

    @property
    def steps(self) -> int:
        return len(self.bounds) - 1

    @property
    def used(self) -> int:
        """Examples seen per epoch: n, less a dropped last batch."""
        return self.bounds[-1]

    @property
    def largest(self) -> int:
        """The most examples one process takes in a step."""
        return max(b - a for a, b in zip(self.bounds, self.bounds[1:])) // self.world

    @property
    def smallest(self) -> int:
        """The fewest examples one process takes in a step."""
        return min(b - a for a, b in zip(self.bounds, self.bounds[1:])) // self.world

    def epoch(self, device) -> Iterator[torch.Tensor]:
        """The example indices of this process's share of each batch of the next epoch,
        on `device`."""
        order = self.rng.permutation(self.n) if self.shuffle else np.arange(self.n)
        perm = torch.as_tensor(order, device=device)                           # (n,) int64
        for a, b in zip(self.bounds, self.bounds[1:]):
            share = (b - a) // self.world
            yield perm[a + self.rank * share:a + (self.rank + 1) * share]      # (share,)


class TrainStep:
    """The step's programs and the state they update, on the model's backend and device.

    `run` takes one optimizer step and adds the batch's loss (times its size) and its
    number of correct predictions to `sums`, on the device: nothing waits for the device
    until `_read_back` reads `sums`.

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
        batch = self.augment(inputs[self.x_name], targets.get(self.mask_name)) \
            if self.augment else None
        if batch is not None:
            inputs[self.x_name] = batch.x
            if batch.masks is not None:
                targets[self.mask_name] = inputs[self.mask_name] = batch.masks
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


class _Diverged(Exception):
    """The loss became NaN or infinite, or grew far past where it started; the message
    says when."""


DIVERGED_FACTOR = 1e6        # a mean loss this many times the first step's has diverged


def _read_back(step: TrainStep, epoch: int, i: int, seen: int) -> list[float]:
    """The loop's one device-to-host read: the loss sum, correct count (and the rest of the
    objective's sums) of the epoch so far (`seen` examples). A loss that has become NaN or
    infinite by step `i` of `epoch`, or whose mean is DIVERGED_FACTOR times the run's first
    step's loss, raises _Diverged."""
    *values, first = torch.cat([step.sums, step.first.view(1)]).tolist()
    if not math.isfinite(values[0]):
        raise _Diverged(f"the loss became {values[0]} in epoch {epoch}, by step {i}")
    mean = values[0] / max(seen, 1)
    if first > 0 and mean > DIVERGED_FACTOR * first:
        raise _Diverged(f"the loss grew to {mean:.3g} in epoch {epoch}, by step {i} "
                        f"(from {first:.3g} at the first step)")
    return values                                # fractional in mixup/cutmix batches


def _train_epoch(step: TrainStep, batches: Batches, epoch: int, schedule: Schedule,
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
            loss_sum = _read_back(step, epoch, i + 1, seen)[0]
            bar.step(epoch, i + 1, loss_sum / seen, seen)
    world.sum_(step.sums)
    m = step.objective.means(_read_back(step, epoch, batches.steps, batches.used), batches.used)
    scores = {k: v for k, v in m.items() if k not in ("loss", "acc")}
    return EpochStats(m["loss"], m["acc"], lr, scores)


def _record(model: Model, data, epoch: int, train: EpochStats, t0: float, tag: dict) -> dict:
    """The epoch's metrics.jsonl record: its training metrics and the validation split's,
    after the `tag` of an ensemble member (`{"fold": 2}`)."""
    val = model.evaluate_split(data.val, data.class_names)
    return {**tag, "epoch": epoch, "train_loss": train.loss, "train_acc": train.acc,
            "val_loss": val["loss"], "val_acc": val["acc"], "lr": train.lr,
            **_prefixed("train", train.scores), **_prefixed("val", val),
            "seconds": round(time.perf_counter() - t0, 4)}


def _prefixed(split: str, scores: dict) -> dict:
    """Per-term losses and segmentation scores as `{split}_losses`, `{split}_miou`, ..."""
    return {f"{split}_{k}": v for k, v in scores.items() if k not in ("loss", "acc")}


class EarlyStopping:
    """Stops training when the monitored validation metric (`val_loss`: lower is better,
    `val_acc`: higher is better) has not improved by more than `min_delta` for `patience`
    epochs in a row; keeps a copy of the best epoch's state."""

    def __init__(self, monitor: str = "val_loss", patience: int = 5, min_delta: float = 0.0):
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.best: float | None = None
        self.best_epoch = 0
        self.best_state: dict | None = None
        self.bad_epochs = 0

    @classmethod
    def from_config(cls, cfg, data) -> EarlyStopping | None:
        """The train section's early stopping, or None; a UserError when the data cannot
        give the monitored metric."""
        es = cfg.early_stopping
        if es is None:
            return None
        monitor = es.args["monitor"]
        if len(data.val) == 0:
            raise UserError(f"early stopping monitors {monitor}, but there is no validation "
                            "split (set val > 0 in data)", es.span)
        if monitor == "val_acc" and data.classes is None:
            raise UserError("early stopping monitors val_acc, but the targets are not classes",
                            es.span, hint="monitor val_loss")
        return cls(monitor, es.args["patience"], es.args["min_delta"])

    def improved(self, value: float) -> bool:
        if self.best is None:
            return True
        if self.monitor == "val_loss":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def update(self, epoch: int, record: dict, state: dict) -> bool:
        """Take a finished epoch's record and state; True when training should stop."""
        value = record[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.bad_epochs = value, epoch, 0
            self.best_state = {k: v.clone() for k, v in state.items()}
        else:
            self.bad_epochs += 1
        return self.bad_epochs >= self.patience


@dataclass
class _Outcome:
    """How a run ended: its epochs' records, why it stopped, what diverged."""
    records: list = field(default_factory=list)
    stopped: str = "completed"        # completed, early_stopping, interrupted or diverged
    diverged: str | None = None


@dataclass
class _Run:
    """Everything one training run works with, built by `_setup`."""
    spec: object
    cfg: object
    model: Model
    data: object
    batches: Batches
    step: TrainStep
    stopper: EarlyStopping | None
    schedule: Schedule
    out_dir: Path
    seed: int
    save_every: int | None = None
    tag: dict | None = None
    tensorboard: TensorBoardLog | None = None
    world: World = World()

    @property
    def writes(self) -> bool:
        """Whether this process writes the run directory (the leader of a data-parallel run)."""
        return self.world.leader


def run_training(spec, out_dir: Path, *, backend="auto", device=None, seed=None,
                 init_from=None, progress=True, resume=False, overwrite=False,
                 save_every=None, data=None, tag=None, tensorboard=False,
                 world: World = World()) -> dict:
    """Train the spec's model as its train section says, writing the run directory
    `out_dir`; returns final.json's contents. An interrupted run raises KeyboardInterrupt
    and a diverged one a UserError, each after writing final.json.

    `resume`: continue the run in `out_dir` from its last finished epoch (runtime/resume.py);
    otherwise a folder that already holds a run is refused unless `overwrite`.
    `save_every`: also keep the weights of every k-th epoch as epoch-<k>.safetensors.
    `tensorboard`: also write TensorBoard event files (runtime/tblog.py); a resumed run
    that logged goes on logging.

    The hook for ensembles (runtime/ensemble.py): `data`, a Dataset to train on instead
    of the train section's (a fold, a resample), and `tag`, put first in every
    metrics.jsonl record and in final.json (`{"member": 3}`).

    `world`: this process's place in a data-parallel run (runtime/distributed.py)."""
    if tensorboard:
        tblog.writer_class()
    if not resume and world.leader:
        rundir.prepare(out_dir, overwrite=overwrite)
    run = _setup(spec, out_dir, backend, device, seed, save_every, data, tag, world)
    outcome, first = _Outcome(), 1
    if resume:
        first = _resume(run, outcome)
    elif init_from is not None:
        run.model.load(init_from)
        run.step.state.update(run.model.state)
    if not resume and run.writes:
        _write_run_yaml(out_dir / "run.yaml", spec, run.cfg, run.model, run.seed, run.data,
                        world)
    if run.writes:
        _rewrite_metrics(out_dir / "metrics.jsonl", outcome.records)
        if tblog.wanted(out_dir, tensorboard):
            run.tensorboard = tblog.TensorBoardLog(out_dir, first)
    bar = Progress(run.cfg.epochs, run.batches.steps, enabled=progress and run.writes,
                   examples=run.batches.n)
    t_start = time.perf_counter()
    try:
        for epoch in range(first, run.cfg.epochs + 1):
            if _run_epoch(run, epoch, bar, outcome):
                outcome.stopped = "early_stopping"
                break
    except KeyboardInterrupt:
        outcome.stopped = "interrupted"
    except _Diverged as e:
        outcome.stopped, outcome.diverged = "diverged", str(e)
    finally:
        if run.tensorboard is not None:
            run.tensorboard.close()
        if outcome.records and run.writes:
            write_curves(outcome.records, out_dir / "curves",
                         run.stopper.best_epoch if run.stopper is not None else None)
    return _finish(run, outcome, t_start)


def _setup(spec, out_dir: Path, backend, device, seed, save_every, data=None,
           tag=None, world: World = World()) -> _Run:
    """The model, data, batches, train step and early stopping of a run, freshly seeded
    (every process of a data-parallel run the same model)."""
    cfg = spec.config
    seed = cfg.seed if seed is None else seed
    torch.manual_seed(seed)
    graphs = build_step_graphs(spec.graph, cfg, world.size)
    model = Model(spec, backend=backend, device=device, seed=seed, extra_graphs=graphs)
    data = load(cfg.data, seed, spec.path.parent) if data is None else data
    data = with_proposals(data, cfg.proposals, spec.graph)
    _check_data(model, data, cfg)
    batches = _batches(spec, len(data.train), seed, world)
    _advise_memory(spec, batches, model, world)
    _check_sync_bn(spec, model, world)
    _check_augment(spec, model)
    stopper = EarlyStopping.from_config(cfg, data)
    schedule = _schedule(cfg, data, batches.steps)
    step = TrainStep(graphs, model, data, seed + world.rank)     # own dropout masks
    return _Run(spec, cfg, model, data, batches, step, stopper, schedule, out_dir, seed,
                save_every, dict(tag or {}), world=world)


def _batches(spec, n: int, seed: int, world: World) -> Batches:
    """This process's batches, checked: the global batch splits into every process's
    micro-batches, and batch norm gets more than one value per channel in each."""
    cfg = spec.config
    if cfg.batch != "full" and cfg.batch <= n:     # else one batch, cut to fit the processes
        check_batch_split(cfg, cfg.batch, world.size)
    batches = Batches(n, cfg.batch, seed, shuffle=cfg.shuffle, drop_last=cfg.drop_last,
                      rank=world.rank, world=world.size)
    _check_batch_norm(spec, batches.smallest // cfg.accumulate)
    return batches


def _check_sync_bn(spec, model: Model, world: World) -> None:
    """The Triton backend's batch-norm kernels see one process's batch: bn(sync=true) on
    several processes needs the reference backend."""
    if model.backend != "triton" or world.size == 1:
        return
    for node in spec.graph.nodes:
        if node.op == "batch_norm" and node.attrs.get("sync"):
            raise UserError(f"bn(sync=true) has no Triton kernel that shares statistics "
                            f"across the {world.size} processes", node.loc,
                            hint="use --backend reference, or bn without sync")


def _advise_memory(spec, batches: Batches, model: Model, world: World) -> None:
    """Warn (once, the leader) when a step will not fit the device's memory, suggesting
    the micro-batch that would (runtime/memory_advice.py)."""
    memory_advice.warn(spec, batches.largest, spec.config.accumulate, model.device,
                       enabled=world.leader)


def _resume(run: _Run, outcome: _Outcome) -> int:
    """Restore the saved training state of the run; the first epoch still to train."""
    saved = resume.read(run.out_dir)
    if saved.loop.get("spec_sha256") != run.spec.spec_hash:
        raise UserError(f"the spec changed since the run in {run.out_dir} started, so it "
                        "cannot be resumed exactly",
                        hint="restore the spec, or start a new run (--init-from "
                             f"{run.out_dir / 'checkpoint.safetensors'} to warm-start)")
    resume.restore(saved, step=run.step, model=run.model, batches_rng=run.batches.rng,
                   stopper=run.stopper)
    outcome.records = list(saved.loop["records"])
    for record in outcome.records:           # plateau's state follows from the records
        run.schedule.end_epoch(record["epoch"], record)
    run.step.first.fill_(saved.loop["first_loss"])
    run.step.started = True
    return saved.epoch + 1


def _run_epoch(run: _Run, epoch: int, bar: Progress, outcome: _Outcome) -> bool:
    """Train, validate, record and checkpoint one epoch; True when early stopping says stop."""
    t0 = time.perf_counter()
    train = _train_epoch(run.step, run.batches, epoch, run.schedule, bar, run.world)
    run.step.copy_to(run.model)
    record = _record(run.model, run.data, epoch, train, t0, run.tag)
    run.schedule.end_epoch(epoch, record)
    outcome.records.append(record)
    stop = run.stopper is not None and run.stopper.update(epoch, record, run.model.state)
    if run.writes:
        with open(run.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if run.tensorboard is not None:
            run.tensorboard.epoch(record)
        bar.epoch(record)
        _save_epoch(run, epoch, outcome)
    return run.world.agree(stop, run.step.device)


def _save_epoch(run: _Run, epoch: int, outcome: _Outcome) -> None:
    """The checkpoints of a finished epoch: the weights to use (checkpoint.safetensors, the
    best epoch's with early stopping), best.safetensors, every k-th epoch's, and the whole
    training state to resume from (last.safetensors, written last)."""
    model, stopper, out = run.model, run.stopper, run.out_dir
    if stopper is None or stopper.best_epoch == epoch:
        model.save(out / "checkpoint.safetensors", {"epoch": epoch})
    if stopper is not None and stopper.best_epoch == epoch:
        model.save(out / "best.safetensors", {"epoch": epoch})
    if run.save_every and epoch % run.save_every == 0:
        model.save(out / f"epoch-{epoch}.safetensors", {"epoch": epoch})
    resume.save(out, epoch=epoch, state=run.step.state, program=run.step.program,
                batches_rng=run.batches.rng, stopper=stopper, records=outcome.records,
                extra={"spec_sha256": run.spec.spec_hash, "first_loss": run.step.first.item()},
                draw=run.step.augment.draw if run.step.augment else None)


def _rewrite_metrics(path: Path, records: list) -> None:
    """metrics.jsonl holding exactly the records of the epochs kept (a resumed run drops
    the record of an epoch whose checkpoint was never written)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def _finish(run: _Run, outcome: _Outcome, t_start: float) -> dict:
    """Evaluate the test split on the final (with early stopping, the best) weights and
    write final.json (the leader; other processes return {}); then re-raise an
    interruption or report a divergence."""
    final = _write_final(run, outcome, t_start) if run.writes else {}
    epochs_run, out_dir = len(outcome.records), run.out_dir
    if outcome.stopped == "interrupted":
        raise KeyboardInterrupt
    if outcome.diverged:
        kept = (f"the last good weights (epoch {epochs_run}) are in "
                f"{out_dir / 'checkpoint.safetensors'}" if epochs_run else
                "no epoch finished, so no checkpoint was written")
        raise UserError(f"training diverged: {outcome.diverged}; {kept}",
                        run.spec.config.optimizer.span, hint="lower the learning rate")
    return final


def _write_final(run: _Run, outcome: _Outcome, t_start: float) -> dict:
    spec, model, stopper, out_dir = run.spec, run.model, run.stopper, run.out_dir
    if stopper is not None and stopper.best_state is not None:
        model.state.update(stopper.best_state)
    epochs_run = len(outcome.records)
    test = model.evaluate_split(run.data.test, run.data.class_names)
    final = {**run.tag, "test_loss": test["loss"], "test_acc": test["acc"],
             **_prefixed("test", test), "epochs_run": epochs_run,
             "stopped": outcome.stopped,
             "best_epoch": stopper.best_epoch if stopper is not None else epochs_run,
             "params": spec.num_params(), "seconds": round(time.perf_counter() - t_start, 3),
             "backend": model.backend, "device": str(model.device),
             **_test_metrics(model, run.data, out_dir)}
    (out_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    shown = run.data.val if len(run.data.val) else run.data.test
    _write_overlay(model, shown, out_dir / "overlay.png")
    _write_detections(model, shown, run.data.class_names, out_dir / "detections.png")
    return final


def _check_augment(spec, model: Model) -> None:
    """Image transforms need image inputs, (C, H, W) per example."""
    x = model.spec.graph.inputs[0].type
    for call in spec.config.augment:
        if call.name in IMAGE_ONLY and x.rank != 4:
            raise UserError(f"{call.name} transforms images, but the model's input is {x}",
                            call.span, hint="the input must be [channels, height, width]; "
                            "noise and mixup work on any input")


def _test_metrics(model: Model, data, out_dir: Path) -> dict:
    """Regression: test_mae, test_rmse, test_r2. Classification: test_classes (per-class
    precision, recall, F1, support, macro means, the confusion matrix), also drawn as
    confusion.png."""
    test = data.test
    if len(test) == 0:
        return {}
    pred = model.predict(test.x)
    if data.classes is None:
        return {f"test_{k}": v for k, v in metrics.regression(pred, test.y).items()}
    if pred.ndim != 2 or model.spec.config.loss.name != "cross_entropy":
        return {}                # per-pixel classes: pixel accuracy and mean IoU say it
    scores = metrics.classification(pred, test.y, data.classes)
    write_confusion(scores["confusion"], out_dir / "confusion.png",
                    getattr(data, "class_names", None))
    return {"test_classes": scores}


def _schedule(cfg, data, steps: int) -> Schedule:
    """The run's learning-rate schedule; a UserError when plateau monitors a metric the data
    cannot give."""
    sched = cfg.schedule
    if sched.name == "plateau":
        monitor = sched.args["monitor"]
        if monitor.startswith("val_") and len(data.val) == 0:
            raise UserError(f"plateau monitors {monitor}, but there is no validation split "
                            "(set val > 0 in data)", sched.span, hint="monitor train_loss")
        if monitor == "val_acc" and data.classes is None:
            raise UserError("plateau monitors val_acc, but the targets are not classes",
                            sched.span, hint="monitor val_loss")
    return Schedule(sched, cfg.optimizer.args["lr"], cfg.epochs, steps)


def _write_overlay(model: Model, split, path: Path, count: int = 4) -> None:
    """For a segmentation model: a few images beside their true and predicted masks."""
    obj = model.objective()
    if obj.seg is None or len(split) == 0:
        return
    from .segviz import overlay_sheet
    _, target, _, _ = obj.seg
    x = split.x[:count]
    pred = model.predict(x, output=model.segmentation_output()).argmax(axis=1)
    overlay_sheet(model.shape_batch(x, "images").cpu().numpy(), split.target(target)[:count],
                  pred, path)


def _write_detections(model: Model, split, names, path: Path, count: int = 4) -> None:
    """For a detector: a few images with their detections (class colours) and truth (white)."""
    det = detector_of(model.spec.config)
    if det is None or len(split) == 0:
        return
    from .detviz import detection_sheet
    part = split.take(slice(0, count))
    found = model.detect(part.x)
    images = part.x[model.input_names[0]] if isinstance(part.x, dict) else part.x
    detection_sheet(model.shape_batch(images, "images").cpu().numpy(), found,
                    class_names(names, det.classes(model.spec.graph)), path,
                    truth=part.target(det.target))


def _check_batch_norm(spec, smallest: int) -> None:
    """Batch norm in training needs more than one value per channel in every batch."""
    for node in spec.graph.nodes:
        if node.op == "batch_norm":
            t = node.inputs[0].type
            per_channel = smallest * (t.per_sample() or 1) // t.shape[1]
            if per_channel < 2:
                raise UserError("batch norm in training needs more than one value per channel, "
                                f"but a batch of {smallest} gives {node.scope} one",
                                spec.config.spans.get("batch", node.loc),
                                hint="use a batch of at least 2")


def _check_term(model: Model, data, cfg, term) -> None:
    """The data has the field the loss term reads, of a shape its output can score."""
    out = term_output(model.spec.graph, term).type
    span = term.span or cfg.loss.span or cfg.data.span
    g = model.spec.graph
    # the model's last layer: where a wrong class count or output shape is fixed
    out_loc = next((n.loc for n in reversed(g.nodes) if n.loc is not None), None)
    what = f"output '{term.output}'" if term.output else "the model's output"
    if term.call.name == "cross_entropy" and data.classes is None:
        raise UserError("cross_entropy needs class labels, but the data has regression "
                        "targets", span)
    if term.target not in data.train.fields():
        if term.call.name == "mse":
            raise UserError(f"mse needs numeric targets, but {data.name} has class labels",
                            span, hint="use cross_entropy, or classes=false for csv/npz targets")
        raise UserError(f"the loss of {what} reads {term.target}, but {data.name} has "
                        f"{', '.join(data.train.fields())}", span)
    have = tuple(data.train.target(target_input(term.target)).shape[1:])
    if getattr(get_op(term.call.name), "box_target", False):
        if len(have) != 2 or have[1] != 5:
            raise UserError(f"{term.call.name} reads ground-truth boxes (class, x0, y0, x1, y1) "
                            f"per example, but the {term.target} of {data.name} are "
                            f"{list(have)} per example", span,
                            hint="target=boxes reads the boxes of shapes(...) or voc(...)")
    elif term.call.name == "cross_entropy":
        if out.rank != 2 or out.shape[1] < data.classes:
            raise UserError(f"the model's output {out} cannot score {data.classes} classes of "
                            f"{data.name}", out_loc or span,
                            hint=f"end the model with linear({data.classes})")
    elif term.call.name == "pixel_cross_entropy":
        sized = all(isinstance(d, int) for d in out.shape[2:])
        if out.shape[1] < (data.classes or 0) or (sized and tuple(out.shape[2:]) != have):
            raise UserError(f"{what} {out} cannot score the {term.target} of {data.name} "
                            f"({data.classes} classes, {list(have)} per example)", span)
    elif tuple(out.shape[1:]) != have:
        raise UserError(f"the model's output {out} does not match the targets of "
                        f"{data.name} ({list(have)} per example)", out_loc or span)


def _check_augment_targets(cfg, term) -> None:
    """An augment chain may move a segmentation mask with its image (MASK_SAFE transforms);
    boxes and label mixing of masks are not transformed."""
    target = target_input(term.target)
    if not cfg.augment or target == "y":
        return
    if term.call.name == "pixel_cross_entropy":
        bad = next((c for c in cfg.augment if c.name not in MASK_SAFE), None)
        if bad is None:
            return
        raise UserError(f"{bad.name} cannot be applied to a segmentation mask: the "
                        f"{term.target} would no longer match the images", bad.span,
                        hint=f"with masks, augment takes {', '.join(MASK_SAFE)}")
    raise UserError(f"augment transforms the images only, so their {term.target} would "
                    "no longer match them", cfg.spans.get("augment", term.span),
                    hint="leave augment out when a loss reads boxes or other targets")


def _versions() -> dict:
    import lark
    from .. import __version__
    return {"dlc": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "numpy": np.__version__, "lark": lark.__version__}


def _check_data(model: Model, data, cfg) -> None:
    """The data fits each loss and the model's outputs and input; errors point at the spec
    line to change (the train setting when written, else the model's output or input)."""
    g = model.spec.graph
    for term in cfg.loss_terms():
        _check_term(model, data, cfg, term)
        _check_augment_targets(cfg, term)
    try:
        model.shape_inputs(data.train.take(slice(0, 1)).x, f"{data.name} examples")
    except UserError as e:
        default = "data" not in cfg.spans
        raise UserError(e.message, g.input_locs.get(g.inputs[0].input_name) or cfg.spans.get("data"),
                        hint=("the train section names no data, so digits is used; add a "
                              "`data` setting that fits the model's input") if default else
                        "the data and the model's input must hold the same values per example"
                        ) from None


def _write_run_yaml(path: Path, spec, cfg, model: Model, seed: int, data,
                    world: World = World()) -> None:
    doc = {
        "spec": str(Path(spec.path).resolve()), "model": spec.graph.name, "spec_sha256": spec.spec_hash,
        "sets": list(spec.sets), "seed": seed, "backend": model.backend,
        "device": str(model.device), "params": spec.num_params(),
        **({"nproc": world.size} if world.size > 1 else {}),
        "data": data.describe(),
        "train": {**cfg.to_dict(), "seed": seed}, "versions": _versions(),
        "command": " ".join(sys.argv),
    }
    path.write_text(yaml.safe_dump(doc, sort_keys=False))

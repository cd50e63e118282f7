"""The training loop: `run_training` and the per-epoch orchestration around it.

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

`run_training` is put together from parts that live in their own modules:

    Batches          (batches.py) batch boundaries of the training split and a seeded
                     permutation per epoch
    TrainStep        (train_step.py) the train program and its state on the device; one step
                     per batch; `train_epoch` one pass over the batches, `read_back` the
                     one device-to-host read (which also detects divergence)
    epoch_record     (epochs.py) validation and the epoch's metrics.jsonl record;
                     EarlyStopping, the monitor and the best epoch's state
    check_*          (checks.py) the spec against its data, before the first step
    run_files.py     run.yaml, the test split's extra metrics, overlay.png, detections.png

and, here, in the order a run meets them:

    _setup           the model, data, batches, train step, early stopping and schedule
    _resume          the saved training state of an interrupted run
    _run_epoch       train, validate, record and checkpoint one epoch
    _save_epoch      the epoch's checkpoints, the resumable state last
    _finish          the best state restored, the test split evaluated, final.json written

A data-parallel run (`world`, runtime/distributed.py) runs this same loop in every
process: each takes its share of every batch (Batches), the train graph averages the
gradients across them, the epoch's sums are added over the processes, and every process
validates so that schedules and early stopping decide alike; rank 0 alone writes the run
directory and evaluates the test split.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..compiler.pipeline import build_step_graphs
from ..spec.diagnostics import UserError
from ..spec.train import check_batch_split
from .batches import Batches
from .checks import check_augment, check_batch_norm, check_data, check_sync_bn
from .data import load
from .distributed import World
from .epochs import (EarlyStopping, add_box_scores, boxes_due, epoch_record, prefixed,
                     rewrite_metrics)
from .model import Model
from .plot import write_curves
from .progress import Progress
from .proposals import with_proposals
from .run_files import test_metrics, write_detections, write_overlay, write_run_yaml
from .schedules import Schedule
from .tblog import TensorBoardLog
from .train_step import Diverged, TrainStep, train_epoch
from . import memory_advice, resume, rundir, tblog





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
        write_run_yaml(out_dir / "run.yaml", spec, run.cfg, run.model, run.seed, run.data,
                        world)
    if run.writes:
        rewrite_metrics(out_dir / "metrics.jsonl", outcome.records)
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
    except Diverged as e:
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
    check_data(model, data, cfg)
    batches = _batches(spec, len(data.train), seed, world)
    _advise_memory(spec, batches, model, world)
    check_sync_bn(spec, model, world)
    check_augment(spec, model)
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
    check_batch_norm(spec, batches.smallest // cfg.accumulate)
    return batches


def _advise_memory(spec, batches: Batches, model: Model, world: World) -> None:
    """Warn (once, the leader) when a step will not fit the device's memory, suggesting
    the micro-batch that would (runtime/memory_advice.py)."""
    memory_advice.warn(spec, batches.largest, spec.config.accumulate, model.device,
                       enabled=world.leader)


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
    train = train_epoch(run.step, run.batches, epoch, run.schedule, bar, run.world)
    run.step.copy_to(run.model)
    due = boxes_due(run.cfg, epoch)
    record = epoch_record(run.model, run.data, epoch, train, t0, run.tag, score_boxes=due)
    run.schedule.end_epoch(epoch, record)
    outcome.records.append(record)
    stop = run.stopper is not None and run.stopper.update(epoch, record, run.model.state)
    if stop and not due:
        add_box_scores(record, run.model, run.data)          # the run's last epoch is scored
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
             **prefixed("test", test), "epochs_run": epochs_run,
             "stopped": outcome.stopped,
             "best_epoch": stopper.best_epoch if stopper is not None else epochs_run,
             "params": spec.num_params(), "seconds": round(time.perf_counter() - t_start, 3),
             "backend": model.backend, "device": str(model.device),
             **test_metrics(model, run.data, out_dir)}
    (out_dir / "final.json").write_text(json.dumps(final, indent=2) + "\n")
    shown = run.data.val if len(run.data.val) else run.data.test
    write_overlay(model, shown, out_dir / "overlay.png")
    write_detections(model, shown, run.data.class_names, out_dir / "detections.png")
    return final

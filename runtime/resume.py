"""The training state a run directory keeps so that `dlc train --resume DIR` continues it
exactly: `last.safetensors`, rewritten atomically after every finished epoch.

    tensors     every state entry of the train graph (parameters, buffers, optimizer
                slots, the optimizer's step count), `rng/torch` (the global torch
                generator), `rng/program` (the train program's dropout generator),
                `rng/augment` (the augment chain's torch generator), and
                `best/<name>` (early stopping's best weights, when they are not the last)
    metadata    one JSON document under "loop": the finished epoch, the epochs' records,
                the data-order generator (numpy), the global numpy and python generators,
                the augment chain's numpy generator,
                early stopping's best value, epoch and count of bad epochs, the spec's hash

A resumed run starts at the beginning of the epoch after the one saved: work done in an
epoch that was interrupted is done again, from the same state, so the finished weights
are those of a run that was never interrupted.
"""
from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..spec.diagnostics import UserError
from .checkpoint import write_atomic

LAST = "last.safetensors"


@dataclass
class Saved:
    """What `read` gives back: the state to continue from."""
    epoch: int
    state: dict                      # train-graph state name -> tensor
    best_state: dict | None          # early stopping's best weights (None: the last ones)
    loop: dict = field(default_factory=dict)


def _rng_doc(batches_rng: np.random.Generator) -> dict:
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"data_order": batches_rng.bit_generator.state,
            "python": [version, list(mt), gauss],
            "numpy": [name, keys.tolist(), pos, has_gauss, cached]}


def _restore_rngs(doc: dict, batches_rng: np.random.Generator) -> None:
    batches_rng.bit_generator.state = doc["data_order"]
    version, mt, gauss = doc["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = doc["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))


def save(out_dir: Path, *, epoch: int, state: dict, program, batches_rng, stopper,
         records: list, extra: dict, draw=None) -> None:
    """Write the training state after `epoch` finished (temporary file + rename); `draw`:
    the augment chain's random sources (runtime/augment.py)."""
    tensors = {name: t for name, t in state.items()}
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/program"] = program.rng_state()
    if draw is not None:
        tensors["rng/augment"] = draw.gen.get_state()
        extra = {**extra, "augment_rng": draw.rng.bit_generator.state}
    early = None
    if stopper is not None:
        early = {"best": stopper.best, "best_epoch": stopper.best_epoch,
                 "bad_epochs": stopper.bad_epochs}
        if stopper.best_state is not None and stopper.best_epoch != epoch:
            tensors.update({f"best/{k}": v for k, v in stopper.best_state.items()})
    loop = {"epoch": epoch, "records": records, "rng": _rng_doc(batches_rng),
            "early_stopping": early, **extra}
    write_atomic(out_dir / LAST, tensors, {"loop": json.dumps(loop), "epoch": str(epoch)})


def read(out_dir: Path) -> Saved:
    """The saved training state of the run in `out_dir`, or a UserError saying why not."""
    path = out_dir / LAST
    if not path.is_file():
        raise UserError(f"{out_dir} holds no training state to resume from (no {LAST}: "
                        "no epoch of this run finished)",
                        hint="start it again without --resume (add --overwrite)")
    try:
        with safe_open(str(path), "pt") as f:
            loop = json.loads(f.metadata()["loop"])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise UserError(f"{path} is not a readable training state ({e})") from None
    state = {k: v for k, v in tensors.items() if "/" not in k}
    best = {k[5:]: v for k, v in tensors.items() if k.startswith("best/")} or None
    loop["rng_torch"] = tensors["rng/torch"]
    loop["rng_program"] = tensors["rng/program"]
    loop["rng_augment"] = tensors.get("rng/augment")
    return Saved(loop["epoch"], state, best, loop)


def restore(saved: Saved, *, step, model, batches_rng, stopper) -> None:
    """Put the saved state back into the train step, the model and the generators."""
    device = step.device
    step.state.update({k: v.to(device) for k, v in saved.state.items() if k in step.state})
    step.copy_to(model)
    torch.set_rng_state(saved.loop["rng_torch"])
    step.program.set_rng_state(saved.loop["rng_program"])
    _restore_rngs(saved.loop["rng"], batches_rng)
    if saved.loop.get("rng_augment") is not None:
        draw = step.augment.draw
        draw.gen.set_state(saved.loop["rng_augment"])
        draw.rng.bit_generator.state = saved.loop["augment_rng"]
    early = saved.loop.get("early_stopping")
    if stopper is not None and early is not None:
        stopper.best, stopper.best_epoch = early["best"], early["best_epoch"]
        stopper.bad_epochs = early["bad_epochs"]
        names = list(model.state)
        best = saved.best_state or {k: saved.state[k] for k in names}
        stopper.best_state = {k: best[k].to(device).clone() for k in names}

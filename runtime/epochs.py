"""An epoch's record and what watches the records: the metrics.jsonl row of a finished epoch
(epoch_record: training and validation metrics), early stopping on a monitored validation
metric, and metrics.jsonl rewritten from the records kept (a resumed run).

A detector's validation mAP (val_map50, val_map, val_ap) is the slow part of a record: with
`map_every k` it is computed on epochs k, 2k, ... and on the run's last epoch (the `epochs`
setting's, or the one early stopping stops at); the other records leave those keys out."""
from __future__ import annotations

import json
import time
from pathlib import Path

from ..spec.diagnostics import UserError
from .model import Model
from .train_step import EpochStats


def epoch_record(model: Model, data, epoch: int, train: EpochStats, t0: float,
                 tag: dict, score_boxes: bool = True) -> dict:
    """The epoch's metrics.jsonl record: its training metrics and the validation split's,
    after the `tag` of an ensemble member (`{"fold": 2}`); a detector's mAP only when
    `score_boxes` (see boxes_due)."""
    val = model.evaluate_split(data.val, data.class_names, score_boxes=score_boxes)
    return {**tag, "epoch": epoch, "train_loss": train.loss, "train_acc": train.acc,
            "val_loss": val["loss"], "val_acc": val["acc"], "lr": train.lr,
            **prefixed("train", train.scores), **prefixed("val", val),
            "seconds": round(time.perf_counter() - t0, 4)}


def boxes_due(cfg, epoch: int) -> bool:
    """Whether the record of `epoch` gets a detector's validation mAP: every map_every-th
    epoch and the last one."""
    return epoch % cfg.map_every == 0 or epoch == cfg.epochs


def add_box_scores(record: dict, model: Model, data) -> None:
    """Give the record of the epoch a run stops at early the validation mAP it was not due
    (the validation scores it already holds are computed again alike and kept)."""
    val = model.evaluate_split(data.val, data.class_names)
    record.update({k: v for k, v in prefixed("val", val).items() if k not in record})


def prefixed(split: str, scores: dict) -> dict:
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


def rewrite_metrics(path: Path, records: list) -> None:
    """metrics.jsonl holding exactly the records of the epochs kept (a resumed run drops
    the record of an epoch whose checkpoint was never written)."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))

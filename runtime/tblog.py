"""TensorBoard event files for a run: `dlc train --tensorboard` (the optional extra
`pip install 'dlc[tensorboard]'`) writes RUN/tensorboard/, one scalar per numeric field of
each epoch's metrics.jsonl record, at step = epoch:

    train_loss, val_loss       -> loss/train, loss/val
    train_acc, val_miou, ...   -> acc/train, miou/val, ...
    train_losses {"seg": ..}   -> losses/seg/train (one per loss term)
    lr, seconds                -> lr, seconds

so `tensorboard --logdir runs/` overlays the splits of a run and compares runs. A resumed
run appends to the same folder and purges the steps after its last saved epoch, so an
epoch trained twice appears once. An ensemble writes one folder per member."""
from __future__ import annotations

import math
from pathlib import Path

from ..spec.diagnostics import UserError

FOLDER = "tensorboard"
SPLITS = ("train", "val", "test")
SKIP = {"epoch", "fold", "member", "round"}


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one metrics.jsonl record."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in SKIP:
            continue
        split, _, name = key.partition("_")
        tag = f"{name}/{split}" if split in SPLITS and name else key
        if isinstance(value, dict):
            for term, v in value.items():
                if _number(v):
                    out[f"{name or key}/{term}/{split}" if split in SPLITS else f"{key}/{term}"] = float(v)
        elif _number(value):
            out[tag] = float(value)
    return out


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class TensorBoardLog:
    """Writes each finished epoch's record to `out_dir/tensorboard` as it is recorded."""

    def __init__(self, out_dir: Path, first_epoch: int = 1):
        SummaryWriter = writer_class()
        self.writer = SummaryWriter(str(Path(out_dir) / FOLDER),
                                    purge_step=first_epoch if first_epoch > 1 else None)

    def epoch(self, record: dict) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, record["epoch"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def writer_class():
    """torch's SummaryWriter, or a UserError when the tensorboard package is missing (raised
    before a run directory is touched)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not "
                        "installed", hint="pip install 'dlc[tensorboard]'") from None
    return SummaryWriter


def wanted(out_dir: Path, asked: bool) -> bool:
    """Log when asked, and always when continuing a run that already logs."""
    return asked or (Path(out_dir) / FOLDER).is_dir()

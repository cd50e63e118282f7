"""A small progress bar on stderr: redrawn in place on a terminal, one line per epoch otherwise."""
from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, epochs: int, steps: int, enabled: bool = True, stream=None):
        self.epochs, self.steps = epochs, steps
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.t0 = time.perf_counter()

    def step(self, epoch: int, step: int, loss: float) -> None:
        if not self.tty:
            return
        width = 24
        done = int(width * step / max(1, self.steps))
        bar = "#" * done + "-" * (width - done)
        self.stream.write(f"\repoch {epoch}/{self.epochs} [{bar}] {step}/{self.steps} "
                          f"loss {loss:.4f}")
        self.stream.flush()

    def epoch(self, record: dict) -> None:
        if not self.enabled:
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}",
                 f"train_loss {record['train_loss']:.4f}"]
        if record.get("val_loss") is not None:
            parts.append(f"val_loss {record['val_loss']:.4f}")
        if record.get("val_acc") is not None:
            parts.append(f"val_acc {record['val_acc']:.4f}")
        parts.append(f"{record['seconds']:.1f}s")
        self.stream.write(("\r\x1b[K" if self.tty else "") + "  ".join(parts) + "\n")
        self.stream.flush()

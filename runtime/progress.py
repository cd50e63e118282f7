"""A small progress bar on stderr: redrawn in place on a terminal, one line per epoch otherwise.

The training loop reads the loss back from the device only when the bar is `due` for a
redraw, so redraws are rate-limited to one per `REFRESH_S` seconds."""
from __future__ import annotations

import sys
import time


class Progress:
    REFRESH_S = 0.25         # the least time between two redraws of the bar

    def __init__(self, epochs: int, steps: int, enabled: bool = True, stream=None,
                 clock=time.perf_counter):
        self.epochs, self.steps = epochs, steps
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.clock = clock
        self.drawn = clock()         # when the bar was last drawn

    def due(self) -> bool:
        """Whether the bar should be redrawn now: on a terminal, REFRESH_S after the last."""
        return self.tty and self.clock() - self.drawn >= self.REFRESH_S

    def step(self, epoch: int, step: int, loss: float) -> None:
        """Draw the bar at `step` of `epoch` with `loss`, the epoch's mean loss so far."""
        if not self.tty:
            return
        self.drawn = self.clock()
        width = 24
        done = int(width * step / max(1, self.steps))
        bar = "#" * done + "-" * (width - done)
        self.stream.write(f"\repoch {epoch}/{self.epochs} [{bar}] {step}/{self.steps} "
                          f"loss {loss:.4f}")
        self.stream.flush()

    def epoch(self, record: dict) -> None:
        """One line for a finished epoch."""
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

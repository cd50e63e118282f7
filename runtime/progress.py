"""Progress on stderr: on a terminal a tqdm bar per epoch (examples done, samples/s, ETA,
the epoch's mean loss so far), and one line per finished epoch.

The training loop reads the loss back from the device only when the bar is `due` for a
redraw, so redraws are rate-limited to one per `REFRESH_S` seconds; tqdm itself is told
the position only then."""
from __future__ import annotations

import sys
import time


class Progress:
    REFRESH_S = 0.25         # the least time between two redraws of the bar

    def __init__(self, epochs: int, steps: int, enabled: bool = True, stream=None,
                 clock=time.perf_counter, examples: int | None = None):
        self.epochs, self.steps = epochs, steps
        self.examples = examples or steps    # what the bar counts: examples (else steps)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.clock = clock
        self.drawn = clock()         # when the bar was last drawn
        self.bar = None              # the epoch's tqdm bar, made at its first redraw

    def due(self) -> bool:
        """Whether the bar should be redrawn now: on a terminal, REFRESH_S after the last."""
        return self.tty and self.clock() - self.drawn >= self.REFRESH_S

    def step(self, epoch: int, step: int, loss: float, seen: int | None = None) -> None:
        """Draw the bar at `step` of `epoch` (`seen` examples) with `loss`, the epoch's
        mean loss so far."""
        if not self.tty:
            return
        from tqdm import tqdm
        self.drawn = self.clock()
        if self.bar is None:
            self.bar = tqdm(total=self.examples, desc=f"epoch {epoch}/{self.epochs}",
                            unit="ex", unit_scale=True, file=self.stream, leave=False,
                            dynamic_ncols=True, mininterval=0, miniters=1)
        done = seen if seen is not None else step
        self.bar.set_postfix_str(f"step {step}/{self.steps} loss {loss:.4f}", refresh=False)
        self.bar.update(done - self.bar.n)

    def epoch(self, record: dict) -> None:
        """One line for a finished epoch."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if not self.enabled:
            return
        parts = [f"epoch {record['epoch']}/{self.epochs}",
                 f"train_loss {record['train_loss']:.4f}"]
        for key in ("train_acc", "val_loss", "val_acc"):
            if record.get(key) is not None:
                parts.append(f"{key} {record[key]:.4f}")
        parts.append(f"{record['seconds']:.1f}s")
        self.stream.write(("\r\x1b[K" if self.tty else "") + "  ".join(parts) + "\n")
        self.stream.flush()

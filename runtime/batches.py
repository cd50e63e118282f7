"""The batches of a training split: fixed boundaries, a seeded permutation per epoch, and a
data-parallel process's share of each batch (runtime/loop.py draws them, TrainStep runs
them)."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch


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

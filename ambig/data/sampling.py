"""The training order: a seeded shuffle per epoch that a resumed run can enter mid-epoch.

Epoch e's order depends on (seed, e) only, and equals what `DataLoader(shuffle=True,
generator=torch.Generator().manual_seed(seed))` yields in its e-th epoch (tested), so results do not change
with this sampler; but unlike that loader's running generator, it can be rebuilt for any epoch, and
`start_at(epoch, done)` skips the batches a killed run had already trained on.
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Sampler


def epoch_order(n: int, seed: int, epoch: int) -> list[int]:
    """The permutation of range(n) that a seeded shuffling DataLoader uses in epoch `epoch` (0-based).

    Per epoch such a loader draws its iterator's base seed from the generator, then RandomSampler draws
    randperm(n) and, once exhausted, one more (empty) randperm slice; replaying those draws gives epoch e.
    """
    gen = torch.Generator().manual_seed(seed)
    order: list[int] = []
    for _ in range(epoch + 1):
        torch.empty((), dtype=torch.int64).random_(generator=gen)
        order = torch.randperm(n, generator=gen).tolist()
        torch.randperm(n, generator=gen)
    return order


class ResumableBatches(Sampler[list[int]]):
    """Batches of the epoch's seeded order, each yielded `repeats` times in a row (GRPO's mu); with
    `world` > 1 processes, this rank's share of them.

    Every `iter()` is one epoch (Lightning iterates the training loader once per epoch). `start_at(epoch,
    done)` makes the next `iter()` be epoch `epoch` without its first `done` batches.
    """

    def __init__(self, n: int, batch_size: int, seed: int, repeats: int = 1, rank: int = 0, world: int = 1):
        if n < 1 or batch_size < 1 or repeats < 1 or not 0 <= rank < world:
            raise ValueError(
                "need n, batch_size, repeats >= 1 and 0 <= rank < world; "
                f"got {n=}, {batch_size=}, {repeats=}, {rank=}, {world=}"
            )
        self.n, self.batch_size, self.seed, self.repeats = n, batch_size, seed, repeats
        self.rank, self.world = rank, world
        self.next_epoch = 0
        self.skip = 0

    def start_at(self, epoch: int, done: int) -> None:
        self.next_epoch, self.skip = int(epoch), int(done)

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size) // self.world * self.repeats

    def __iter__(self):
        epoch, skip = self.next_epoch, self.skip
        self.next_epoch, self.skip = epoch + 1, 0
        order = epoch_order(self.n, self.seed, epoch)
        batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        # Data parallel: rank r takes every world-th batch, all ranks the same number (the remainder waits for
        # the next epoch's shuffle), so every optimizer step sees world distinct batches.
        batches = batches[self.rank :: self.world][: len(batches) // self.world]
        repeated = [batch for batch in batches for _ in range(self.repeats)]
        yield from repeated[skip:]

"""The random streams a resumed run continues (dropout, rollout sampling, shuffles), per process.

Each data-parallel process draws from its own streams, so a checkpoint written by rank zero keeps every
process's states (`{"per_process": [...]}`) and each process takes back its own on resume.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch

log = logging.getLogger(__name__)


def capture() -> dict:
    """This process's RNG states: torch (CPU and, when present, every CUDA device), python, numpy."""
    states = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def capture_all_processes() -> dict:
    """What a checkpoint stores: this process's states, or every process's (collective: all ranks call it)."""
    if not _distributed() or torch.distributed.get_world_size() == 1:
        return capture()
    pieces: list = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(pieces, capture())
    return {"per_process": pieces}


def restore_own(saved: dict) -> None:
    """Restore this process's states from what `capture_all_processes` stored."""
    if "per_process" not in saved:
        restore(saved)
        return
    pieces = saved["per_process"]
    rank = torch.distributed.get_rank() if _distributed() else 0
    world = torch.distributed.get_world_size() if _distributed() else 1
    if len(pieces) != world:
        log.warning(
            "the checkpoint holds the random states of %d processes and this run has %d: each process takes "
            "those of process (rank mod %d), so sampling will not repeat the interrupted run's",
            len(pieces),
            world,
            len(pieces),
        )
    restore(pieces[rank % len(pieces)])

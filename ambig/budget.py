"""The generation budget (max new tokens) from the data: long enough for the reasoning the model is taught.

`decoding.max_new_tokens: auto` (the default) = the longest training target in the model's own tokens (CoT,
answer line, end-of-turn token) times 1 + `decoding.budget_margin`, computed when a run starts and logged.
DPO / GRPO rollouts and test-time scaling follow it unless set. A budget below the targets' 95th percentile
would cut most trajectories that imitate their targets before `Answer:` (evaluation q would come from the
fallback read-out after a truncated text, GRPO's format reward would be 0 for every rollout, DPO's negatives
would be prefixes), so an explicit one is refused at start with the numbers, unless
`decoding.refuse_short_budget=false` (sanity and smoke runs, whose numbers mean nothing).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ambig.config import ConfigError
from ambig.data.records import Record
from ambig.model.inputs import BatchBuilder

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class TargetLengths:
    """Training targets' lengths in the model's tokens: count, median, 95th percentile, maximum."""

    n: int
    median: float
    p95: float
    max: int

    def as_dict(self) -> dict:
        return {"n": self.n, "median": self.median, "p95": self.p95, "max": self.max}

    def describe(self) -> str:
        return f"median {self.median:g}, p95 {self.p95:g}, max {self.max} tokens over {self.n} targets"


def target_token_counts(builder: BatchBuilder, records: Sequence[Record]) -> list[int]:
    """Tokens of each record's target as the model writes it: CoT and answer prefix, answer word, end."""
    return [len(builder.target_pieces(r)[0]) + 2 for r in records]


def summarise(counts: Sequence[int]) -> TargetLengths:
    if not counts:
        raise ConfigError("no training targets to size the generation budget from")
    values = np.asarray(counts)
    return TargetLengths(
        len(values), float(np.median(values)), float(np.percentile(values, 95)), int(values.max())
    )


def auto_budget(lengths: TargetLengths, margin: float) -> int:
    """The longest target plus `margin` (a fraction) of it."""
    if margin < 0:
        raise ConfigError(f"decoding.budget_margin must be >= 0, got {margin}")
    return int(math.ceil(lengths.max * (1.0 + margin)))


def resolve(setting, lengths: TargetLengths | None, *, margin: float, refuse_short: bool, key: str) -> int:
    """The effective budget for config key `key` (`auto` or a number), checked against the targets."""
    if setting == AUTO:
        if lengths is None:
            raise ConfigError(
                f"{key}=auto sizes the budget from the training targets, but this run has none (no CoTs for "
                f"its training clips): give {key}=<tokens>"
            )
        return auto_budget(lengths, margin)
    try:
        value = int(setting)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={setting!r}: give a number of tokens or auto") from None
    if value < 1:
        raise ConfigError(f"{key}={value}: the budget must be at least 1 token")
    if refuse_short and lengths is not None and value < lengths.p95:
        raise ConfigError(
            f"{key}={value} is below the training targets' 95th percentile ({lengths.describe()}): most "
            f"trajectories that imitate them would be cut before 'Answer:'. Use {key}=auto (the longest "
            f"target + {margin:.0%}: {auto_budget(lengths, margin)}), a larger budget, or "
            "decoding.refuse_short_budget=false for a run whose numbers do not matter"
        )
    return value

"""Leave-one-unit-out splits (IEMOCAP's 5-fold leave-one-session-out, and the same on synthetic data).

The test unit is fixed by the fold number; validation units are drawn from the remaining ones with a
seeded RNG so the split is reproducible and never shares a speaker/session with the test side.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ambig.data.records import Record

# Grouping attributes a split may be built on; both are speaker-disjoint in IEMOCAP and synthetic data.
UNITS = ("session", "speaker")
FIXED_SPLITS = ("train", "dev", "test")


@dataclass(frozen=True)
class FoldSplit:
    """Records of one fold; the three lists are disjoint and together hold every input record."""

    train: list[Record]
    val: list[Record]
    test: list[Record]


def leave_one_unit_out(
    records: Sequence[Record],
    fold: int,
    *,
    unit: str = "session",
    val_unit: str = "session",
    n_val: int = 1,
    seed: int = 0,
) -> FoldSplit:
    """Test on the ``fold``-th (1-based, sorted) ``unit``; validate on ``n_val`` ``val_unit`` groups.

    Validation groups are drawn from the training side with ``random.Random(seed + fold)``. With
    ``val_unit="speaker"`` the validation speakers' records leave training entirely, so no speaker
    crosses splits; with ``val_unit="session"`` whole sessions do. Record order within each list
    follows the input order.
    """
    for name, value in (("unit", unit), ("val_unit", val_unit)):
        if value not in UNITS:
            raise ValueError(f"unknown {name} {value!r}; expected one of {UNITS}")
    units = sorted({getattr(r, unit) for r in records})
    if not 1 <= fold <= len(units):
        raise ValueError(f"fold {fold} out of range: valid folds are 1..{len(units)} ({unit}s {units})")
    test_unit = units[fold - 1]
    rest = [r for r in records if getattr(r, unit) != test_unit]
    val_candidates = sorted({getattr(r, val_unit) for r in rest})
    if not 0 <= n_val < len(val_candidates):
        raise ValueError(
            f"n_val={n_val} must leave at least one {val_unit} for training "
            f"({len(val_candidates)} available outside the test {unit})"
        )
    val_units = set(random.Random(seed + fold).sample(val_candidates, n_val))
    return FoldSplit(
        train=[r for r in rest if getattr(r, val_unit) not in val_units],
        val=[r for r in rest if getattr(r, val_unit) in val_units],
        test=[r for r in records if getattr(r, unit) == test_unit],
    )


def fixed_split(records: Sequence[Record]) -> FoldSplit:
    """A split given by the corpus itself (e.g. a CREMA-D split file): session is train, dev or test."""
    unknown = {r.session for r in records} - set(FIXED_SPLITS)
    if unknown:
        raise ValueError(
            f"records are not from a split file: sessions {sorted(unknown)} not in {FIXED_SPLITS}"
        )
    return FoldSplit(
        train=[r for r in records if r.session == "train"],
        val=[r for r in records if r.session == "dev"],
        test=[r for r in records if r.session == "test"],
    )


def balanced_speaker_groups(clips_per_speaker: Mapping[str, int], n_folds: int, seed: int) -> dict[str, str]:
    """Deal speakers into ``n_folds`` groups (``speakers1``..) of about the same number of clips.

    Speakers go largest first (ties in a seeded random order) to the group with the fewest clips so far (ties:
    the lowest-numbered), so a group's clip count exceeds another's by at most the largest speaker's. Names
    are zero-padded when ``n_folds >= 10`` so they sort by number.
    """
    if not 2 <= n_folds <= len(clips_per_speaker):
        raise ValueError(
            f"n_folds={n_folds} must be between 2 and the number of speakers ({len(clips_per_speaker)})"
        )
    speakers = sorted(clips_per_speaker)
    random.Random(seed).shuffle(speakers)
    speakers.sort(key=lambda s: -clips_per_speaker[s])  # stable: the shuffle breaks ties
    width = len(str(n_folds))
    load = [0] * n_folds
    groups = {}
    for speaker in speakers:
        k = min(range(n_folds), key=lambda g: (load[g], g))
        load[k] += clips_per_speaker[speaker]
        groups[speaker] = f"speakers{k + 1:0{width}d}"
    return dict(sorted(groups.items()))


FOLD_METHODS = ("leave_one_unit_out", "fixed", "release", "speaker_kfold")


def make_split(
    records: Sequence[Record], fold: int, *, method: str = "leave_one_unit_out", seed: int = 0, **options
) -> FoldSplit:
    """The split a dataset config asks for (`dataset.folds.method`).

    ``fixed`` and ``release``: the split the corpus gives (sessions train/dev/test; ``release`` is
    MSP-Podcast's Split_Set, any ``n_folds``/``n_val`` are for its ``speaker_kfold``). ``speaker_kfold``: test
    on the corpus's ``fold``-th speaker group (of ``n_folds``), validate on ``n_val`` speakers drawn from the
    others.
    """
    if method == "leave_one_unit_out":
        return leave_one_unit_out(records, fold, seed=seed, **options)
    if method in ("fixed", "release"):
        return fixed_split(records)
    if method == "speaker_kfold":
        n_folds = int(options.pop("n_folds"))
        if not 1 <= fold <= n_folds:
            raise ValueError(f"fold {fold} out of range: speaker_kfold has folds 1..{n_folds}")
        return leave_one_unit_out(records, fold, unit="session", val_unit="speaker", seed=seed, **options)
    raise ValueError(f"unknown fold method {method!r}; expected one of {FOLD_METHODS}")

"""One utterance with its human vote distribution: the unit every corpus loader produces.

Every corpus (IEMOCAP, CREMA-D, the synthetic one) is reduced to a list of ``Record`` so folds,
datasets, curators and metrics never need corpus-specific code. Votes are kept as raw mass rather than
a normalised distribution so the number of raters survives (useful for weighting and diagnostics); the
soft label is derived on demand and checked, because a zero or negative vote vector would silently
turn into NaN targets in the KL term.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# How far a supplied distribution may stray from summing to 1 (float32 round-off in caches and JSON).
SOFT_LABEL_TOLERANCE = 1e-4


@dataclass(frozen=True)
class Record:
    """One utterance: audio, transcript, votes per class and the grouping keys used for folds."""

    id: str
    audio_path: str  # absolute path string
    transcript: str
    votes: tuple[float, ...]  # vote mass per class, in the corpus's class order
    speaker: str  # globally unique speaker id
    session: str  # the leave-one-out unit (session for IEMOCAP/synthetic)
    cot: str | None = None  # structured CoT body (ambig.model.prompt.format_cot output), no Answer line
    extra: Mapping[str, Any] = field(default_factory=dict)  # corpus-specific, JSON-serialisable

    @property
    def soft_label(self) -> tuple[float, ...]:
        """Votes normalised to a distribution; ValueError (naming the id) on an unusable vote vector."""
        votes = self.votes
        if not votes:
            raise ValueError(f"record {self.id!r}: empty vote vector")
        if any(not math.isfinite(v) for v in votes):
            raise ValueError(f"record {self.id!r}: non-finite votes {votes}")
        if any(v < 0 for v in votes):
            raise ValueError(f"record {self.id!r}: negative votes {votes}")
        total = math.fsum(votes)
        if total <= 0:
            raise ValueError(f"record {self.id!r}: votes sum to {total}, cannot normalise {votes}")
        return tuple(v / total for v in votes)

    def majority(self, classes: Sequence[str]) -> str:
        """The plurality class; ties go to the earliest class in ``classes`` (deterministic)."""
        p = self.soft_label
        if len(classes) != len(p):
            raise ValueError(f"record {self.id!r}: {len(p)} votes but {len(classes)} classes")
        best = max(range(len(p)), key=lambda k: (p[k], -k))
        return classes[best]

    def to_json(self) -> dict[str, Any]:
        """A plain dict for one manifest line (tuples become lists; ``extra`` copied to a dict)."""
        return {
            "id": self.id,
            "audio_path": self.audio_path,
            "transcript": self.transcript,
            "votes": list(self.votes),
            "speaker": self.speaker,
            "session": self.session,
            "cot": self.cot,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Record:
        """Inverse of ``to_json``; missing optional keys take their defaults."""
        return cls(
            id=str(d["id"]),
            audio_path=str(d["audio_path"]),
            transcript=str(d["transcript"]),
            votes=tuple(float(v) for v in d["votes"]),
            speaker=str(d["speaker"]),
            session=str(d["session"]),
            cot=d.get("cot"),
            extra=dict(d.get("extra") or {}),
        )


def validate_soft_label(p: Sequence[float], classes: Sequence[str], id: str) -> tuple[float, ...]:
    """Check a distribution supplied from outside (a cache, a curator); returns it as a tuple.

    Raises ValueError naming ``id`` and the sum when the length does not match ``classes``, an entry is
    negative or non-finite, or the entries do not sum to 1 within ``SOFT_LABEL_TOLERANCE``.
    """
    p = tuple(float(x) for x in p)
    total = math.fsum(p)
    if len(p) != len(classes):
        raise ValueError(f"record {id!r}: distribution has {len(p)} entries for {len(classes)} classes")
    if any(not math.isfinite(x) for x in p):
        raise ValueError(f"record {id!r}: non-finite entries in {p} (sum {total})")
    if any(x < 0 for x in p):
        raise ValueError(f"record {id!r}: negative entries in {p} (sum {total})")
    if abs(total - 1.0) > SOFT_LABEL_TOLERANCE:
        raise ValueError(
            f"record {id!r}: distribution sums to {total}, not 1 (tolerance {SOFT_LABEL_TOLERANCE})"
        )
    return p


@dataclass(frozen=True)
class Skip:
    """An item left out of a corpus, and why (written to the run's skip report)."""

    id: str
    reason: str
    path: str | None = None

"""The curation prompts: versioned template files and the values they are filled with.

A prompt is a text file with ``{placeholders}`` (``str.format`` syntax; write ``{{`` for a literal brace).
Its version is the file stem (``cot_generation_v1``), recorded on every curated line, so editing a prompt
means saving it under a new name: a rerun then curates again instead of skipping clips done with the old
wording. The shipped prompts live in ``ambig/assets/prompts``; a config may also name any file path.

Placeholders (all optional in a template; an unknown one is an error when the prompt is loaded):
``transcript``, ``classes`` ("neutral, happy, sad, angry"), ``distribution`` ("neutral 60%, sad 40%":
nonzero shares, largest first, whole percents summing to 100), ``majority``, ``minorities`` (classes
other than the majority with at least 10% of the votes, or "none (listeners agree)"), ``audio_note``
(what the model gets of the audio: the attached clip, or measured acoustic features in text mode),
``audio_check`` (validation: what the trajectory must not contradict besides the transcript), and
``trajectory`` (validation: the text under review).
"""

from __future__ import annotations

import math
import string
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ambig.curation.acoustics import AcousticCues, describe
from ambig.curation.template import MINORITY_SHARE, _shares, percentages
from ambig.data.records import Record

PLACEHOLDERS = frozenset(
    {
        "transcript",
        "classes",
        "distribution",
        "majority",
        "minorities",
        "audio_note",
        "audio_check",
        "trajectory",
    }
)
GENERATION_PROMPT = "cot_generation_v1"
VALIDATION_PROMPT = "cot_validation_v1"


@dataclass(frozen=True)
class Prompt:
    """A prompt template and its version (the file stem)."""

    version: str
    text: str

    def render(self, **values: str) -> str:
        return self.text.format_map(values)


def prompt_path(name: str | Path) -> Path:
    """A shipped prompt by name (``cot_generation_v1``) or any file path."""
    candidate = Path(name)
    if candidate.suffix == ".txt" or len(candidate.parts) > 1:
        return candidate.expanduser()
    return Path(str(resources.files("ambig") / "assets" / "prompts" / f"{name}.txt"))


def load_prompt(name: str | Path) -> Prompt:
    """Read a prompt template; refuse unknown placeholders (a typo would fail on the first clip)."""
    path = prompt_path(name)
    if not path.is_file():
        raise FileNotFoundError(f"prompt {name!r}: no file at {path}")
    text = path.read_text(encoding="utf-8")
    try:
        fields = {f for _, f, _, _ in string.Formatter().parse(text) if f is not None}
    except ValueError as exc:
        raise ValueError(
            f"prompt {path}: bad template ({exc}); write {{{{ and }}}} for literal braces"
        ) from exc
    unknown = fields - PLACEHOLDERS
    if unknown:
        raise ValueError(
            f"prompt {path}: unknown placeholders {sorted(unknown)}; known: {sorted(PLACEHOLDERS)}"
        )
    return Prompt(version=path.stem, text=text)


def distribution_text(record: Record, classes: Sequence[str]) -> str:
    """'neutral 60%, sad 40%': nonzero shares, largest first (ties in class order), whole percents."""
    if len(classes) != len(record.votes):
        raise ValueError(f"record {record.id!r}: {len(record.votes)} votes but {len(classes)} classes")
    record.soft_label  # noqa: B018 - validates the votes (raises ValueError naming the record)
    shares = _shares(record.votes)
    pct = percentages(record.votes)
    order = sorted((k for k in range(len(classes)) if shares[k] > 0), key=lambda k: (-shares[k], k))
    return ", ".join(f"{classes[k]} {pct[k]}%" for k in order)


def top_classes(record: Record, classes: Sequence[str]) -> list[str]:
    """Every class with the largest share (more than one on a tie)."""
    p = record.soft_label
    best = max(p)
    return [c for c, v in zip(classes, p, strict=True) if v == best]


def minority_classes(record: Record, classes: Sequence[str]) -> list[str]:
    """Classes other than the majority with at least ``MINORITY_SHARE`` of the votes, largest first."""
    shares = _shares(record.votes)
    majority = record.majority(classes)
    order = sorted(range(len(classes)), key=lambda k: (-shares[k], k))
    return [classes[k] for k in order if classes[k] != majority and shares[k] >= MINORITY_SHARE]


def _num(value: float, fmt: str) -> str:
    return format(value, fmt) if math.isfinite(value) else "not measurable"


def acoustic_text(cues: AcousticCues) -> str:
    """Measured cues in words and numbers (absolute scales: no speaker norm is available per clip)."""
    words = describe(cues)
    if cues.silent:
        return f"the clip is silent or nearly so ({cues.duration_s:.1f} s)"
    return "; ".join(
        [
            f"volume {words['volume']} ({_num(cues.rms_db, '.1f')} dBFS)",
            f"speaking rate {words['speed']} ({_num(cues.rate_hz, '.1f')} syllable nuclei per second)",
            f"pitch {words['pitch']} (median f0 {_num(cues.pitch_hz, '.0f')} Hz)",
            f"intonation {words['tone']} (f0 range {_num(cues.pitch_range_st, '.1f')} semitones)",
            f"pauses {words['pauses']} ({_num(100 * cues.pause_share, '.0f')}% of the clip)",
            f"duration {cues.duration_s:.1f} s",
        ]
    )


def prompt_values(record: Record, classes: Sequence[str]) -> dict[str, str]:
    """The per-clip placeholder values shared by generation and validation."""
    minorities = minority_classes(record, classes)
    return {
        "transcript": record.transcript.strip() or "(no transcript)",
        "classes": ", ".join(classes),
        "distribution": distribution_text(record, classes),
        "majority": record.majority(classes),
        "minorities": ", ".join(minorities) if minorities else "none (listeners agree)",
    }

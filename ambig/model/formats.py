"""Output formats of the models `ambig` evaluates: a trajectory's reasoning and the emotion it names.

The read-out never depends on these: q is always read from the class-token logits after the answer prefix,
appended after the model's whole output when the model did not write it (ambig.rollout.decode). The parsers
say what a trajectory argued and answered in words, for predictions.jsonl and the reports.

- `ambig`: our structured CoT (Keywords, three steps, `Answer: <emotion>`), parsed by
  :func:`ambig.model.prompt.parse_cot`.
- `audio_reasoner`: Audio-Reasoner's `<THINK> ... </THINK><RESPONSE> ... </RESPONSE>` (its THINK block holds
  PLANNING / CAPTION / REASONING / SUMMARY sections); the answer is the first class named in RESPONSE.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ambig.model.prompt import ANSWER_PREFIX, parse_cot

FORMATS = ("ambig", "audio_reasoner")


@dataclass(frozen=True)
class Parsed:
    """What a trajectory reasons (`reasoning`) and which class it names (`answer`, None when none)."""

    reasoning: str
    answer: str | None
    well_formed: bool


def _first_class(text: str, classes: Sequence[str]) -> str | None:
    """The class whose name occurs first in `text` as a whole word (case-insensitive)."""
    hits = []
    for name in classes:
        match = re.search(rf"\b{re.escape(name)}\b", text, flags=re.I)
        if match:
            hits.append((match.start(), name))
    return min(hits)[1] if hits else None


def _block(text: str, tag: str) -> str | None:
    match = re.search(rf"<{tag}>(.*?)(?:</{tag}>|$)", text, flags=re.S | re.I)
    return match.group(1).strip() if match else None


def parse_audio_reasoner(text: str, classes: Sequence[str]) -> Parsed:
    """Audio-Reasoner's output: reasoning = the THINK block, answer = the first class named in RESPONSE.

    Well formed: both blocks present and closed, and RESPONSE names a class. A truncated output (no closing
    tag) still yields what it has.
    """
    thinking = _block(text, "THINK")
    response = _block(text, "RESPONSE")
    answer = _first_class(response, classes) if response is not None else None
    closed = all(re.search(rf"</{t}>", text, flags=re.I) for t in ("THINK", "RESPONSE"))
    return Parsed(thinking if thinking is not None else text.strip(), answer, closed and answer is not None)


def parse_output(text: str, classes: Sequence[str], output_format: str) -> Parsed:
    """Parse a trajectory written in `output_format` (one of FORMATS)."""
    if output_format == "ambig":
        parsed = parse_cot(text, classes)
        return Parsed(text.split("\n" + ANSWER_PREFIX)[0].strip(), parsed.answer, parsed.well_formed)
    if output_format == "audio_reasoner":
        return parse_audio_reasoner(text, classes)
    raise ValueError(f"model.output_format={output_format!r}: choose one of {', '.join(FORMATS)}")

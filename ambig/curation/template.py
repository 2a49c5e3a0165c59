"""The template curator: a structured CoT written from measured cues and the human distribution.

This is the offline, deterministic stand-in for the paper's GPT-4o curation on real corpora, where the
cues that produced a clip are unknown and must be measured (``acoustics.measure``) and read
(``lexicon.lexical_cues``). Like the paper's curator it sees the ground-truth distribution, and it
follows the paper's rules (METHOD.md, "Structured CoT"): keywords; the words' meaning and ambiguity;
prosody in professional terms with the cues for the majority AND the minority labels; a synthesis from
which a reader can predict the distribution (it ends by stating it, in whole percents).

Prosody words are tied to labels by a fixed table (``COMPATIBLE``): loud, fast, high, wide-ranging speech fits
angry, happy and fear; quiet, slow, low, flat speech fits sad and neutral; disgust sits low to moderate, slow
and hesitant. MSP-Podcast's two further classes come last in each entry (so the six classes' texts are
unchanged): surprise with raised, quick, high, wide-ranging, hesitant speech; contempt with quiet to moderate,
slow or steady, low, flat or varied, fluent speech. Everything is deterministic: the same record, audio and
norm give the same text.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import fields, replace
from fractions import Fraction

import numpy as np

from ambig.curation.acoustics import UNCLEAR, AcousticCues, describe, measure
from ambig.curation.lexicon import lexical_cues
from ambig.data.audio import load_audio
from ambig.data.records import Record
from ambig.model.prompt import ANSWER_PREFIX, SECTION_HEADERS, format_cot

PROMPT_VERSION = "template-v1"

# Minority labels: classes other than the majority with at least this share of the votes.
MINORITY_SHARE = Fraction(1, 10)

# Labels each prosody word is consistent with, most typical first (classes outside a corpus are dropped).
COMPATIBLE: dict[str, dict[str, tuple[str, ...]]] = {
    "volume": {
        "quiet": ("sad", "neutral", "disgust", "contempt"),
        "moderate": ("neutral", "disgust", "happy", "contempt"),
        "raised": ("happy", "angry", "fear", "surprise"),
        "loud": ("angry", "happy", "fear", "surprise"),
    },
    "speed": {
        "slow": ("sad", "disgust", "neutral", "contempt"),
        "steady": ("neutral", "disgust", "contempt"),
        "quick": ("happy", "fear", "angry", "surprise"),
        "fast": ("angry", "fear", "happy", "surprise"),
    },
    "pitch": {
        "low": ("sad", "disgust", "neutral", "contempt"),
        "normal": ("neutral", "disgust", "contempt"),
        "elevated": ("happy", "angry", "fear", "surprise"),
        "high": ("fear", "happy", "angry", "surprise"),
    },
    "tone": {
        "flat": ("neutral", "sad", "disgust", "contempt"),
        "varied": ("happy", "angry", "disgust", "contempt"),
        "wide-ranging": ("happy", "fear", "angry", "surprise"),
    },
    "pauses": {
        "fluent": ("neutral", "angry", "happy", "contempt"),
        "hesitant": ("sad", "fear", "disgust", "surprise"),
    },
}
# How much a prosody word counts toward the voice's lean, by the label's place in its COMPATIBLE entry.
LEAN_WEIGHTS = (1.0, 0.6, 0.3, 0.2)
# The noun each dimension's word qualifies ("loud volume", "hesitant delivery").
NOUNS = {"volume": "volume", "speed": "speed", "pitch": "pitch", "tone": "tone", "pauses": "delivery"}


def _join(items: Sequence[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = list(items)
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _verb(cues: Sequence[str]) -> str:
    return "supports" if len(cues) == 1 else "support"


def _quote(words: Sequence[str]) -> str:
    return _join([f"'{w}'" for w in words])


def _shares(votes: Sequence[float]) -> list[Fraction]:
    """The vote distribution as exact fractions (so ties and rounding never depend on float noise)."""
    exact = [Fraction(float(v)) for v in votes]
    total = sum(exact)
    return [v / total for v in exact]


def percentages(votes: Sequence[float]) -> list[int]:
    """Shares as whole percents summing to 100: floors, then +1 to the largest remainders (exact
    arithmetic; equal remainders go to the earlier class)."""
    raw = [p * 100 for p in _shares(votes)]
    out = [math.floor(r) for r in raw]
    order = sorted(range(len(raw)), key=lambda k: (-(raw[k] - out[k]), k))
    for k in order[: 100 - sum(out)]:
        out[k] += 1
    return out


def _compatible(dim: str, word: str, classes: Sequence[str]) -> tuple[str, ...]:
    return tuple(c for c in COMPATIBLE[dim].get(word, ()) if c in classes)


def _voice_lean(words: dict[str, str], classes: Sequence[str]) -> str | None:
    """The class the prosody words fit best (earlier-listed fits weigh more); None when nothing fits."""
    score = dict.fromkeys(classes, 0.0)
    for dim, word in words.items():
        for rank, c in enumerate(COMPATIBLE[dim].get(word, ())):
            if c in score:
                score[c] += LEAN_WEIGHTS[rank]
    best = max(classes, key=lambda c: (score[c], -list(classes).index(c)))
    return best if score[best] > 0 else None


def _distribution_phrase(classes: Sequence[str], shares: list[Fraction], pct: list[int]) -> str:
    named = sorted((k for k in range(len(classes)) if shares[k] > 0), key=lambda k: (-shares[k], k))
    leaders = [k for k in named if shares[k] == shares[named[0]]]
    if len(named) == 1:
        return f"clearly {classes[named[0]]} ({pct[named[0]]}%)"
    if len(leaders) > 1:
        head = "split between " + _join([f"{classes[k]} ({pct[k]}%)" for k in leaders])
    else:
        head = f"mostly {classes[leaders[0]]} ({pct[leaders[0]]}%)"
    rest = [f"{classes[k]} ({pct[k]}%)" for k in named[len(leaders) :]]
    return head + (f" with some {_join(rest)}" if rest else "")


def template_cot(
    record: Record,
    wav: np.ndarray | None,
    sr: int,
    classes: Sequence[str],
    speaker_norm: AcousticCues | None = None,
    *,
    cues: AcousticCues | None = None,
) -> str:
    """The structured CoT body for ``record`` (no answer line). ``cues`` skips measuring ``wav`` again
    (``wav`` may then be None); ``speaker_norm`` makes the prosody words relative to the speaker."""
    classes = tuple(classes)
    if len(classes) != len(record.votes):
        raise ValueError(f"record {record.id!r}: {len(record.votes)} votes but {len(classes)} classes")
    if cues is None:
        if wav is None:
            raise ValueError(f"record {record.id!r}: give the waveform or its measured cues")
        cues = measure(wav, sr)
    record.soft_label  # noqa: B018 - validates the votes (raises ValueError naming the record)
    shares = _shares(record.votes)
    pct = percentages(record.votes)
    majority = record.majority(classes)
    minority = [
        classes[k]
        for k in sorted(range(len(classes)), key=lambda k: (-shares[k], k))
        if classes[k] != majority and shares[k] >= MINORITY_SHARE
    ]

    words = describe(cues, speaker_norm)
    phrases = {dim: f"{words[dim]} {NOUNS[dim]}" for dim in COMPATIBLE}
    lex = {c: ws for c, ws in lexical_cues(record.transcript).items() if c in classes and ws}
    lex_words: list[str] = []
    for c in classes:
        for w in lex.get(c, []):
            if w not in lex_words:
                lex_words.append(w)

    # Keywords.
    keywords = ", ".join(
        [phrases[d] for d in COMPATIBLE] + ([f"'{w}'" for w in lex_words] or ["no emotional words"])
    )

    # Step 1: what the words suggest.
    lex_classes = [c for c in classes if c in lex]
    if not record.transcript.strip():
        text = "No words are available, so the text carries no emotional meaning and the voice must decide."
    elif not lex_classes:
        text = (
            "The words carry no emotionally marked vocabulary; on their own they read as neutral or "
            "ambiguous, so the voice must decide."
        )
    else:
        parts = [f"{_quote(lex[c])} {'suggests' if len(lex[c]) == 1 else 'suggest'} {c}" for c in lex_classes]
        if len(lex_classes) == 1:
            text = f"{parts[0]}; the words point to a single emotion, so the text itself is not ambiguous."
        else:
            text = (
                f"{', while '.join(parts)}; the words point to {_join(lex_classes)}, so the text is "
                "ambiguous."
            )

    # Step 2: prosody, each word with the labels it fits, then the cues for majority and minority labels.
    relative = speaker_norm is not None and not speaker_norm.silent
    frame = "Relative to the speaker's usual voice" if relative else "In absolute terms"
    described = []
    for dim in COMPATIBLE:
        fits = _compatible(dim, words[dim], classes)
        label = "/".join(fits) if fits else ("not measurable" if words[dim] == UNCLEAR else "no clear label")
        described.append(f"{NOUNS[dim]} is {words[dim]} ({label})")
    audio = f"{frame}, {_join(described)}; "

    def support(c: str) -> list[str]:
        return [phrases[d] for d in COMPATIBLE if c in _compatible(d, words[d], classes)]

    maj_cues = support(majority)
    if maj_cues:
        audio += f"the {_join(maj_cues)} {_verb(maj_cues)} the majority label {majority}"
    else:
        audio += f"no prosodic cue clearly supports the majority label {majority}"
    if not minority:
        audio += "; listeners agree, so no minority label needs support."
    else:
        notes = []
        for m in minority:
            cue = support(m)
            if cue:
                notes.append(f"the {_join(cue)} {_verb(cue)} the minority label {m}")
            elif m in lex:
                notes.append(f"the minority label {m} rests on the words ({_quote(lex[m])}), not the voice")
            else:
                notes.append(f"no prosodic cue clearly supports the minority label {m}")
        audio += "; " + "; ".join(notes) + "."

    # Step 3: weigh words against voice, then state the distribution.
    lean = _voice_lean(words, classes)
    if not lex_classes:
        weigh = (
            f"The words are emotionally neutral, so the voice carries the weight and leans {lean}"
            if lean
            else "Neither the words nor the voice give a clear cue"
        )
    elif lean is None:
        weigh = f"The voice gives no clear cue, so the words ({_join(lex_classes)}) carry the weight"
    elif lean in lex_classes:
        weigh = f"The words ({_join(lex_classes)}) and the voice ({lean}) agree"
    else:
        weigh = f"The words suggest {_join(lex_classes)} while the voice leans {lean}, so the two conflict"
    if majority == lean and majority in lex_classes:
        follow = "listeners followed both"
    elif majority == lean:
        follow = "listeners followed the voice"
    elif majority in lex_classes:
        follow = "listeners followed the words"
    else:
        follow = "listeners heard more than either cue states"
    synthesis = f"{weigh}; {follow}; overall the clip is {_distribution_phrase(classes, shares, pct)}."

    sections = (keywords, text, audio, synthesis)
    for section in sections:
        for marker in [h for _, h in SECTION_HEADERS] + [ANSWER_PREFIX]:
            if marker in section:  # cannot happen with the fixed vocabulary; guards future edits
                raise AssertionError(f"record {record.id!r}: CoT content contains {marker!r}")
    return format_cot(*sections)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return math.fsum(finite) / len(finite) if finite else float("nan")


def speaker_norms(records_with_cues: Iterable[tuple[str, AcousticCues]]) -> dict[str, AcousticCues]:
    """Per-speaker mean cues (NaN-aware: unmeasurable values are skipped); silent clips are left out
    (a speaker with only silent clips gets an all-NaN, ``silent`` norm)."""
    groups: dict[str, list[AcousticCues]] = defaultdict(list)
    everything: dict[str, list[AcousticCues]] = defaultdict(list)
    for speaker, cues in records_with_cues:
        everything[speaker].append(cues)
        if not cues.silent:
            groups[speaker].append(cues)
    out = {}
    numeric = [f.name for f in fields(AcousticCues) if f.name != "silent"]
    for speaker in sorted(everything):
        members = groups.get(speaker, [])
        if members:
            values = {name: _mean([getattr(c, name) for c in members]) for name in numeric}
            out[speaker] = AcousticCues(**values, silent=False)
        else:
            values = {name: float("nan") for name in numeric}
            out[speaker] = AcousticCues(**values, silent=True)
    return out


def curate(
    records: Sequence[Record],
    classes: Sequence[str],
    *,
    sample_rate: int = 16000,
    relative: bool = True,
    load: Callable[[str], np.ndarray] | None = None,
) -> list[Record]:
    """Template CoTs for a whole corpus: measure every clip once, then (``relative``) describe each clip
    against its speaker's mean cues. Returns copies of the records with ``cot`` set."""
    load = load or (lambda path: load_audio(path, target_sr=sample_rate, max_seconds=None))
    measured = [measure(load(r.audio_path), sample_rate) for r in records]
    norms = speaker_norms((r.speaker, c) for r, c in zip(records, measured, strict=True)) if relative else {}
    return [
        replace(r, cot=template_cot(r, None, sample_rate, classes, norms.get(r.speaker), cues=c))
        for r, c in zip(records, measured, strict=True)
    ]

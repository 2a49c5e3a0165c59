"""A small hand-written emotion lexicon: the text half of the template curator.

Common English cue words for the six classes (IEMOCAP uses the first four), and MSP-Podcast's surprise and
contempt. Matching is on whole words,
case-insensitive, without stemming (inflections are listed) and without negation handling ("not happy"
still reports 'happy'): the template only needs what the words *could* suggest, and Step 1 says when they
point several ways. The lists are disjoint, so one word is evidence for one class only.

Bracketed noise tags of IEMOCAP transcripts ("[LAUGHTER]", "[BREATHING]", "[GARBAGE]", ...) are removed
from the text; the ones a listener would hear as emotional are reported as cues under a plain name
("[LAUGHTER]" -> happy cue 'laughter').

The lexicon deliberately leaves out words of the CREMA-D sentences that would be false cues there
("stop" in "We'll stop in a couple of minutes", "alarm" in "I would like a new alarm clock").
"""

from __future__ import annotations

import re

CLASSES6 = ("neutral", "happy", "sad", "angry", "disgust", "fear")
# Every class the lexicon has words for: CREMA-D's six and MSP-Podcast's other two.
LEXICON_CLASSES = (*CLASSES6, "surprise", "contempt")

LEXICON: dict[str, tuple[str, ...]] = {
    "neutral": (
        "okay", "ok", "alright", "fine", "sure", "meeting", "appointment", "schedule", "report",
        "paperwork", "office", "form", "forms", "address", "number", "information", "usually",
        "normally", "routine", "plan", "plans", "monday", "tuesday", "wednesday", "thursday", "friday",
        "anyway", "probably",
    ),
    "happy": (
        "happy", "glad", "great", "love", "loved", "lovely", "wonderful", "amazing", "awesome", "excited",
        "exciting", "fantastic", "fun", "beautiful", "perfect", "nice", "yay", "wow", "congratulations",
        "celebrate", "thrilled", "delighted", "joy", "enjoy", "haha", "hooray", "excellent", "brilliant",
        "proud", "married", "won", "win",
    ),
    "sad": (
        "sad", "sorry", "miss", "missed", "missing", "lost", "lose", "alone", "lonely", "cry", "cried",
        "tears", "hurt", "hurts", "died", "dead", "death", "funeral", "depressed", "unhappy", "miserable",
        "heartbroken", "gone", "regret", "grief", "goodbye", "empty", "hopeless",
    ),
    "angry": (
        "angry", "mad", "hate", "hated", "stupid", "damn", "dammit", "hell", "ridiculous", "unacceptable",
        "shut", "idiot", "furious", "annoying", "annoyed", "fault", "liar", "lied", "enough", "bullshit",
        "crap", "screw", "pissed", "unbelievable", "outrageous", "insane", "jerk", "fed",
    ),
    "disgust": (
        "disgusting", "disgusted", "gross", "yuck", "ew", "eww", "nasty", "sick", "vile", "revolting",
        "filthy", "dirty", "smell", "smells", "stink", "stinks", "rotten", "awful", "horrible", "puke",
        "vomit", "repulsive", "pathetic", "slimy", "ugh",
    ),
    "fear": (
        "afraid", "scared", "scary", "terrified", "frightened", "fear", "worried", "worry", "nervous",
        "anxious", "panic", "help", "danger", "dangerous", "careful", "hide", "nightmare", "threat",
        "creepy", "trembling", "shaking", "emergency", "terrifying", "frightening",
    ),
    "surprise": (
        "surprised", "surprise", "surprising", "shocked", "shocking", "whoa", "omg", "unexpected",
        "unexpectedly", "suddenly", "astonished", "astonishing", "amazed", "stunned", "expect", "expected",
        "startled", "speechless", "astounded", "astounding", "jeez", "gosh", "huh", "bewildered",
    ),
    "contempt": (
        "whatever", "beneath", "loser", "losers", "clueless", "pfft", "amateur", "amateurs", "inferior",
        "worthless", "laughable", "pitiful", "scoff", "sneer", "mediocre", "incompetent", "smug",
        "condescending", "arrogant", "snob", "snobs", "lame", "dismissive", "ignorant", "trivial", "unworthy",
    ),
}  # fmt: skip

# Noise tags that are emotional cues: tag word (lower case) -> (cue name, classes it points to).
TAG_CUES: dict[str, tuple[str, tuple[str, ...]]] = {
    "laughter": ("laughter", ("happy",)),
    "laugh": ("laughter", ("happy",)),
    "laughs": ("laughter", ("happy",)),
    "laughing": ("laughter", ("happy",)),
    "breathing": ("breathing", ("sad", "fear")),
    "breath": ("breathing", ("sad", "fear")),
    "sigh": ("sigh", ("sad",)),
    "sighing": ("sigh", ("sad",)),
    "crying": ("crying", ("sad",)),
    "cry": ("crying", ("sad",)),
    "sobbing": ("crying", ("sad",)),
    "sob": ("crying", ("sad",)),
    "scream": ("screaming", ("angry", "fear")),
    "screaming": ("screaming", ("angry", "fear")),
    "shouting": ("shouting", ("angry",)),
    "yelling": ("shouting", ("angry",)),
}

_WORD_CLASS = {w: c for c, words in LEXICON.items() for w in words}
_TAG_RE = re.compile(r"\[[^\]]*\]")
_TOKEN_RE = re.compile(r"\[[^\]]*\]|[a-z]+(?:'[a-z]+)*")


def _normalise(text: str) -> str:
    return text.lower().replace("\u2019", "'").replace("\u2018", "'")


def strip_tags(transcript: str) -> str:
    """The transcript without bracketed noise tags, whitespace collapsed."""
    return " ".join(_TAG_RE.sub(" ", transcript).split())


def lexical_cues(transcript: str) -> dict[str, list[str]]:
    """Cue words per class, every class of ``LEXICON_CLASSES`` present (empty list when none), each list in
    order of first occurrence without repeats; emotional noise tags appear under their cue name."""
    out: dict[str, list[str]] = {c: [] for c in LEXICON_CLASSES}
    for token in _TOKEN_RE.findall(_normalise(transcript or "")):
        if token.startswith("["):
            tag = " ".join(token.strip("[]").replace("_", " ").split())
            hit = TAG_CUES.get(tag) or TAG_CUES.get(tag.split(" ")[-1] if tag else "")
            if hit is None:
                continue
            name, classes = hit
            targets = classes
        else:
            cls = _WORD_CLASS.get(token)
            if cls is None:
                continue
            name, targets = token, (cls,)
        for cls in targets:
            if name not in out[cls]:
                out[cls].append(name)
    return out

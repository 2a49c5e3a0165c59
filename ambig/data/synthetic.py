"""A generated ambiguous-emotion corpus with IEMOCAP's shape, for tests and CPU-sized experiments.

Each utterance has a latent mixture over four emotions. The voice (pitch level and range, speaking
rate, loudness, voice quality) is the mixture-weighted average of per-emotion settings, the transcript
carries one emotion's cue words (usually the dominant one; sometimes another, so words and voice clash),
and simulated raters vote from the mixture nudged toward the words. The cues are deliberately large and
simple so a tiny randomly initialised audio encoder can learn them, and the structured CoT is written
from the known generating cues, standing in for the paper's GPT-4o curation.

Layout of a corpus (one directory per spec, so specs never mix):

    <root>/synthetic-<hash>/spec.json
    <root>/synthetic-<hash>/manifest.jsonl      one Record.to_json per line, audio_path relative
    <root>/synthetic-<hash>/wav/<session>/<id>.wav

Everything is seeded from ``spec.seed`` and the utterance index, so one spec gives byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ambig.data.records import Record
from ambig.model.prompt import ANSWER_PREFIX, SECTION_HEADERS, format_cot

CLASSES = ("neutral", "happy", "sad", "angry")

# Bump when the generator's output changes for an unchanged spec: it is part of the directory hash, so a
# stale corpus on disk is never mistaken for the current one.
GENERATOR_VERSION = 1


@dataclass(frozen=True)
class SyntheticSpec:
    """Everything that determines a synthetic corpus; equal specs give identical corpora."""

    n_utterances: int = 300
    n_sessions: int = 5
    speakers_per_session: int = 2
    min_seconds: float = 1.5
    max_seconds: float = 4.0
    sample_rate: int = 16000
    min_raters: int = 3
    max_raters: int = 10
    # Probability the transcript's lexical cue follows a different emotion than the voice's dominant one.
    lexical_conflict: float = 0.3
    seed: int = 0


# Per-emotion prosody. pitch is a multiple of the speaker's base f0; range the relative depth of the slow
# f0 modulation; rate syllables per second; loud the peak amplitude; breath the noise-to-voice ratio;
# tilt the spectral slope of the harmonics (amplitude h**-tilt: small tilt = many strong harmonics =
# harsh). Loudness and pitch are far apart between emotions on purpose.
PROSODY = {
    "neutral": {"pitch": 1.00, "range": 0.06, "rate": 3.8, "loud": 0.35, "breath": 0.15, "tilt": 1.4},
    "happy": {"pitch": 1.40, "range": 0.30, "rate": 5.0, "loud": 0.60, "breath": 0.10, "tilt": 1.0},
    "sad": {"pitch": 0.80, "range": 0.04, "rate": 2.5, "loud": 0.15, "breath": 0.60, "tilt": 2.0},
    "angry": {"pitch": 1.25, "range": 0.12, "rate": 6.0, "loud": 0.90, "breath": 0.03, "tilt": 0.5},
}
BASE_F0 = {"F": 210.0, "M": 120.0}
N_HARMONICS = 10

# How each prosodic dimension is described, by the emotion whose setting the realised value is nearest.
DESCRIPTORS = {
    "volume": {"neutral": "moderate", "happy": "raised", "sad": "quiet", "angry": "loud"},
    "speed": {"neutral": "steady", "happy": "brisk", "sad": "slow", "angry": "fast"},
    "pitch": {"neutral": "normal", "happy": "high", "sad": "low", "angry": "elevated"},
    "tone": {"neutral": "flat", "happy": "lively", "sad": "breathy", "angry": "harsh"},
}

# A small vocabulary (a tiny tokenizer is trained on it): emotion-free fillers plus cue words per emotion.
FILLERS = (
    "i", "we", "you", "it", "the", "that", "this", "was", "is", "about",
    "really", "just", "so", "today", "again", "now", "then", "call",
)  # fmt: skip
CUE_WORDS = {
    "neutral": ("meeting", "tuesday", "paperwork", "report", "schedule"),
    "happy": ("wonderful", "great", "love", "amazing", "fun"),
    "sad": ("miss", "lost", "sorry", "alone", "cried"),
    "angry": ("hate", "stop", "unacceptable", "ridiculous", "enough"),
}

# Dirichlet concentration of the latent mixture: most mass on the dominant emotion; an ambiguous clip
# also gets a strong secondary emotion.
ALPHA_DOMINANT, ALPHA_SECONDARY, ALPHA_OTHER = 8.0, 5.0, 0.5
P_SECONDARY = 0.35
# Raters see a slightly sharpened mixture, pulled a little toward the words' emotion.
RATER_SHARPEN, RATER_TEXT_WEIGHT = 1.3, 0.15


def spec_hash(spec: SyntheticSpec) -> str:
    """Short stable hash of the spec's fields (and the generator version): the corpus directory name."""
    payload = json.dumps({"spec": asdict(spec), "version": GENERATOR_VERSION}, sort_keys=True)
    return hashlib.sha1(payload.encode()).hexdigest()[:10]


def corpus_dir(root: str | Path, spec: SyntheticSpec) -> Path:
    return Path(root) / f"synthetic-{spec_hash(spec)}"


def speaker_ids(spec: SyntheticSpec) -> list[tuple[str, str, str]]:
    """(session, speaker, sex) triples, sorted; speakers alternate F, M (then F2, M2, ... if more)."""
    out = []
    for s in range(spec.n_sessions):
        session = f"Ses{s + 1:02d}"
        for j in range(spec.speakers_per_session):
            sex = "FM"[j % 2]
            suffix = "" if j < 2 else str(j // 2 + 1)
            out.append((session, f"{session}{sex}{suffix}", sex))
    return out


def _check(spec: SyntheticSpec) -> None:
    if spec.n_sessions < 1 or spec.speakers_per_session < 1 or spec.n_utterances < 1:
        raise ValueError(f"need at least one session, speaker and utterance: {spec}")
    if not 0 < spec.min_seconds <= spec.max_seconds:
        raise ValueError(f"need 0 < min_seconds <= max_seconds: {spec}")
    if not 1 <= spec.min_raters <= spec.max_raters:
        raise ValueError(f"need 1 <= min_raters <= max_raters: {spec}")
    if not 0.0 <= spec.lexical_conflict <= 1.0:
        raise ValueError(f"lexical_conflict must be a probability: {spec}")


def _nearest_emotion(dim: str, value: float) -> str:
    """The emotion whose setting of one prosodic dimension is closest to ``value``."""
    return min(CLASSES, key=lambda e: abs(PROSODY[e][dim] - value))


def _nearest_tone(prosody: dict[str, float]) -> str:
    """Voice quality = pitch range, breathiness and spectral tilt together, each scaled by its spread."""
    dims = ("range", "breath", "tilt")
    spread = {d: max(p[d] for p in PROSODY.values()) - min(p[d] for p in PROSODY.values()) for d in dims}
    return min(CLASSES, key=lambda e: sum(((PROSODY[e][d] - prosody[d]) / spread[d]) ** 2 for d in dims))


def _synthesise(rng: np.random.Generator, prosody: dict[str, float], f0_base: float, n: int, sr: int):
    """Syllable pulses on a harmonic source with a smooth f0 contour, plus breath noise; peak = loud."""
    t = np.arange(n) / sr
    duration = n / sr
    rate = prosody["rate"]
    # Syllable-like envelope: Hann pulses at jittered intervals of 1/rate.
    env = np.zeros(n)
    onset = rng.uniform(0.05, 0.2)
    while onset < duration - 0.1:
        length = int(0.6 / rate * sr)
        start = int(onset * sr)
        pulse = np.hanning(length) * rng.uniform(0.6, 1.0)
        stop = min(n, start + length)
        env[start:stop] += pulse[: stop - start]
        onset += (1.0 / rate) * float(np.exp(rng.normal(0.0, 0.15)))
    # Smooth f0: level times (1 + range * slow two-sine modulation).
    fm = rng.uniform(0.4, 1.0)
    phases = rng.uniform(0, 2 * np.pi, size=2)
    wobble = 0.7 * np.sin(2 * np.pi * fm * t + phases[0]) + 0.3 * np.sin(2 * np.pi * 2.3 * fm * t + phases[1])
    f0 = f0_base * prosody["pitch"] * (1.0 + prosody["range"] * wobble)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    harmonic = np.zeros(n)
    for h in range(1, N_HARMONICS + 1):
        # Drop a harmonic wherever it would pass 0.45 * sr (no aliasing).
        harmonic += np.where(h * f0 < 0.45 * sr, h ** -prosody["tilt"], 0.0) * np.sin(h * phase)
    harmonic /= harmonic.std() + 1e-9
    voice = env * (harmonic + prosody["breath"] * 2.0 * rng.standard_normal(n))
    voice *= prosody["loud"] / (np.abs(voice).max() + 1e-9)
    voice += 1e-3 * rng.standard_normal(n)  # a faint noise floor: no digitally silent stretches
    return np.clip(voice, -1.0, 1.0).astype(np.float32)


def _percentages(p: np.ndarray) -> list[int]:
    """Shares as whole percentages summing to exactly 100 (largest remainder)."""
    raw = p * 100
    out = np.floor(raw).astype(int)
    for k in np.argsort(-(raw - out), kind="stable")[: 100 - out.sum()]:
        out[k] += 1
    return out.tolist()


def _join(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else f"{', '.join(items[:-1])} and {items[-1]}"


def _quote(words: list[str]) -> str:
    return _join([f"'{w}'" for w in words])


def _cot(cue_words: list[str], lexical: str, dominant: str, prosody: dict[str, float], p: np.ndarray) -> str:
    """The structured CoT body, written from the generating cues and the raters' distribution."""
    supports = {
        "volume": _nearest_emotion("loud", prosody["loud"]),
        "speed": _nearest_emotion("rate", prosody["rate"]),
        "pitch": _nearest_emotion("pitch", prosody["pitch"]),
        "tone": _nearest_tone(prosody),
    }
    words = {dim: DESCRIPTORS[dim][e] for dim, e in supports.items()}
    keywords = ", ".join(
        [words["volume"], words["speed"], f"{words['pitch']} pitch", f"{words['tone']} tone"]
        + [f"'{w}'" for w in cue_words]
    )
    verb = "suggests" if len(cue_words) == 1 else "suggest"
    fit = "fit the voice: not ambiguous" if lexical == dominant else "clash with the voice: ambiguous"
    text = f"{_quote(cue_words)} {verb} {lexical}; the words {fit}."
    # Most common supported label; ties broken by class order so the text is deterministic.
    counts = Counter(supports.values())
    main = max(CLASSES, key=lambda e: (counts[e], -CLASSES.index(e)))
    audio = (
        f"Against the speaker's norm: {words['volume']} volume ({supports['volume']}), "
        f"{words['speed']} speed ({supports['speed']}), {words['pitch']} pitch ({supports['pitch']}), "
        f"{words['tone']} tone ({supports['tone']}); most cues support {main}."
    )
    pct = _percentages(p)
    order = sorted((k for k in range(len(CLASSES)) if p[k] > 0), key=lambda k: (-p[k], k))
    leaders = [k for k in order if p[k] == p[order[0]]]
    if len(order) == 1:
        synthesis = f"All raters agree: clearly {CLASSES[order[0]]} (100%)."
    else:
        if len(leaders) > 1:
            head = "split between " + " and ".join(f"{CLASSES[k]} ({pct[k]}%)" for k in leaders)
        else:
            head = f"mostly {CLASSES[leaders[0]]} ({pct[leaders[0]]}%)"
        rest = [f"{CLASSES[k]} ({pct[k]}%)" for k in order[len(leaders) :]]
        tail = f" with some {_join(rest)}" if rest else ""
        synthesis = f"Weighing voice and words: {head}{tail}."
    return format_cot(keywords, text, audio, synthesis)


def _utterance(spec: SyntheticSpec, index: int, session: str, speaker: str, f0_base: float, local: int):
    """Generate one utterance: (Record with a corpus-relative audio_path, waveform)."""
    rng = np.random.default_rng([spec.seed, index])
    k = len(CLASSES)
    dominant = int(rng.integers(k))
    alpha = np.full(k, ALPHA_OTHER)
    alpha[dominant] = ALPHA_DOMINANT
    secondary = None
    if rng.random() < P_SECONDARY:
        secondary = int((dominant + rng.integers(1, k)) % k)
        alpha[secondary] = ALPHA_SECONDARY
    mixture = rng.dirichlet(alpha)

    # Voice: mixture-weighted prosody with a little per-utterance jitter (speakers are not machines).
    weights = dict(zip(CLASSES, mixture.tolist(), strict=True))
    prosody = {d: sum(w * PROSODY[e][d] for e, w in weights.items()) for d in PROSODY["sad"]}
    prosody["loud"] *= float(np.exp(rng.normal(0.0, 0.08)))
    prosody["rate"] *= float(np.exp(rng.normal(0.0, 0.06)))
    prosody["pitch"] *= float(np.exp(rng.normal(0.0, 0.03)))
    n_samples = int(round(rng.uniform(spec.min_seconds, spec.max_seconds) * spec.sample_rate))
    wav = _synthesise(rng, prosody, f0_base, n_samples, spec.sample_rate)

    # Words: the dominant emotion's cues, or with prob lexical_conflict the secondary's (or another's).
    lexical = dominant
    if rng.random() < spec.lexical_conflict:
        lexical = secondary if secondary is not None else int((dominant + rng.integers(1, k)) % k)
    n_words = int(rng.integers(4, 9))
    n_cues = int(rng.integers(1, 3))
    cues = [str(w) for w in rng.choice(CUE_WORDS[CLASSES[lexical]], size=n_cues, replace=False)]
    words = [str(w) for w in rng.choice(FILLERS, size=n_words - n_cues)]
    for w in cues:
        words.insert(int(rng.integers(len(words) + 1)), w)

    # Raters: each votes once from the sharpened mixture pulled toward the words.
    perceived = mixture**RATER_SHARPEN
    perceived = (1 - RATER_TEXT_WEIGHT) * perceived / perceived.sum() + RATER_TEXT_WEIGHT * np.eye(k)[lexical]
    n_raters = int(rng.integers(spec.min_raters, spec.max_raters + 1))
    votes = rng.multinomial(n_raters, perceived / perceived.sum())

    rid = f"{speaker}_{local:04d}"
    record = Record(
        id=rid,
        audio_path=f"wav/{session}/{rid}.wav",
        transcript=" ".join(words),
        votes=tuple(float(v) for v in votes),
        speaker=speaker,
        session=session,
        cot=_cot(cues, CLASSES[lexical], CLASSES[dominant], prosody, votes / votes.sum()),
        extra={
            "mixture": [round(float(m), 4) for m in mixture],
            "lexical_emotion": CLASSES[lexical],
            "duration_s": n_samples / spec.sample_rate,
            "dominant": CLASSES[dominant],
        },
    )
    return record, wav


def _generate(spec: SyntheticSpec, out: Path) -> None:
    """Write the whole corpus into ``out`` (an empty directory)."""
    speakers = speaker_ids(spec)
    # Even spread: every speaker gets n // S utterances, the first n % S speakers one more.
    per, extra = divmod(spec.n_utterances, len(speakers))
    index = 0
    lines = []
    for j, (session, speaker, sex) in enumerate(speakers):
        # A small per-speaker f0 offset, seeded apart from the utterance streams.
        offset = np.random.default_rng([spec.seed, 1_000_000 + j]).uniform(-0.08, 0.08)
        f0_base = BASE_F0[sex] * (1.0 + offset)
        (out / "wav" / session).mkdir(parents=True, exist_ok=True)
        for local in range(per + (j < extra)):
            record, wav = _utterance(spec, index, session, speaker, f0_base, local)
            sf.write(str(out / record.audio_path), wav, spec.sample_rate, subtype="PCM_16", format="WAV")
            lines.append(json.dumps(record.to_json()))
            index += 1
    (out / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    (out / "spec.json").write_text(
        json.dumps({"spec": asdict(spec), "version": GENERATOR_VERSION, "classes": CLASSES}, indent=2) + "\n"
    )


def build_synthetic(root: str | Path, spec: SyntheticSpec) -> Path:
    """Build the corpus for ``spec`` under ``root`` unless it is already there; return its directory.

    The corpus is written to a temporary sibling and renamed into place, so a killed build never leaves a
    half corpus; if another process finishes first, its copy wins and ours is discarded.
    """
    _check(spec)
    final = corpus_dir(root, spec)
    if final.exists():
        if not (final / "manifest.jsonl").is_file():
            raise FileExistsError(f"{final} exists but holds no manifest.jsonl; remove it to rebuild")
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _generate(spec, tmp)
        try:
            os.rename(tmp, final)  # atomic; fails if final appeared meanwhile (non-empty directory)
        except OSError:
            if not (final / "manifest.jsonl").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def load_synthetic(root: str | Path, spec: SyntheticSpec) -> list[Record]:
    """Records of the corpus for ``spec`` (built first if missing), with absolute audio paths."""
    corpus = build_synthetic(root, spec).resolve()
    records = []
    for line in (corpus / "manifest.jsonl").read_text().splitlines():
        if line.strip():
            d = json.loads(line)
            d["audio_path"] = str(corpus / d["audio_path"])
            records.append(Record.from_json(d))
    return records


def vocabulary_text() -> str:
    """Every word and phrase the transcripts and CoTs can contain, one per line (tokenizer training)."""
    template = (
        "suggests suggest; the words fit the voice: not ambiguous.",
        "the words clash with the voice: ambiguous.",
        "Against the speaker's norm: volume (), speed, pitch, tone; most cues support",
        "All raters agree: clearly (100%).",
        "Weighing voice and words: mostly split between with some, and",
    )
    lines = [header for _, header in SECTION_HEADERS] + [ANSWER_PREFIX, *template, " ".join(CLASSES)]
    lines += [" ".join(FILLERS)] + [" ".join(ws) for ws in CUE_WORDS.values()]
    lines += [" ".join(f"'{w}'" for w in ws) for ws in CUE_WORDS.values()]  # quoted in keywords and text
    lines += [" ".join(d.values()) for d in DESCRIPTORS.values()]
    lines += [" ".join(f"({p}%)" for p in range(101))]
    return "\n".join(lines) + "\n"


class SyntheticCorpus:
    """`dataset=synthetic`: the corpus for one spec under `root`, built on first use."""

    name = "synthetic"
    classes = CLASSES

    def __init__(self, root: str | Path, **spec):
        self.root = Path(root)
        self.spec = SyntheticSpec(**spec)

    def records(self) -> list[Record]:
        return load_synthetic(self.root, self.spec)

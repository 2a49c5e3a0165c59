"""IEMOCAP reader: the release's per-dialog label files reduced to ``Record``s with soft labels.

IEMOCAP is licensed from USC SAIL, so nothing here ships data; the reader parses a local copy of
``IEMOCAP_full_release`` laid out as in ``docs/iemocap-format.md``:

- ``Session<k>/dialog/EmoEvaluation/<dialog>.txt``: blocks of a tab-separated summary line
  (``[start - end]  utterance  code  [V, A, D]``) followed by categorical ``C-<rater>:`` lines and
  dimensional ``A-<rater>:`` lines. Every label on a ``C-`` line is a vote.
- ``Session<k>/dialog/transcriptions/<dialog>.txt``: ``<utt> [SSS.SSSS-EEE.EEEE]: <text>``.
- ``Session<k>/sentences/wav/<dialog>/<utt>.wav``: one clip per utterance.

Votes are counted per class (``CLASSES``); labels outside the four classes are dropped and the
dropped share is reported by ``card_stats``. The speaker is session + the utterance's own letter
(``Ses01F_impro01_M000`` is spoken by ``Ses01M``): the dialog's letter only says who wore the
motion-capture markers.

Order of the per-utterance checks (the first that fails decides the ``Skip`` reason):
no vote among the four classes -> outside the selected utterance set (not a skip, only counted) ->
no transcription -> missing audio file.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from ambig.data.parsed_corpus import ParsedCorpus
from ambig.data.records import Record, Skip

log = logging.getLogger(__name__)

CLASSES = ("neutral", "happy", "sad", "angry")
# Label words as the release writes them; anything else (Frustration, Surprise, Fear, Disgust, Other)
# is outside the four classes and its vote is dropped.
LABEL_MAP = {
    "Neutral": "neutral",
    "Neutral state": "neutral",
    "Happiness": "happy",
    "Excited": "happy",
    "Sadness": "sad",
    "Anger": "angry",
}
# Summary codes of the standard 4-class set (5,531 utterances; exc merged into hap).
FOUR_CLASS_CODES = ("neu", "hap", "exc", "sad", "ang")

RATERS = ("external", "all")
MULTI_LABEL = ("split", "each", "first")
UTTERANCES = ("four_class", "any_vote")
SESSIONS = (1, 2, 3, 4, 5)

NO_VOTE = "no vote among the 4 classes"
NO_TRANSCRIPTION = "no transcription"
MISSING_AUDIO = "missing audio file"
BAD_NAME = "utterance name does not follow Ses<SS><G>_<kind>_<S><NNN>"
DUPLICATE = "duplicate block (first one kept)"

_LABEL_LOOKUP = {k.casefold(): v for k, v in LABEL_MAP.items()}
_CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
_UTT_RE = re.compile(r"^Ses(\d\d)([FM])_.+_([FM])(\d{3})$")
_TIMES_RE = re.compile(r"^\[\s*([0-9.]+)\s*-\s*([0-9.]+)\s*\]$")
_RATER_RE = re.compile(r"^C-([A-Za-z]+\d*)\s*:?$")
_TRANSCRIPT_RE = re.compile(r"^(\S+)\s*\[\s*([0-9.]+)\s*-\s*([0-9.]+)\s*\]\s*:\s?(.*)$")

_LAYOUT = """\
  IEMOCAP_full_release/
    Session1/ ... Session5/
      dialog/
        EmoEvaluation/<dialog>.txt       # per-dialog labels (parsed)
        transcriptions/<dialog>.txt      # one line per turn
      sentences/
        wav/<dialog>/<utterance>.wav     # one 16 kHz clip per utterance"""


class IEMOCAPLayoutError(FileNotFoundError):
    """The dataset root does not look like ``IEMOCAP_full_release``; the message says what to fix."""


def _layout_error(problem: str, root: Path) -> IEMOCAPLayoutError:
    hint = ""
    nested = root / "IEMOCAP_full_release"
    if nested.is_dir():
        hint = f"\n{root} contains IEMOCAP_full_release/: did you mean dataset.root={nested}?"
    return IEMOCAPLayoutError(
        f"IEMOCAP not found: {problem}.{hint}\n"
        f"Expected layout under dataset.root:\n{_LAYOUT}\n"
        "IEMOCAP cannot be downloaded automatically: it is licensed from USC SAIL "
        "(https://sail.usc.edu/iemocap/ , fill in the release request form). Unpack the release and pass "
        "dataset.root=/path/to/IEMOCAP_full_release"
    )


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"unknown {name} {value!r}; valid values: {', '.join(valid)}")
    return value


def _read_text(path: Path) -> str:
    """UTF-8 if it decodes, else latin-1 (never fails): the release is ASCII apart from a few stray bytes."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _dialog_files(folder: Path) -> list[Path]:
    """``<dialog>.txt`` files directly in ``folder``, skipping hidden and AppleDouble (``._*``) files."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix == ".txt" and not p.name.startswith(".")
    )


@dataclass
class _Block:
    """One summary line and its categorical lines, as read from an EmoEvaluation file."""

    utt: str
    start: float
    end: float
    code: str
    vad: list[float] | None
    cat: list[tuple[str, list[str]]] = field(default_factory=list)  # (rater, labels)


def _parse_vad(text: str) -> list[float] | None:
    try:
        vals = [float(x) for x in text.strip().strip("[]").split(",")]
    except ValueError:
        return None
    return vals if len(vals) == 3 else None


def parse_emo_evaluation(text: str) -> list[_Block]:
    """Blocks of one ``EmoEvaluation/<dialog>.txt`` (header, comments and ``A-`` lines ignored)."""
    blocks: list[_Block] = []
    current: _Block | None = None
    for line in text.splitlines():
        line = line.rstrip("\r\n")
        if not line.strip() or line.startswith("%"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if line.startswith("[") and len(fields) >= 3:
            times = _TIMES_RE.match(fields[0])
            if times is None:
                log.warning("unparseable summary line %r", line)
                current = None
                continue
            current = _Block(
                utt=fields[1],
                start=float(times.group(1)),
                end=float(times.group(2)),
                code=fields[2].lower(),
                vad=_parse_vad(fields[3]) if len(fields) > 3 else None,
            )
            blocks.append(current)
        elif line.startswith("C-") and current is not None:
            rater = _RATER_RE.match(fields[0])
            if rater is None or len(fields) < 2:
                log.warning("%s: unparseable categorical line %r", current.utt, line)
                continue
            labels = [s.strip() for s in fields[1].split(";") if s.strip()]
            current.cat.append((rater.group(1), labels))
    return blocks


def parse_transcription(text: str) -> dict[str, tuple[float, float, str]]:
    """``{utterance: (start, end, text)}`` of one transcription file; ``XX`` segments and lines not
    starting with ``Ses`` are left out."""
    out: dict[str, tuple[float, float, str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("Ses"):
            continue
        m = _TRANSCRIPT_RE.match(line)
        if m is None:
            log.warning("unparseable transcription line %r", line)
            continue
        name = m.group(1)
        if "XX" in name:
            continue
        out.setdefault(name, (float(m.group(2)), float(m.group(3)), m.group(4).strip()))
    return out


class IEMOCAPCorpus(ParsedCorpus):
    """``dataset=iemocap``: the 4-class soft-label records of a local ``IEMOCAP_full_release`` copy.

    Options (see ``docs/iemocap-format.md`` section 6 for prior practice):

    - ``raters``: ``"external"`` counts ``C-E*`` lines only; ``"all"`` counts every ``C-<rater>`` line,
      including the actors' self-evaluations (``C-F1``/``C-M1``).
    - ``multi_label``: a line naming k labels gives ``1/k`` to each (``"split"``), 1 to each
      (``"each"``), or 1 to the first only (``"first"``).
    - ``utterances``: ``"four_class"`` keeps summary codes neu/hap/exc/sad/ang (the standard 5,531);
      ``"any_vote"`` keeps every utterance with vote mass left among the four classes.
    - ``sessions``: session numbers to read (default all five); every one requested must be present.
    """

    name = "iemocap"
    classes = CLASSES

    def __init__(
        self,
        root: str | Path,
        *,
        raters: str = "external",
        multi_label: str = "split",
        utterances: str = "four_class",
        sessions: Iterable[int] | None = None,
    ):
        self.root = Path(root).expanduser()
        self.raters = _check_choice("raters", raters, RATERS)
        self.multi_label = _check_choice("multi_label", multi_label, MULTI_LABEL)
        self.utterances = _check_choice("utterances", utterances, UTTERANCES)
        if sessions is None:
            self.sessions = SESSIONS
        else:
            chosen = sorted({int(s) for s in sessions})
            if not chosen or any(s not in SESSIONS for s in chosen):
                raise ValueError(f"sessions must be a non-empty subset of {list(SESSIONS)}, got {sessions!r}")
            self.sessions = tuple(chosen)

    # -- internals --------------------------------------------------------------------------------

    def _votes(self, cat: list[tuple[str, list[str]]]) -> tuple[list[float], float, float, int]:
        """(4-class vote mass, total mass, dropped mass, number of rater lines counted)."""
        votes = [0.0] * len(CLASSES)
        total = dropped = 0.0
        n_lines = 0
        for rater, labels in cat:
            if self.raters == "external" and not rater.startswith("E"):
                continue
            if not labels:
                continue
            n_lines += 1
            if self.multi_label == "first":
                weighted = [(labels[0], 1.0)]
            elif self.multi_label == "each":
                weighted = [(lab, 1.0) for lab in labels]
            else:
                weighted = [(lab, 1.0 / len(labels)) for lab in labels]
            for label, w in weighted:
                total += w
                cls = _LABEL_LOOKUP.get(label.casefold())
                if cls is None:
                    dropped += w
                else:
                    votes[_CLASS_INDEX[cls]] += w
        return votes, total, dropped, n_lines

    def _check_layout(self) -> None:
        root = self.root
        if not root.is_dir():
            raise _layout_error(f"dataset root {root} does not exist or is not a directory", root)
        for k in self.sessions:
            emo = root / f"Session{k}" / "dialog" / "EmoEvaluation"
            if not emo.is_dir():
                raise _layout_error(f"{emo} is missing (requested sessions {list(self.sessions)})", root)
            if not _dialog_files(emo):
                raise _layout_error(f"{emo} holds no <dialog>.txt label files", root)

    def _load(self) -> None:
        self._check_layout()
        root = self.root.resolve()
        records: list[Record] = []
        skipped: list[Skip] = []
        seen: set[str] = set()
        parsed_codes: Counter[str] = Counter()
        mass = {"kept": [0.0, 0.0], "all": [0.0, 0.0]}  # [total, dropped]
        n_dialogs = 0
        n_by_code_excluded = 0
        for k in self.sessions:
            dialog_dir = root / f"Session{k}" / "dialog"
            for emo_file in _dialog_files(dialog_dir / "EmoEvaluation"):
                dialog = emo_file.stem
                n_dialogs += 1
                blocks = parse_emo_evaluation(_read_text(emo_file))
                trans_file = dialog_dir / "transcriptions" / f"{dialog}.txt"
                transcripts = parse_transcription(_read_text(trans_file)) if trans_file.is_file() else {}
                for b in blocks:
                    if b.utt in seen:
                        log.warning("%s: duplicate block for %s", emo_file, b.utt)
                        skipped.append(Skip(b.utt, DUPLICATE, str(emo_file)))
                        continue
                    seen.add(b.utt)
                    parsed_codes[b.code] += 1
                    votes, total, dropped, n_lines = self._votes(b.cat)
                    mass["all"][0] += total
                    mass["all"][1] += dropped
                    name = _UTT_RE.match(b.utt)
                    if name is None:
                        skipped.append(Skip(b.utt, BAD_NAME, str(emo_file)))
                        continue
                    if math.fsum(votes) <= 0:
                        skipped.append(Skip(b.utt, NO_VOTE, str(emo_file)))
                        continue
                    if self.utterances == "four_class" and b.code not in FOUR_CLASS_CODES:
                        n_by_code_excluded += 1
                        continue
                    text = transcripts.get(b.utt, (0.0, 0.0, ""))[2]
                    if not text:
                        skipped.append(Skip(b.utt, NO_TRANSCRIPTION, str(trans_file)))
                        continue
                    wav = root / f"Session{k}" / "sentences" / "wav" / dialog / f"{b.utt}.wav"
                    if not wav.is_file():
                        skipped.append(Skip(b.utt, MISSING_AUDIO, str(wav)))
                        continue
                    mass["kept"][0] += total
                    mass["kept"][1] += dropped
                    ss, letter = name.group(1), name.group(3)
                    records.append(
                        Record(
                            id=b.utt,
                            audio_path=str(wav),
                            transcript=text,
                            votes=tuple(votes),
                            speaker=f"Ses{ss}{letter}",
                            session=f"Ses{ss}",
                            extra={
                                "code": b.code,
                                "dialog": dialog,
                                "start": b.start,
                                "end": b.end,
                                "vad": b.vad,
                                "gender": letter,
                                "n_raters": n_lines,
                            },
                        )
                    )
        records.sort(key=lambda r: r.id)
        skipped.sort(key=lambda s: s.id)

        def share(total_dropped: list[float]) -> float:
            total, dropped = total_dropped
            return dropped / total if total > 0 else 0.0

        self._records = records
        self._skipped = skipped
        self._stats = {
            "options": {
                "raters": self.raters,
                "multi_label": self.multi_label,
                "utterances": self.utterances,
                "sessions": list(self.sessions),
            },
            "n_records": len(records),
            "n_dialogs": n_dialogs,
            "n_parsed": sum(parsed_codes.values()),
            "n_excluded_by_code": n_by_code_excluded,
            "n_skipped": len(skipped),
            "skipped_by_reason": dict(sorted(Counter(s.reason for s in skipped).items())),
            "dropped_vote_mass_share": share(mass["kept"]),
            "dropped_vote_mass_share_all": share(mass["all"]),
            "utterances_by_code": dict(sorted(Counter(r.extra["code"] for r in records).items())),
            "parsed_by_code": dict(sorted(parsed_codes.items())),
            "records_by_session": dict(sorted(Counter(r.session for r in records).items())),
            "records_by_speaker": dict(sorted(Counter(r.speaker for r in records).items())),
            "records_by_majority": {c: sum(r.majority(CLASSES) == c for r in records) for c in CLASSES},
            "mean_raters": (sum(r.extra["n_raters"] for r in records) / len(records)) if records else 0.0,
            "total_duration_s": round(sum(r.extra["end"] - r.extra["start"] for r in records), 4),
        }

"""MSP-Podcast reader: every annotator's primary vote per clip, reduced to ``Record``s with soft labels.

MSP-Podcast (UT Dallas MSP lab) is licensed per request, so nothing here ships data; the reader parses a local
release laid out as in ``docs/msp-podcast-format.md``:

- ``Labels/labels_consensus.csv``: one row per clip (``FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,
  Split_Set``): the split, the speaker and the consensus code. Older releases name the folder ``labels`` or
  ``label`` and spell the file ``labels_concensus``; ``labels_consensus.json`` is read when no CSV is there.
- ``Labels/labels_detailed.csv``: every annotator of a clip, packed in one field (``FileName,EmoDetail``:
  ``WORKER00000001; Other-confused; Concerned,Confused; A:3.0; V:3.0; D:4.0; WORKER...``), or one row per
  annotator (``FileName,WorkerID,EmoClass_Major,EmoClass_Second,...``, v1.6 and v2.0), or
  ``labels_detailed.json`` (``{clip: {worker: {"EmoClass_Major": ..., "EmoClass_Second": ...}}}``).
- ``Audios/<clip>.wav`` and ``Transcripts/<clip>.txt``.

Soft labels count the annotators' primary votes over ``classes`` (default the 8 of the release: neutral,
happy, sad, angry, surprise, fear, disgust, contempt). A primary outside them (``Other-<free text>``, or one
of the 8 not selected) is an *outside* vote: dropped, the rest renormalised (``other_votes=drop``, the
default), or kept in the denominator as an explicit class ``other`` (``other_votes=keep``: the model then
predicts ``other`` too, so p(class) = votes for it / all annotators). Secondary emotions are ignored by
default; with ``secondary_weight`` = w > 0 each annotator's secondary emotions within ``classes``, other than
their own primary, add w each. Clips whose consensus is ``X`` (no agreement) keep their distribution unless
listed in ``drop_consensus``.

Order of the per-clip checks (the first that fails decides the ``Skip`` reason): unknown split -> not in a
used split (not a skip, only counted) -> unknown consensus code -> dropped by ``drop_consensus`` (counted) ->
unparseable labels_detailed entry -> no annotator votes -> no vote among the classes -> missing audio file. A
missing transcript is not a skip: the transcript is empty, counted. A labels_detailed entry without a
consensus row is skipped (its split is unknown).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from ambig.data.folds import balanced_speaker_groups
from ambig.data.parsed_corpus import ParsedCorpus
from ambig.data.records import Record, Skip

log = logging.getLogger(__name__)

CLASSES = ("neutral", "happy", "sad", "angry", "surprise", "fear", "disgust", "contempt")
OTHER = "other"
# Consensus codes of labels_consensus (EmoClass); O = other, X = no agreement (no plurality winner).
CODES = {
    "N": "neutral",
    "H": "happy",
    "S": "sad",
    "A": "angry",
    "U": "surprise",
    "F": "fear",
    "D": "disgust",
    "C": "contempt",
    "O": OTHER,
    "X": "no agreement",
}
SPLITS = ("Train", "Development", "Test1", "Test2", "Test3")
SPLIT_ALIASES = {"validation": "Development", "dev": "Development"}  # older releases say Validation
TEST_SPLITS = ("Test1", "Test2")  # Test3's labels are not released: never a test set
FOLD_METHODS = ("release", "speaker_kfold")
OTHER_VOTES = ("drop", "keep")

LABEL_DIRS = ("Labels", "labels", "label")
CONSENSUS_FILES = (
    "labels_consensus.csv",
    "labels_concensus.csv",
    "labels_consensus.json",
    "labels_concensus.json",
)
DETAILED_FILES = ("labels_detailed.csv", "labels_detailed.json")
AUDIO_DIRS = ("Audios", "Audio")
TRANSCRIPT_DIR = "Transcripts"
SOURCE_URL = "https://ecs.utdallas.edu/research/researchlabs/msp-lab/MSP-Podcast.html"

UNKNOWN_SPLIT = "unknown Split_Set"
UNKNOWN_CODE = "unknown consensus code"
NO_DETAILED = "no annotator votes in labels_detailed"
NO_CONSENSUS = "no row in labels_consensus"
UNPARSEABLE = "unparseable labels_detailed entry"
MISSING_AUDIO = "missing audio file"

_PRIMARY = {c: c for c in CLASSES}

_LAYOUT = """\
  MSP-Podcast/
    Labels/labels_consensus.csv     # FileName,EmoClass,EmoAct,EmoVal,EmoDom,SpkrID,Gender,Split_Set
    Labels/labels_detailed.csv      # FileName,EmoDetail (every annotator's votes)
    Audios/<clip>.wav               # MSP-PODCAST_0001_0008.wav ...
    Transcripts/<clip>.txt          # optional"""


class MSPPodcastLayoutError(FileNotFoundError):
    """The dataset root does not look like an MSP-Podcast release; the message says what to fix."""


def _layout_error(problem: str) -> MSPPodcastLayoutError:
    return MSPPodcastLayoutError(
        f"{problem}\nExpected an MSP-Podcast release laid out as\n{_LAYOUT}\n"
        "(older releases: label/ or labels/, labels_concensus.csv). MSP-Podcast is licensed by the UT Dallas "
        f"MSP lab on request ({SOURCE_URL}); then pass dataset.root=/path/to/MSP-Podcast or set "
        "MSP_PODCAST_ROOT."
    )


class Annotation(NamedTuple):  # a tuple: a release has over a million of them
    """One annotator's categorical judgement of a clip."""

    worker: str
    primary: str  # as written: "Neutral", "Other-confused", ...
    secondary: str  # as written, comma-separated (split_secondary), possibly empty


class ClipInfo(NamedTuple):
    """A clip's row of labels_consensus."""

    code: str
    split: str  # as written (normalised by the corpus)
    speaker: str  # SpkrID as written ("Unknown" for unknown speakers)
    gender: str
    attributes: tuple[float | None, float | None, float | None]  # EmoAct, EmoVal, EmoDom


def clip_id(file_name: str) -> str:
    """``MSP-PODCAST_0001_0008.wav`` -> ``MSP-PODCAST_0001_0008``."""
    name = file_name.strip()
    return name[:-4] if name.lower().endswith(".wav") else name


def _float(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _columns(header: Sequence[str], path: Path, wanted: Mapping[str, tuple[str, ...]]) -> dict[str, int]:
    """Column index per wanted field, matched case-insensitively against each field's accepted names."""
    lookup = {name.strip().lower(): i for i, name in enumerate(header)}
    out, missing = {}, []
    for field, names in wanted.items():
        index = next((lookup[n.lower()] for n in names if n.lower() in lookup), None)
        if index is None:
            missing.append("|".join(names))
        else:
            out[field] = index
    if missing:
        raise _layout_error(f"{path}: header {list(header)} lacks the column(s) {', '.join(missing)}")
    return out


CONSENSUS_COLUMNS = {
    "file": ("FileName", "File", "Filename"),
    "code": ("EmoClass",),
    "speaker": ("SpkrID", "SpeakerID", "Speaker_ID"),
    "gender": ("Gender",),
    "split": ("Split_Set", "Split", "Partition"),
}


def read_consensus(path: Path) -> dict[str, ClipInfo]:
    """clip id -> its labels_consensus row (CSV, or the JSON variant ``{file: {column: value}}``)."""
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        rows = (
            [
                name,
                *(
                    fields.get(c)
                    for c in ("EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set")
                ),
            ]
            for name, fields in data.items()
        )
        header = ["FileName", "EmoClass", "EmoAct", "EmoVal", "EmoDom", "SpkrID", "Gender", "Split_Set"]
    else:
        f = open(path, newline="", encoding="utf-8-sig")
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise _layout_error(f"{path} is empty")
        rows = reader
    col = _columns(header, path, CONSENSUS_COLUMNS)
    attribute_cols = [
        next((i for i, name in enumerate(header) if name.strip().lower() == a.lower()), None)
        for a in ("EmoAct", "EmoVal", "EmoDom")
    ]
    out: dict[str, ClipInfo] = {}
    try:
        for row in rows:
            if not row or not str(row[col["file"]] or "").strip():
                continue
            out[clip_id(str(row[col["file"]]))] = ClipInfo(
                code=str(row[col["code"]] or "").strip().upper(),
                split=str(row[col["split"]] or "").strip(),
                speaker=str(row[col["speaker"]] if row[col["speaker"]] is not None else "").strip(),
                gender=str(row[col["gender"]] or "").strip(),
                attributes=tuple(_float(row[i]) if i is not None else None for i in attribute_cols),
            )
    finally:
        if path.suffix != ".json":
            f.close()
    return out


def split_secondary(text: str) -> tuple[str, ...]:
    """``"Concerned,Confused"`` -> ``("Concerned", "Confused")`` (empty entries dropped)."""
    return tuple(s.strip() for s in str(text or "").split(",") if s.strip())


_ATTRIBUTES = ("A:", "V:", "D:")
# Annotation((worker, primary, secondary)) without the NamedTuple constructor's Python-level call: a release
# has over a million annotations, read in seconds.
_annotation = partial(tuple.__new__, Annotation)


def parse_emo_detail(text: str) -> list[Annotation]:
    """The annotators of one packed ``EmoDetail`` field; ValueError when it does not follow the format.

    Each annotator is ``<worker>; <primary>; <secondary, comma-separated or empty>; A:..; V:..; D:..;``; the
    secondary field may also be left out and the attribute fields may be missing (then the slower general
    reading below takes over from the fast one)."""
    tokens = text.split(";")
    if tokens and not tokens[-1].strip():
        tokens.pop()
    n = len(tokens)
    if n and n % 6 == 0 and all(tokens[i].lstrip().startswith("A:") for i in range(3, n, 6)):
        out = [
            _annotation((w.strip(), p.strip(), s.strip()))
            for w, p, s in zip(tokens[0::6], tokens[1::6], tokens[2::6], strict=True)
        ]
        if all(a.worker and not a.worker.startswith(_ATTRIBUTES) for a in out):
            return out
    tokens = [t.strip() for t in tokens]
    out = []
    i = 0
    while i < n:
        worker = tokens[i]
        if not worker or worker.startswith(_ATTRIBUTES):
            raise ValueError(f"expected an annotator id at field {i + 1}, found {worker!r}")
        if i + 1 >= n:
            raise ValueError(f"annotator {worker} has no primary emotion")
        primary, secondary = tokens[i + 1], ""
        i += 2
        if i < n and not tokens[i].startswith(_ATTRIBUTES):
            secondary = tokens[i]
            i += 1
        while i < n and tokens[i].startswith(_ATTRIBUTES):
            i += 1
        out.append(Annotation(worker, primary, secondary))
    if not out:
        raise ValueError("no annotator")
    return out


ROW_COLUMNS = {
    "file": ("FileName", "File", "Filename"),
    "worker": ("WorkerID", "Workers", "Worker", "Annotator"),
    "primary": ("EmoClass_Major", "EmoClass"),
    "secondary": ("EmoClass_Second", "EmoClass_Secondary"),
}


def read_detailed(path: Path) -> tuple[dict[str, list[Annotation]], dict[str, str]]:
    """(clip id -> annotations, clip id -> why its entry could not be parsed) from labels_detailed in any of
    the three variants (packed CSV, one row per annotator, JSON)."""
    votes: dict[str, list[Annotation]] = {}
    bad: dict[str, str] = {}
    if path.suffix == ".json":
        data = json.loads(path.read_text(encoding="utf-8"))
        for name, workers in data.items():
            cid = clip_id(name)
            if not isinstance(workers, Mapping):
                bad[cid] = f"{UNPARSEABLE}: not an object of annotators"
                continue
            votes[cid] = [
                Annotation(
                    str(w),
                    str(v.get("EmoClass_Major", "") or "").strip(),
                    str(v.get("EmoClass_Second") or ""),
                )
                for w, v in workers.items()
                if isinstance(v, Mapping)
            ]
        return votes, bad
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise _layout_error(f"{path} is empty")
        names = {h.strip().lower() for h in header}
        if "emodetail" in names:
            col = _columns(header, path, {"file": ROW_COLUMNS["file"], "detail": ("EmoDetail",)})
            for row in reader:
                if not row:
                    continue
                cid = clip_id(row[col["file"]])
                try:
                    votes[cid] = parse_emo_detail(row[col["detail"]] if len(row) > col["detail"] else "")
                except ValueError as err:
                    bad[cid] = f"{UNPARSEABLE}: {err}"
        else:
            col = _columns(header, path, ROW_COLUMNS)
            for row in reader:
                if not row:
                    continue
                cid = clip_id(row[col["file"]])
                second = row[col["secondary"]] if len(row) > col["secondary"] else ""
                votes.setdefault(cid, []).append(
                    Annotation(row[col["worker"]].strip(), row[col["primary"]].strip(), second)
                )
    return votes, bad


def find_labels(root: Path) -> tuple[Path, Path]:
    """(consensus file, detailed file) of a release, under any of the label folder names and spellings."""
    label_dir = next((root / d for d in LABEL_DIRS if (root / d).is_dir()), None)
    if label_dir is None:
        raise _layout_error(f"{root} has no label folder (looked for {', '.join(LABEL_DIRS)})")
    consensus = next((label_dir / n for n in CONSENSUS_FILES if (label_dir / n).is_file()), None)
    detailed = next((label_dir / n for n in DETAILED_FILES if (label_dir / n).is_file()), None)
    missing = [
        what
        for what, p in (("labels_consensus.csv", consensus), ("labels_detailed.csv", detailed))
        if p is None
    ]
    if missing:
        raise _layout_error(f"{label_dir} lacks {' and '.join(missing)} (or their older spellings / JSON)")
    return consensus, detailed


def read_labels(root: str | Path) -> tuple[dict[str, ClipInfo], dict[str, list[Annotation]], dict[str, str]]:
    """(consensus rows, annotations, unparseable entries) of the release at ``root``: the label files only."""
    consensus, detailed = find_labels(Path(root))
    return (read_consensus(consensus), *read_detailed(detailed))


def normalise_split(split: str) -> str | None:
    """The release's split name (Train, Development, Test1..3), or None when it is none of them."""
    text = split.strip()
    for name in SPLITS:
        if text.lower() == name.lower():
            return name
    return SPLIT_ALIASES.get(text.lower())


def _check_choice(name: str, value: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {list(choices)}")
    return value


class MSPPodcastCorpus(ParsedCorpus):
    """``dataset=msp_podcast``: soft-label records of a local MSP-Podcast release.

    ``folds``: ``release`` (default) uses the release's ``Split_Set``: each record's session is ``train``
    (Train), ``dev`` (Development) or ``test`` (``test_split``: Test1 or Test2); clips of the other splits are
    left out (counted). ``speaker_kfold`` deals the known speakers of Train + Development into ``n_folds``
    groups of about the same number of clips (``speakers1``..); clips of unknown speakers are left out of it
    (counted), since no fold could keep them apart.

    At load, a known speaker in two of the used release splits is an error (``allow_speaker_overlap=true``
    makes it a warning, counted in the card); unknown speakers are excepted and counted.
    """

    name = "msp_podcast"

    def __init__(
        self,
        root: str | Path,
        *,
        classes: Sequence[str] | None = None,
        other_votes: str = "drop",
        secondary_weight: float = 0.0,
        drop_consensus: Iterable[str] = (),
        folds: str = "release",
        test_split: str = "Test1",
        n_folds: int = 5,
        fold_seed: int = 0,
        allow_speaker_overlap: bool = False,
    ):
        if root is None or str(root) in ("", "???"):
            raise _layout_error("dataset.root is not set")
        self.root = Path(root).expanduser().absolute()
        chosen = tuple(CLASSES if classes is None else (str(c) for c in classes))
        unknown = [c for c in chosen if c not in CLASSES]
        if not chosen or unknown or len(set(chosen)) != len(chosen):
            raise ValueError(
                f"classes={list(chosen)}: expected distinct names among MSP-Podcast's {list(CLASSES)}"
                + (f" ({unknown} are not)" if unknown else "")
            )
        self.other_votes = _check_choice("other_votes", other_votes, OTHER_VOTES)
        self.selected = chosen
        self.classes = chosen + ((OTHER,) if self.other_votes == "keep" else ())
        self._index = {c: i for i, c in enumerate(self.classes)}
        self.secondary_weight = float(secondary_weight)
        if not math.isfinite(self.secondary_weight) or self.secondary_weight < 0:
            raise ValueError(f"secondary_weight={secondary_weight}: expected a finite weight >= 0")
        self.drop_consensus = tuple(str(c).strip().upper() for c in drop_consensus)
        bad_codes = [c for c in self.drop_consensus if c not in CODES]
        if bad_codes:
            raise ValueError(
                f"drop_consensus={list(drop_consensus)}: {bad_codes} not among the codes {list(CODES)}"
            )
        self.folds = _check_choice("folds", folds, FOLD_METHODS)
        normal = normalise_split(str(test_split))
        if normal == "Test3":
            raise ValueError(
                "test_split=Test3: Test3's labels are not released, it cannot be a test set; "
                "use Test1 or Test2"
            )
        if normal not in TEST_SPLITS:
            raise ValueError(f"test_split={test_split!r}; expected one of {list(TEST_SPLITS)}")
        self.test_split = normal
        if int(n_folds) < 2:
            raise ValueError(f"n_folds={n_folds}: expected at least 2")
        self.n_folds = int(n_folds)
        self.fold_seed = int(fold_seed)
        self.allow_speaker_overlap = bool(allow_speaker_overlap)

    def soft_votes(self, annotations: Sequence[Annotation]) -> tuple[list[float], dict[str, float]]:
        """(vote mass per class of ``self.classes``, counters) of one clip's annotations."""
        index = self._index
        votes = [0.0] * len(self.classes)
        counts = Counter()
        for a in annotations:
            primary = _PRIMARY.get(a.primary.strip().lower())
            if not a.primary.strip():
                counts["no_primary"] += 1
                continue
            counts["annotators"] += 1
            if primary in index:  # one of the selected classes (never `other`: no primary word maps to it)
                votes[index[primary]] += 1.0
            else:
                counts["outside"] += 1
                if primary is None and not a.primary.strip().lower().startswith("other"):
                    counts[f"unrecognised:{a.primary.strip()}"] += 1
                if self.other_votes == "keep":
                    votes[index[OTHER]] += 1.0
            if self.secondary_weight > 0:
                seen = set()
                for s in split_secondary(a.secondary):
                    cls = _PRIMARY.get(s.lower())
                    if cls in self.selected and cls != primary and cls not in seen:
                        seen.add(cls)
                        votes[index[cls]] += self.secondary_weight
                        counts["secondary_counted"] += 1
        return votes, counts

    # -- internals --------------------------------------------------------------------------------

    def _audio_dir(self) -> Path:
        for name in AUDIO_DIRS:
            if (self.root / name).is_dir():
                return self.root / name
        raise _layout_error(f"{self.root} has no {AUDIO_DIRS[0]}/ folder of wav files")

    def _used_splits(self) -> dict[str, str]:
        """release split -> session, for the splits this corpus reads."""
        if self.folds == "release":
            return {"Train": "train", "Development": "dev", self.test_split: "test"}
        return {"Train": "", "Development": ""}  # sessions are the speaker groups

    def _load(self) -> None:
        if not self.root.is_dir():
            raise _layout_error(f"dataset.root={self.root} does not exist or is not a directory")
        consensus, annotations, unparseable = read_labels(self.root)
        audio_dir = self._audio_dir()
        with os.scandir(audio_dir) as it:
            wavs = {e.name[:-4] for e in it if e.name.endswith(".wav") and e.is_file()}
        transcript_dir = self.root / TRANSCRIPT_DIR
        transcripts = set()
        if transcript_dir.is_dir():
            with os.scandir(transcript_dir) as it:
                transcripts = {e.name[:-4] for e in it if e.name.endswith(".txt") and e.is_file()}
        else:
            log.warning("msp_podcast: %s is missing; every transcript is empty", transcript_dir)
        used = self._used_splits()
        skipped: list[Skip] = []
        kept: list[tuple[str, ClipInfo, str, list[float], Counter]] = []
        excluded_by_split: Counter[str] = Counter()
        excluded_by_consensus: Counter[str] = Counter()
        unrecognised: Counter[str] = Counter()
        totals: Counter[str] = Counter()
        for cid in sorted((annotations.keys() | unparseable.keys()) - consensus.keys()):
            skipped.append(Skip(cid, NO_CONSENSUS))
        for cid, info in sorted(consensus.items()):
            split = normalise_split(info.split)
            if split is None:
                skipped.append(Skip(cid, f"{UNKNOWN_SPLIT} {info.split!r}"))
                continue
            if split not in used:  # first: Test3's rows carry no released label to check
                excluded_by_split[split] += 1
                continue
            if info.code not in CODES:
                skipped.append(Skip(cid, f"{UNKNOWN_CODE} {info.code!r}"))
                continue
            if info.code in self.drop_consensus:
                excluded_by_consensus[info.code] += 1
                continue
            if cid in unparseable:
                skipped.append(Skip(cid, unparseable[cid]))
                continue
            votes, counts = self.soft_votes(annotations.get(cid, []))
            if counts["annotators"] == 0:
                skipped.append(Skip(cid, NO_DETAILED))
                continue
            if math.fsum(votes) <= 0:
                skipped.append(Skip(cid, f"no vote among the {len(self.classes)} classes"))
                continue
            if cid not in wavs:
                skipped.append(Skip(cid, MISSING_AUDIO, str(audio_dir / f"{cid}.wav")))
                continue
            for key, n in counts.items():
                if key.startswith("unrecognised:"):
                    unrecognised[key.split(":", 1)[1]] += n
                else:
                    totals[key] += n
            kept.append((cid, info, split, votes, counts))
        if unrecognised:
            log.warning(
                "msp_podcast: %d primary votes name no known class and do not start with 'Other' (counted as "
                "outside votes): %s",
                sum(unrecognised.values()),
                dict(unrecognised.most_common(10)),
            )
        speaker_of = {cid: self._speaker(cid, info) for cid, info, *_ in kept}
        overlap = self._check_speakers(kept, speaker_of)
        if self.folds == "release":
            sessions = {cid: used[split] for cid, _, split, *_ in kept}
            unknown_left_out = 0
        else:
            known = [(cid, speaker_of[cid]) for cid, info, *_ in kept if not _unknown(info.speaker)]
            unknown_left_out = len(kept) - len(known)
            groups = balanced_speaker_groups(Counter(s for _, s in known), self.n_folds, self.fold_seed)
            sessions = {cid: groups[s] for cid, s in known}
        records: list[Record] = []
        missing_transcripts = 0
        for cid, info, split, votes, counts in kept:
            if cid not in sessions:
                continue
            if cid in transcripts:
                text = (transcript_dir / f"{cid}.txt").read_text(encoding="utf-8", errors="replace").strip()
            else:
                text = ""
                missing_transcripts += 1
            act, val, dom = info.attributes
            records.append(
                Record(
                    id=cid,
                    audio_path=str(audio_dir / f"{cid}.wav"),
                    transcript=text,
                    votes=tuple(votes),
                    speaker=speaker_of[cid],
                    session=sessions[cid],
                    extra={
                        "code": info.code,
                        "split": split,
                        "gender": info.gender,
                        "act": act,
                        "val": val,
                        "dom": dom,
                        "n_raters": counts["annotators"],
                        "outside_votes": counts["outside"],
                        "transcript_missing": cid not in transcripts,
                    },
                )
            )
        if missing_transcripts:
            log.info("msp_podcast: %d clips have no transcript (empty transcript used)", missing_transcripts)
        if not records:
            reasons = Counter(s.reason for s in skipped)
            raise _layout_error(f"dataset.root={self.root}: no usable clip ({dict(reasons)})")
        skipped.sort(key=lambda s: s.id)
        self._records, self._skipped = records, skipped
        n_votes = totals["annotators"]
        self._stats = {
            "options": {
                "classes": list(self.classes),
                "other_votes": self.other_votes,
                "secondary_weight": self.secondary_weight,
                "drop_consensus": list(self.drop_consensus),
                "folds": self.folds,
                "test_split": self.test_split if self.folds == "release" else None,
                "n_folds": self.n_folds if self.folds == "speaker_kfold" else None,
            },
            "n_labelled": len(consensus),
            "n_records": len(records),
            "records_by_split": dict(sorted(Counter(r.extra["split"] for r in records).items())),
            "records_by_session": dict(sorted(Counter(r.session for r in records).items())),
            "records_by_consensus": dict(sorted(Counter(r.extra["code"] for r in records).items())),
            "excluded_by_split": dict(sorted(excluded_by_split.items())),
            "excluded_by_consensus": dict(sorted(excluded_by_consensus.items())),
            "excluded_unknown_speaker": unknown_left_out,
            "n_skipped": len(skipped),
            "skipped_by_reason": dict(sorted(Counter(s.reason for s in skipped).items())),
            "outside_vote_share": totals["outside"] / n_votes if n_votes else 0.0,
            # the share of primary votes the soft labels leave out (0 when kept as class `other`)
            "dropped_vote_mass_share": (totals["outside"] / n_votes if n_votes else 0.0)
            if self.other_votes == "drop"
            else 0.0,
            "secondary_votes_counted": totals["secondary_counted"],
            "annotators_without_primary": totals["no_primary"],
            "unrecognised_primaries": dict(unrecognised.most_common(20)),
            "missing_transcripts": missing_transcripts,
            "unknown_speaker_clips": dict(
                sorted(Counter(r.extra["split"] for r in records if r.speaker.startswith("unknown:")).items())
            ),
            "speakers_in_two_splits": overlap,
            "mean_raters": sum(r.extra["n_raters"] for r in records) / len(records),
            "records_by_majority": {
                c: sum(r.majority(self.classes) == c for r in records) for c in self.classes
            },
        }

    @staticmethod
    def _speaker(cid: str, info: ClipInfo) -> str:
        return f"unknown:{cid}" if _unknown(info.speaker) else f"msp{info.speaker}"

    def _check_speakers(self, kept, speaker_of: Mapping[str, str]) -> list[str]:
        """Known speakers found in two of the used release splits (an error unless allowed)."""
        splits_of: dict[str, set[str]] = {}
        for cid, info, split, *_ in kept:
            if not _unknown(info.speaker):
                splits_of.setdefault(speaker_of[cid], set()).add(split)
        overlap = sorted(s for s, splits in splits_of.items() if len(splits) > 1)
        if overlap and self.folds == "release":
            detail = ", ".join(f"{s} ({'/'.join(sorted(splits_of[s]))})" for s in overlap[:10])
            message = (
                f"msp_podcast: {len(overlap)} known speakers are in two of the used splits: {detail}"
                + (" ..." if len(overlap) > 10 else "")
            )
            if not self.allow_speaker_overlap:
                raise ValueError(
                    message + "; the splits would not be speaker-independent. Set "
                    "dataset.corpus.allow_speaker_overlap=true to use them anyway, or dataset.folds.method="
                    "speaker_kfold for folds that are"
                )
            log.warning(message)
        return overlap


def _unknown(speaker: str) -> bool:
    return speaker.strip().lower() in ("", "unknown", "-1", "nan")

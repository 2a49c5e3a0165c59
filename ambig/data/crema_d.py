"""CREMA-D: 7,442 clips of 91 actors, six emotions, crowd-sourced votes per clip and modality.

Labels come from ``processedResults/tabulatedVotes.csv`` (vote counts per clip) and the actors' sex and
age from ``VideoDemographics.csv``. Both tables ship with the package (``ambig/assets/crema_d``,
byte-identical to the upstream release, ODbL), so ``load_annotations()`` works without the audio; the
corpus itself (``CremaDCorpus``) needs a checkout whose ``AudioWAV/`` holds the real wav files.

Folds are speaker-independent: every record's ``session`` is its actor's group (``actors1``..``actorsK``),
dealt so each group gets about the same number of female and male actors; see ``actor_groups``. With a
``split_file`` the session is instead ``train``/``dev``/``test`` per actor; use ``fixed_split`` for that.
"""

from __future__ import annotations

import csv
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from ambig.data.folds import FIXED_SPLITS as SPLITS
from ambig.data.records import Record, Skip

log = logging.getLogger(__name__)

CLASSES = ("neutral", "happy", "sad", "angry", "disgust", "fear")
CODES = {"N": "neutral", "H": "happy", "S": "sad", "A": "angry", "D": "disgust", "F": "fear"}
# Vote-count columns of tabulatedVotes.csv in CLASSES order.
VOTE_COLUMNS = tuple({name: code for code, name in CODES.items()}[c] for c in CLASSES)

# Third part of the file name: the emotion the actor was asked to portray.
INTENDED = {"ANG": "angry", "DIS": "disgust", "FEA": "fear", "HAP": "happy", "NEU": "neutral", "SAD": "sad"}
# Fourth part: the requested intensity (low, medium, high, unspecified).
INTENSITIES = ("LO", "MD", "HI", "XX")
# Second part: the sentence spoken, text as listed in the upstream README ("Filename labeling conventions").
SENTENCES = {
    "IEO": "It's eleven o'clock",
    "TIE": "That is exactly what happened",
    "IOM": "I'm on my way to the meeting",
    "IWW": "I wonder what this is about",
    "TAI": "The airplane is almost full",
    "MTI": "Maybe tomorrow it will be cold",
    "IWL": "I would like a new alarm clock",
    "ITH": "I think I have a doctor's appointment",
    "DFA": "Don't forget a jacket",
    "ITS": "I think I've seen this before",
    "TSI": "The surface is slick",
    "WSI": "We'll stop in a couple of minutes",
}

# The first (unnamed) column of tabulatedVotes.csv is 100000 * queryType + clip number (upstream
# tabulateVotesV2.r); the README defines queryType 1 = voice only, 2 = face only, 3 = audio-visual.
MODALITIES = {"voice": 1, "face": 2, "multimodal": 3}

VOTES_TABLE = "processedResults/tabulatedVotes.csv"
DEMOGRAPHICS_TABLE = "VideoDemographics.csv"
TABLES = (VOTES_TABLE, DEMOGRAPHICS_TABLE)
AUDIO_DIR = "AudioWAV"

# Known bad clips from the upstream README. The four below were shown to raters as broken MP3/FLV files
# ("they are most likely what the raters heard"): silent, zero-length, or a one-minute file holding every
# emotion. Their votes in every modality therefore describe the broken presentation, not the clip, and
# 1076_MTI_SAD_XX's WAV is silent too; we drop them (Skip naming the README note).
KNOWN_BAD = {
    "1076_MTI_NEU_XX": "MP3 and FLV very short, no audio; votes do not describe the WAV",
    "1076_MTI_SAD_XX": "no audio in MP3, FLV or WAV",
    "1064_TIE_SAD_XX": "presented file had no duration; votes do not describe the clip",
    "1064_IEO_DIS_MD": "presented file was 1 minute long with every emotion; votes do not describe the clip",
}
# FLV files that "were missing audio until Dec. 16, 2020" (upstream README): their audio-visual votes were
# given without sound, so they are dropped from the multimodal modality only (voice used the MP3s).
SILENT_FLV = frozenset(
    """1005_IWW_DIS_XX 1007_IWL_HAP_XX 1037_DFA_ANG_XX 1037_WSI_DIS_XX 1037_WSI_FEA_XX 1037_WSI_SAD_XX
    1039_IWL_SAD_XX 1039_WSI_SAD_XX 1045_ITS_HAP_XX 1045_WSI_DIS_XX 1046_TIE_HAP_XX 1058_IEO_SAD_HI
    1061_TIE_ANG_XX 1063_IEO_DIS_HI 1067_IEO_FEA_LO 1068_IEO_SAD_MD 1070_IWL_SAD_XX 1071_WSI_ANG_XX
    1072_WSI_ANG_XX 1073_MTI_SAD_XX 1075_IWW_DIS_XX 1075_WSI_DIS_XX 1076_ITH_HAP_XX 1076_ITH_NEU_XX
    1076_TAI_NEU_XX 1079_IWL_ANG_XX 1079_TAI_DIS_XX 1091_IWW_FEA_XX""".split()
)

SOURCE_URL = "https://github.com/CheyneyComputerScience/CREMA-D"
_NAME = re.compile(r"^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$")
_LFS_MAGIC = b"version https://git-lfs"


class CremaDLayoutError(FileNotFoundError):
    """The CREMA-D checkout is missing or incomplete; the message names the files expected and the source."""

    def __init__(self, problem: str):
        super().__init__(
            f"{problem}\n"
            f"Expected a CREMA-D checkout with {AUDIO_DIR}/<clip>.wav (7442 files, e.g. "
            f"{AUDIO_DIR}/1001_DFA_ANG_XX.wav); {VOTES_TABLE} and {DEMOGRAPHICS_TABLE} are optional "
            "(the copies shipped in ambig/assets/crema_d are used otherwise).\n"
            f"CREMA-D is public (ODbL 1.0) at {SOURCE_URL}; its {AUDIO_DIR} is stored with git-lfs "
            f"(git lfs clone {SOURCE_URL}.git). Then pass dataset.root=/path/to/CREMA-D."
        )


def annotation_dir() -> Path:
    """The annotation tables shipped with the package (``ambig/assets/crema_d``)."""
    return Path(str(resources.files("ambig").joinpath("assets", "crema_d")))


def _has_tables(directory: Path) -> bool:
    return all((directory / t).is_file() for t in TABLES)


def _resolve_annotations(root: Path | None, annotations: str | Path | None) -> Path:
    """``annotations`` if given (must hold the tables), else root's own tables, else the shipped copy."""
    if annotations is not None:
        directory = Path(annotations).expanduser()
        missing = [t for t in TABLES if not (directory / t).is_file()]
        if missing:
            raise CremaDLayoutError(f"annotation directory {directory} lacks {', '.join(missing)}")
        return directory
    if root is not None and _has_tables(root):
        return root
    return annotation_dir()


def _read_demographics(directory: Path) -> dict[str, dict]:
    with open(directory / DEMOGRAPHICS_TABLE, newline="", encoding="utf-8") as f:
        return {
            row["ActorID"].strip(): {"sex": row["Sex"].strip(), "age": int(row["Age"])}
            for row in csv.DictReader(f)
        }


def parse_name(name: str) -> dict[str, str]:
    """``1001_DFA_ANG_XX`` -> actor, sentence, intended emotion and intensity; ValueError if malformed."""
    m = _NAME.match(name)
    if not m or m[2] not in SENTENCES or m[3] not in INTENDED or m[4] not in INTENSITIES:
        raise ValueError(f"not a CREMA-D clip name: {name!r} (expected e.g. 1001_DFA_ANG_XX)")
    return {"actor": m[1], "sentence": m[2], "intended": INTENDED[m[3]], "intensity": m[4]}


def _check_modality(modality: str) -> int:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {tuple(MODALITIES)}")
    return MODALITIES[modality]


def _read_annotations(
    root: Path | None,
    *,
    modality: str,
    annotations: str | Path | None,
    drop_known_bad: bool,
) -> tuple[list[Record], list[Skip], dict[str, str]]:
    """Records (session left empty) and skips of one modality, plus actor -> sex for every actor seen."""
    query_type = _check_modality(modality)
    directory = _resolve_annotations(root, annotations)
    demographics = _read_demographics(directory)
    records: list[Record] = []
    skipped: list[Skip] = []
    with open(directory / VOTES_TABLE, newline="", encoding="utf-8") as f:
        header = next(csv.reader([f.readline()]))
        col = {name: i for i, name in enumerate(header)}
        missing = [c for c in (*VOTE_COLUMNS, "fileName", "numResponses") if c not in col]
        if missing or header[0] != "":
            raise ValueError(f"{directory / VOTES_TABLE}: unexpected header, missing columns {missing}")
        # Only lines of this modality reach the CSV parser (the id's first digit is the query type).
        wanted = (f'"{query_type}', str(query_type))
        for values in csv.reader(line for line in f if line.startswith(wanted)):
            if int(values[0]) // 100000 != query_type:
                continue
            row = {name: values[i] for name, i in col.items()}
            name = row["fileName"].strip()
            if drop_known_bad and name in KNOWN_BAD:
                skipped.append(Skip(name, f"known bad clip (upstream README): {KNOWN_BAD[name]}"))
                continue
            if drop_known_bad and modality == "multimodal" and name in SILENT_FLV:
                skipped.append(
                    Skip(name, "known bad clip (upstream README): audio-visual file rated without audio")
                )
                continue
            votes = tuple(float(int(row[c])) for c in VOTE_COLUMNS)
            if sum(votes) <= 0:
                skipped.append(Skip(name, "no votes"))
                continue
            parts = parse_name(name)
            actor = parts["actor"]
            if actor not in demographics:
                raise ValueError(f"{name}: actor {actor} missing from {directory / DEMOGRAPHICS_TABLE}")
            extra = {
                **parts,
                "sex": demographics[actor]["sex"],
                "age": demographics[actor]["age"],
                "n_responses": int(row["numResponses"]),
                "modality": modality,
            }
            audio = str(root / AUDIO_DIR / f"{name}.wav") if root is not None else ""
            records.append(Record(name, audio, SENTENCES[parts["sentence"]], votes, actor, "", extra=extra))
    records.sort(key=lambda r: r.id)
    sexes = {r.speaker: r.extra["sex"] for r in records}
    return records, skipped, sexes


def actor_groups(actors_with_sex: Mapping[str, str], n_folds: int, seed: int) -> dict[str, str]:
    """Deal actors into ``n_folds`` groups (``actors1``..), balanced by sex, reproducible from ``seed``.

    Each sex's actors (sorted, then shuffled with ``random.Random(seed)``) are dealt round-robin, the
    second sex continuing where the first stopped, so every group's count per sex and in total differs from
    any other group's by at most one. Names are zero-padded when ``n_folds >= 10`` so they sort by number.
    """
    if not 2 <= n_folds <= len(actors_with_sex):
        raise ValueError(
            f"n_folds={n_folds} must be between 2 and the number of actors ({len(actors_with_sex)})"
        )
    width = len(str(n_folds))
    rng = random.Random(seed)
    groups: dict[str, str] = {}
    dealt = 0
    for sex in sorted(set(actors_with_sex.values())):
        members = sorted(a for a, s in actors_with_sex.items() if s == sex)
        rng.shuffle(members)
        for actor in members:
            groups[actor] = f"actors{dealt % n_folds + 1:0{width}d}"
            dealt += 1
    return dict(sorted(groups.items()))


def _with_sessions(records: Sequence[Record], sessions: Mapping[str, str]) -> list[Record]:
    return [
        Record(r.id, r.audio_path, r.transcript, r.votes, r.speaker, sessions[r.speaker], r.cot, r.extra)
        for r in records
    ]


def load_annotations(
    root: str | Path | None = None,
    *,
    modality: str = "voice",
    annotations: str | Path | None = None,
    n_folds: int = 5,
    fold_seed: int = 0,
    drop_known_bad: bool = True,
) -> list[Record]:
    """Labels only (no audio read or checked): one Record per clip of ``modality``, sorted by id.

    Tables come from ``annotations`` if given, else from ``root`` if it holds them, else from the shipped
    copy. ``audio_path`` is ``root/AudioWAV/<clip>.wav`` when ``root`` is given, else ``""``. Sessions are
    the ``actor_groups`` of all actors in the table. Clips with zero votes and (unless ``drop_known_bad``
    is False) the README's known bad clips are left out.
    """
    root_path = Path(root).expanduser().absolute() if root is not None else None
    records, _, sexes = _read_annotations(
        root_path, modality=modality, annotations=annotations, drop_known_bad=drop_known_bad
    )
    return _with_sessions(records, actor_groups(sexes, n_folds, fold_seed))


def read_split_file(path: str | Path) -> dict[str, str]:
    """actor -> split from a CSV or TSV with columns ``actor`` and ``split`` (train, dev or test)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"split file {path} not found")
    text = path.read_text(encoding="utf-8")
    delimiter = "\t" if "\t" in text.splitlines()[0] else ","
    reader = csv.DictReader(text.splitlines(), delimiter=delimiter)
    fields = {(name or "").strip().lower(): name for name in reader.fieldnames or []}
    if "actor" not in fields or "split" not in fields:
        raise ValueError(f"split file {path}: needs columns 'actor' and 'split', found {reader.fieldnames}")
    splits: dict[str, str] = {}
    for line, row in enumerate(reader, start=2):
        actor = (row[fields["actor"]] or "").strip()
        split = (row[fields["split"]] or "").strip().lower()
        if split not in SPLITS:
            raise ValueError(f"split file {path}, line {line}: split {split!r} not in {SPLITS}")
        if splits.get(actor, split) != split:
            raise ValueError(
                f"split file {path}, line {line}: actor {actor} is in {splits[actor]} and {split}"
            )
        splits[actor] = split
    return splits


def _audio_problem(entry: os.DirEntry | None) -> str | None:
    """Why a wav cannot be used (missing, empty, an unfetched git-lfs pointer), or None."""
    if entry is None:
        return "missing audio file"
    size = entry.stat().st_size
    if size == 0:
        return "empty audio file"
    if size < 1024:
        with open(entry.path, "rb") as f:
            if f.read(len(_LFS_MAGIC)) == _LFS_MAGIC:
                return "git-lfs pointer, not audio (run `git lfs pull` in the CREMA-D checkout)"
    return None


class CremaDCorpus:
    """`dataset=crema_d`: records of the clips under ``root/AudioWAV`` with their votes in ``modality``.

    ``session`` is the fold unit. By default it is the actor's group from ``actor_groups`` over the actors
    that have usable audio, so ``leave_one_unit_out(records, fold, unit="session", val_unit="speaker",
    n_val=...)`` is a speaker-independent ``n_folds``-fold split. With ``split_file`` (columns actor,split)
    it is ``test``/``dev`` for the actors listed so and ``train`` for all others: a fixed split, taken with
    ``fixed_split(records)`` (not ``leave_one_unit_out``, which would draw validation at random).
    """

    name = "crema_d"
    classes = CLASSES

    def __init__(
        self,
        root: str | Path,
        *,
        modality: str = "voice",
        n_folds: int = 5,
        fold_seed: int = 0,
        split_file: str | Path | None = None,
        annotations: str | Path | None = None,
    ):
        if root is None or str(root) in ("", "???"):
            raise CremaDLayoutError("dataset.root is not set")
        self.root = Path(root).expanduser().absolute()
        if not self.root.is_dir():
            raise CremaDLayoutError(f"dataset.root={self.root} does not exist")
        if not (self.root / AUDIO_DIR).is_dir():
            raise CremaDLayoutError(f"dataset.root={self.root} has no {AUDIO_DIR}/ directory")
        _check_modality(modality)
        self.modality = modality
        self.n_folds = n_folds
        self.fold_seed = fold_seed
        self.split_file = Path(split_file).expanduser() if split_file is not None else None
        self.annotations = annotations
        self._records: list[Record] | None = None
        self._skipped: list[Skip] = []

    def records(self) -> list[Record]:
        if self._records is None:
            self._records, self._skipped = self._load()
        return list(self._records)

    @property
    def skipped(self) -> list[Skip]:
        """Clips left out (no votes, known bad, missing or unfetched audio), after ``records()`` ran."""
        self.records()
        return list(self._skipped)

    def _load(self) -> tuple[list[Record], list[Skip]]:
        labelled, skipped, _ = _read_annotations(
            self.root, modality=self.modality, annotations=self.annotations, drop_known_bad=True
        )
        with os.scandir(self.root / AUDIO_DIR) as it:
            wavs = {e.name[:-4]: e for e in it if e.name.endswith(".wav") and e.is_file()}
        kept = []
        for r in labelled:
            problem = _audio_problem(wavs.get(r.id))
            if problem is None:
                kept.append(r)
            else:
                skipped.append(Skip(r.id, problem, r.audio_path))
        if not kept:
            reasons = Counter(s.reason for s in skipped)
            raise CremaDLayoutError(
                f"dataset.root={self.root}: no usable clip in {AUDIO_DIR}/ ({dict(reasons)})"
            )
        if self.split_file is not None:
            splits = read_split_file(self.split_file)
            actors = {r.speaker for r in kept}
            absent = sorted(set(splits) - actors)
            if absent:
                log.warning("split file %s lists actors without usable clips: %s", self.split_file, absent)
            if not any(splits.get(a) == "test" for a in actors):
                raise ValueError(f"split file {self.split_file}: no test actor has usable clips")
            sessions = {a: splits.get(a, "train") for a in actors}
        else:
            sessions = actor_groups({r.speaker: r.extra["sex"] for r in kept}, self.n_folds, self.fold_seed)
        if skipped:
            log.info(
                "crema_d: %d clips kept, %d skipped (%s)",
                len(kept),
                len(skipped),
                dict(Counter(s.reason for s in skipped)),
            )
        return _with_sessions(kept, sessions), sorted(skipped, key=lambda s: s.id)

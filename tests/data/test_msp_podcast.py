"""MSP-Podcast reader: the release-format fixture parsed into records, soft labels checked by hand, splits,
skips, layouts and the card."""

import csv
import logging
import shutil
from collections import Counter
from pathlib import Path

import pytest

from ambig.data.fixtures.msp_podcast import MISSING_TRANSCRIPT, MISSING_WAV, write_msp_podcast_fixture
from ambig.data.folds import balanced_speaker_groups, make_split
from ambig.data.inspect import card
from ambig.data.msp_podcast import (
    CLASSES,
    MSPPodcastCorpus,
    MSPPodcastLayoutError,
    parse_emo_detail,
    read_labels,
    split_secondary,
)

MIXED = "MSP-PODCAST_0001_0001"  # N N S Other N; secondaries Neutral | Angry,Frustrated | Sad,Concerned | ...
TIE = "MSP-PODCAST_0001_0002"  # H H S S U (consensus X); secondaries Excited | - | Dissapointed | Sad | Happy
OTHERS = "MSP-PODCAST_0002_0003"  # Other x3, Contempt, Disgust (consensus O)
ALL_OUTSIDE = "MSP-PODCAST_0002_0004"  # five Other-... votes
THREE_PART = "MSP-PODCAST_0895_0265_0001"


def dist(record, classes=CLASSES) -> dict:
    return {c: p for c, p in zip(classes, record.soft_label, strict=True) if p > 0}


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    root = tmp_path_factory.mktemp("msp")
    return {
        layout: write_msp_podcast_fixture(root / layout, layout=layout)
        for layout in ("old", "v1.12", "rows", "json")
    }


def by_id(corpus) -> dict:
    return {r.id: r for r in corpus.records()}


def test_the_fixture_parses_into_records_skips_and_splits(releases):
    corpus = MSPPodcastCorpus(releases["old"])
    records = by_id(corpus)
    assert {s.id: s.reason for s in corpus.skipped} == {
        ALL_OUTSIDE: "no vote among the 8 classes",
        MISSING_WAV: "missing audio file",
    }
    assert corpus.classes == CLASSES
    stats = corpus.card_stats()
    # Train: 15 + 2 unknown + 6 special - 2 skipped = 21; Development (written "Validation"): 8;
    # Test1: 5 + 1 unknown + 1 special
    assert stats["records_by_split"] == {"Train": 21, "Development": 8, "Test1": 7}
    assert {r.session for r in records.values() if r.extra["split"] == "Development"} == {"dev"}
    assert stats["excluded_by_split"] == {"Test2": 4, "Test3": 3}
    assert stats["unknown_speaker_clips"] == {"Train": 2, "Test1": 1}
    unknown = [r.speaker for r in records.values() if r.speaker.startswith("unknown:")]
    assert len(unknown) == len(set(unknown)) == 3  # each unknown clip its own speaker, never merged
    assert records[THREE_PART].session == "test" and records[THREE_PART].speaker == "msp6"
    assert records[MISSING_TRANSCRIPT].transcript == "" and stats["missing_transcripts"] == 1
    assert records[MIXED].transcript and records[MIXED].audio_path.endswith(f"Audios/{MIXED}.wav")
    assert records[MIXED].extra["n_raters"] == 5 and records[MIXED].extra["outside_votes"] == 1


def test_soft_labels_by_hand(releases):
    default = by_id(MSPPodcastCorpus(releases["old"]))
    assert dist(default[MIXED]) == pytest.approx({"neutral": 3 / 4, "sad": 1 / 4})
    assert dist(default[TIE]) == pytest.approx({"happy": 2 / 5, "sad": 2 / 5, "surprise": 1 / 5})
    assert dist(default[OTHERS]) == pytest.approx({"contempt": 1 / 2, "disgust": 1 / 2})
    assert default[TIE].extra["code"] == "X" and default[OTHERS].extra["code"] == "O"

    keep = MSPPodcastCorpus(releases["old"], other_votes="keep")
    assert keep.classes == (*CLASSES, "other")
    kept = by_id(keep)
    assert dist(kept[MIXED], keep.classes) == pytest.approx({"neutral": 3 / 5, "sad": 1 / 5, "other": 1 / 5})
    assert dist(kept[OTHERS], keep.classes) == pytest.approx(
        {"other": 3 / 5, "contempt": 1 / 5, "disgust": 1 / 5}
    )
    assert dist(kept[ALL_OUTSIDE], keep.classes) == {"other": 1.0}  # its distribution exists now
    assert keep.card_stats()["dropped_vote_mass_share"] == 0.0

    # w = 0.5 per secondary within the classes, not the annotator's own primary:
    # MIXED: Angry (2nd annotator) counts; Neutral (1st, own primary), Sad (3rd, own primary) do not.
    weighted = by_id(MSPPodcastCorpus(releases["old"], secondary_weight=0.5))
    assert dist(weighted[MIXED]) == pytest.approx({"neutral": 3 / 4.5, "sad": 1 / 4.5, "angry": 0.5 / 4.5})
    # TIE: Happy (the Surprise voter's) counts; Excited, Dissapointed are not classes, Sad is own primary.
    assert dist(weighted[TIE]) == pytest.approx({"happy": 2.5 / 5.5, "sad": 2 / 5.5, "surprise": 1 / 5.5})

    four = ("neutral", "happy", "sad", "angry")
    subset = MSPPodcastCorpus(releases["old"], classes=list(four))
    records = by_id(subset)
    assert subset.classes == four
    assert dist(records[TIE], four) == pytest.approx({"happy": 1 / 2, "sad": 1 / 2})
    assert {s.id: s.reason for s in subset.skipped}[OTHERS] == "no vote among the 4 classes"


def test_no_agreement_clips_are_kept_unless_dropped(releases):
    default = MSPPodcastCorpus(releases["old"])
    n_x = sum(r.extra["code"] == "X" for r in default.records())
    assert n_x >= 2
    dropped = MSPPodcastCorpus(releases["old"], drop_consensus=["X"])
    assert not any(r.extra["code"] == "X" for r in dropped.records())
    assert len(dropped.records()) == len(default.records()) - n_x
    assert dropped.card_stats()["excluded_by_consensus"] == {"X": n_x}
    with pytest.raises(ValueError, match=r"drop_consensus=\['Z'\]"):
        MSPPodcastCorpus(releases["old"], drop_consensus=["Z"])


def test_every_layout_variant_reads_the_same_records(releases):
    def comparable(path):
        out = []
        for r in MSPPodcastCorpus(path).records():
            d = r.to_json()
            d["audio_path"] = Path(d["audio_path"]).name
            out.append(d)
        return out

    old = comparable(releases["old"])
    for layout in ("v1.12", "rows", "json"):
        assert comparable(releases[layout]) == old, layout


def test_test_split_and_test3(releases):
    test2 = MSPPodcastCorpus(releases["v1.12"], test_split="Test2")
    split = make_split(test2.records(), 1, method="release", n_folds=5, n_val=20)
    assert {r.extra["split"] for r in split.test} == {"Test2"} and len(split.test) == 4
    assert {r.extra["split"] for r in split.train} == {"Train"}
    assert {r.extra["split"] for r in split.val} == {"Development"}
    assert test2.card_stats()["excluded_by_split"] == {"Test1": 7, "Test3": 3}
    with pytest.raises(ValueError, match="Test3's labels are not released"):
        MSPPodcastCorpus(releases["v1.12"], test_split="Test3")
    with pytest.raises(ValueError, match="test_split='Train'"):
        MSPPodcastCorpus(releases["v1.12"], test_split="Train")


def test_a_known_speaker_in_two_splits_is_refused_unless_allowed(releases, tmp_path, caplog):
    release = tmp_path / "MSP-Podcast"
    shutil.copytree(releases["v1.12"], release)
    consensus = release / "Labels" / "labels_consensus.csv"
    rows = list(csv.reader(consensus.open()))
    for row in rows[1:]:  # speaker 4's clips: one of them moved to Train
        if row[5] == "4":
            row[7] = "Train"
            break
    for row in rows[1:]:  # unknown speakers in every split are fine
        if row[5] == "Unknown":
            row[7] = "Development"
    with consensus.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with pytest.raises(
        ValueError, match=r"1 known speakers are in two of the used splits: msp4 \(Development/Train\)"
    ):
        MSPPodcastCorpus(release).records()
    with caplog.at_level(logging.WARNING, logger="ambig.data.msp_podcast"):
        allowed = MSPPodcastCorpus(release, allow_speaker_overlap=True)
        assert allowed.card_stats()["speakers_in_two_splits"] == ["msp4"]
    assert "msp4" in caplog.text


def test_speaker_kfold_over_train_and_development(releases):
    corpus = MSPPodcastCorpus(releases["old"], folds="speaker_kfold", n_folds=5)
    records = corpus.records()
    assert {r.extra["split"] for r in records} == {"Train", "Development"}
    assert corpus.card_stats()["excluded_unknown_speaker"] == 2
    assert not any(r.speaker.startswith("unknown:") for r in records)
    assert sorted({r.session for r in records}) == [f"speakers{k}" for k in range(1, 6)]
    speakers_seen = set()
    for fold in range(1, 6):
        split = make_split(records, fold, method="speaker_kfold", n_folds=5, n_val=1)
        train, val, test = ({r.speaker for r in part} for part in (split.train, split.val, split.test))
        assert not (train & val or train & test or val & test)
        assert len(split.train) + len(split.val) + len(split.test) == len(records)
        speakers_seen |= test
    assert speakers_seen == {r.speaker for r in records}  # every speaker is tested once
    with pytest.raises(ValueError, match="fold 6 out of range"):
        make_split(records, 6, method="speaker_kfold", n_folds=5, n_val=1)


def test_balanced_speaker_groups():
    counts = {"a": 10, "b": 7, "c": 5, "d": 3, "e": 2}
    groups = balanced_speaker_groups(counts, 2, seed=0)
    assert set(groups) == set(counts)
    load = Counter()
    for speaker, group in groups.items():
        load[group] += counts[speaker]
    # largest first to the lighter group: a -> 1 (10), b -> 2 (7), c -> 2 (12), d -> 1 (13), e -> 2 (14)
    assert dict(load) == {"speakers1": 13, "speakers2": 14}
    assert balanced_speaker_groups(counts, 2, seed=0) == groups
    with pytest.raises(ValueError, match="n_folds=6"):
        balanced_speaker_groups(counts, 6, seed=0)


def test_parse_emo_detail():
    text = (
        "WORKER00000001; Other-confused; Concerned,Confused; A:3.000000; V:3.000000; D:4.000000; "
        "WORKER00000018; Neutral; ; A:1.0; V:4.0; D:2.0; W3; Sad; A:1; V:1; D:1"
    )
    a, b, c = parse_emo_detail(text)
    assert a == ("WORKER00000001", "Other-confused", "Concerned,Confused")
    assert split_secondary(a.secondary) == ("Concerned", "Confused")
    assert b == ("WORKER00000018", "Neutral", "") and split_secondary(" , ") == ()
    assert c == ("W3", "Sad", "")  # secondary field left out, no final ';'
    for bad in ("", "A:1; V:2;", "WORKER1"):
        with pytest.raises(ValueError):
            parse_emo_detail(bad)


def test_unparseable_rows_and_unknown_words_are_reported(releases, tmp_path, caplog):
    release = tmp_path / "MSP-Podcast"
    shutil.copytree(releases["v1.12"], release)
    detailed = release / "Labels" / "labels_detailed.csv"
    rows = list(csv.reader(detailed.open()))
    rows[1][1] = "A:1.0; V:2.0;"  # no annotator
    rows[2][1] = rows[2][1].replace("; Neutral;", "; Neutrall;", 1).replace("; Happy;", "; Happpy;", 1)
    with detailed.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    with caplog.at_level(logging.WARNING, logger="ambig.data.msp_podcast"):
        corpus = MSPPodcastCorpus(release)
        skips = {s.id: s.reason for s in corpus.skipped}
    first = rows[1][0][:-4]
    assert skips[first].startswith("unparseable labels_detailed entry: expected an annotator id")
    typos = corpus.card_stats()["unrecognised_primaries"]
    assert typos and set(typos) <= {"Neutrall", "Happpy"}
    assert "do not start with 'Other'" in caplog.text


def test_layout_errors_name_what_is_missing_and_where_the_corpus_comes_from(releases, tmp_path):
    with pytest.raises(MSPPodcastLayoutError, match="(?s)does not exist.*MSP lab"):
        MSPPodcastCorpus(tmp_path / "nowhere").records()
    release = tmp_path / "MSP-Podcast"
    shutil.copytree(releases["v1.12"], release)
    (release / "Labels" / "labels_detailed.csv").unlink()
    with pytest.raises(MSPPodcastLayoutError, match="lacks labels_detailed.csv"):
        MSPPodcastCorpus(release).records()
    shutil.rmtree(release / "Labels")
    with pytest.raises(MSPPodcastLayoutError, match="no label folder"):
        read_labels(release)
    with pytest.raises(MSPPodcastLayoutError, match="dataset.root is not set"):
        MSPPodcastCorpus(None)
    with pytest.raises(ValueError, match="classes=.*'calm'"):
        MSPPodcastCorpus(releases["old"], classes=["neutral", "calm"])
    with pytest.raises(ValueError, match="other_votes='ignore'"):
        MSPPodcastCorpus(releases["old"], other_votes="ignore")


def test_the_dataset_card(releases):
    corpus = MSPPodcastCorpus(releases["old"])
    out = card(corpus, {"method": "release", "n_folds": 5, "n_val": 20}, seed=0, n_folds=1, check_audio=True)
    assert out["clips"] == 36 and out["fold_sizes"]["1"] == {"train": 21, "val": 8, "test": 7}
    assert out["skipped_by_reason"] == {"no vote among the 8 classes": 1, "missing audio file": 1}
    assert out["corpus_stats"]["dropped_vote_mass_share"] > 0


def test_unused_splits_are_not_checked_for_a_consensus_code(releases, tmp_path):
    release = tmp_path / "MSP-Podcast"
    shutil.copytree(releases["v1.12"], release)
    consensus = release / "Labels" / "labels_consensus.csv"
    rows = list(csv.reader(consensus.open()))
    for row in rows[1:]:
        if row[7] == "Test3":
            row[1] = ""  # Test3's labels are not released
    rows[1][1] = "Q"  # a used clip with a code the release does not have
    with consensus.open("w", newline="") as f:
        csv.writer(f).writerows(rows)
    corpus = MSPPodcastCorpus(release)
    skips = {s.id: s.reason for s in corpus.skipped}
    assert skips[rows[1][0][:-4]] == "unknown consensus code 'Q'"
    assert not any("consensus code ''" in r for r in skips.values())
    assert corpus.card_stats()["excluded_by_split"]["Test3"] == 3

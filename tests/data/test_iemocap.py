"""IEMOCAPCorpus on the invented release-format fixture; expected votes are computed by hand below."""

from __future__ import annotations

import json
import shutil

import pytest
import soundfile as sf

from ambig.data.fixtures.iemocap import write_iemocap_fixture
from ambig.data.folds import leave_one_unit_out
from ambig.data.iemocap import CLASSES, IEMOCAPCorpus, IEMOCAPLayoutError

# Classes are (neutral, happy, sad, angry).


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    return write_iemocap_fixture(tmp_path_factory.mktemp("iemocap"))


def by_id(corpus):
    return {r.id: r for r in corpus.records()}


def approx(values):
    return pytest.approx(values, abs=1e-12)


def test_fixture_is_in_release_format(release):
    assert release.name == "IEMOCAP_full_release" and (release / "README.txt").is_file()
    for k in range(1, 6):
        assert (release / f"Session{k}" / "dialog" / "EmoEvaluation").is_dir()
    wav = release / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    info = sf.info(str(wav))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
    recs = IEMOCAPCorpus(release, utterances="any_vote").records()
    for r in recs:
        frames = sf.info(r.audio_path).frames
        assert abs(frames / 16000 - (r.extra["end"] - r.extra["start"])) <= 1 / 16000, r.id
        assert 0.5 <= frames / 16000 <= 1.5


def test_default_soft_labels_by_hand(release):
    recs = by_id(IEMOCAPCorpus(release))
    # E1 Anger; E2 Frustration; Anger; (0.5 each); E3 Sadness -> angry 1.5, sad 1, fru 0.5 dropped.
    r = recs["Ses01F_impro01_F000"]
    assert r.votes == approx((0.0, 0.0, 1.0, 1.5))
    assert r.soft_label == approx((0.0, 0.0, 0.4, 0.6))
    # External only: Neutral, Neutral, Sadness (the self line C-M1 Sadness is not counted).
    assert recs["Ses01F_impro01_M000"].votes == approx((2.0, 0.0, 1.0, 0.0))
    assert recs["Ses01F_impro01_M000"].extra["n_raters"] == 3
    # Excited merged into happy: Excited, Happiness, Excited, Neutral (4 external raters).
    r = recs["Ses01F_impro01_F001"]
    assert r.soft_label == approx((0.25, 0.75, 0.0, 0.0))
    assert r.extra["n_raters"] == 4
    # "Neutral state" accepted; Happiness; Excited; split 0.5 + 0.5 -> happy 2, neutral 1.
    assert recs["Ses01F_impro01_M001"].soft_label == approx((1 / 3, 2 / 3, 0.0, 0.0))
    # Anger, Frustration;Anger (0.5), Anger; self C-M1 Frustration ignored -> angry 2.5 only.
    assert recs["Ses02M_impro03_M000"].votes == approx((0.0, 0.0, 0.0, 2.5))
    # Sadness, Sadness;Neutral (0.5 each), Sadness -> neutral 0.5, sad 2.5.
    assert recs["Ses03M_impro05a_F000"].votes == approx((0.5, 0.0, 2.5, 0.0))
    # Anger x3 + Frustration (dropped).
    assert recs["Ses02F_script03_2_F001"].votes == approx((0.0, 0.0, 0.0, 3.0))
    assert recs["Ses01F_impro01_M000"].majority(CLASSES) == "neutral"


def test_record_fields(release):
    corpus = IEMOCAPCorpus(release)
    recs = corpus.records()
    assert [r.id for r in recs] == sorted(r.id for r in recs)
    assert len(recs) == 31
    r = by_id(corpus)["Ses01F_impro01_F000"]
    assert r.audio_path == str(
        release.resolve() / "Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav"
    )
    assert r.transcript == "You told me the train left at six."
    assert (r.speaker, r.session) == ("Ses01F", "Ses01")
    assert dict(r.extra) == {
        "code": "ang",
        "dialog": "Ses01F_impro01",
        "start": 1.0,
        "end": 1.6,
        "vad": [2.0, 4.5, 4.0],
        "gender": "F",
        "n_raters": 3,
    }
    assert by_id(corpus)["Ses01F_impro01_M001"].transcript == "Okay. [LAUGHTER] Let's run then."
    json.dumps([x.to_json() for x in recs])  # manifest-serialisable


def test_speaker_comes_from_the_utterance_letter(release):
    recs = by_id(IEMOCAPCorpus(release))
    r = recs["Ses01F_impro01_M000"]  # F dialog, M speaker
    assert (r.speaker, r.extra["gender"]) == ("Ses01M", "M")
    assert recs["Ses03M_impro05a_F001"].speaker == "Ses03F"
    assert recs["Ses05M_script01_1b_F000"].speaker == "Ses05F"
    assert {r.speaker for r in recs.values()} == {f"Ses0{k}{g}" for k in range(1, 6) for g in "FM"}


def test_raters_all_counts_self_lines(release):
    recs = by_id(IEMOCAPCorpus(release, raters="all"))
    assert recs["Ses01F_impro01_M000"].votes == approx((2.0, 0.0, 2.0, 0.0))  # + C-M1 Sadness
    assert recs["Ses01F_impro01_M000"].extra["n_raters"] == 4
    assert recs["Ses02F_script03_2_F001"].votes == approx((0.0, 0.0, 0.0, 4.0))  # + C-F1 Anger
    assert recs["Ses02M_impro03_M000"].votes == approx((0.0, 0.0, 0.0, 2.5))  # C-M1 Frustration dropped
    assert recs["Ses02M_impro03_M000"].extra["n_raters"] == 4


@pytest.mark.parametrize(
    ("policy", "f000", "m001", "ses03"),
    [
        ("split", (0, 0, 1, 1.5), (1, 2, 0, 0), (0.5, 0, 2.5, 0)),
        ("each", (0, 0, 1, 2), (1, 3, 0, 0), (1, 0, 3, 0)),
        ("first", (0, 0, 1, 1), (1, 2, 0, 0), (0, 0, 3, 0)),
    ],
)
def test_multi_label_policies(release, policy, f000, m001, ses03):
    recs = by_id(IEMOCAPCorpus(release, multi_label=policy))
    assert recs["Ses01F_impro01_F000"].votes == approx(f000)
    assert recs["Ses01F_impro01_M001"].votes == approx(m001)
    assert recs["Ses03M_impro05a_F000"].votes == approx(ses03)


def test_four_class_vs_any_vote(release):
    four = IEMOCAPCorpus(release)
    anyv = IEMOCAPCorpus(release, utterances="any_vote")
    four_ids, any_ids = set(by_id(four)), set(by_id(anyv))
    assert four_ids < any_ids
    assert any_ids - four_ids == {
        "Ses01F_script01_2_F000",  # xxx
        "Ses01F_script01_2_M000",  # fru
        "Ses02M_impro03_F000",  # xxx
        "Ses02F_script03_2_M001",  # fru
        "Ses04M_script02_2_F001",  # sur
    }
    recs = by_id(anyv)
    # xxx: Neutral, Sadness, Other (dropped) -> (1, 0, 1, 0).
    assert recs["Ses01F_script01_2_F000"].soft_label == approx((0.5, 0.0, 0.5, 0.0))
    # fru: Frustration, Anger, Frustration -> only the Anger vote is left.
    assert recs["Ses01F_script01_2_M000"].votes == approx((0.0, 0.0, 0.0, 1.0))
    # Every vote outside the 4 classes: excluded from both and reported in skipped.
    for corpus in (four, anyv):
        assert "Ses01F_script01_2_M001" not in by_id(corpus)
        reasons = {s.id: s.reason for s in corpus.skipped}
        assert reasons["Ses01F_script01_2_M001"] == "no vote among the 4 classes"
    assert len(anyv.records()) == 36


def test_missing_wav_is_skipped_with_its_path(release):
    corpus = IEMOCAPCorpus(release)
    skips = {s.id: s for s in corpus.skipped}
    assert set(skips) == {"Ses01F_script01_2_F001", "Ses01F_script01_2_M001"}
    s = skips["Ses01F_script01_2_F001"]
    assert s.reason == "missing audio file"
    assert s.path == str(
        release.resolve() / "Session1/sentences/wav/Ses01F_script01_2/Ses01F_script01_2_F001.wav"
    )


def test_xx_lines_appledouble_and_subfolders_ignored(release):
    corpus = IEMOCAPCorpus(release, utterances="any_vote")
    ids = [r.id for r in corpus.records()] + [s.id for s in corpus.skipped]
    assert not [i for i in ids if "XX" in i]
    assert (release / "Session1/dialog/EmoEvaluation/._Ses01F_impro01.txt").is_file()
    stats = corpus.card_stats()
    assert stats["n_dialogs"] == 10  # not the ._ file, not Categorical/
    assert stats["n_parsed"] == 38


def test_no_transcription_is_skipped(tmp_path):
    release = write_iemocap_fixture(tmp_path)
    trans = release / "Session1/dialog/transcriptions/Ses01F_impro01.txt"
    lines = trans.read_text().splitlines()
    trans.write_text("\n".join(x for x in lines if not x.startswith("Ses01F_impro01_M000")) + "\n")
    corpus = IEMOCAPCorpus(release, sessions=[1])
    assert "Ses01F_impro01_M000" not in by_id(corpus)
    skips = {s.id: s for s in corpus.skipped}
    assert skips["Ses01F_impro01_M000"].reason == "no transcription"
    assert skips["Ses01F_impro01_M000"].path == str(trans.resolve())


def test_dropped_vote_mass_share_by_hand(release):
    # Session 1, external, split. Kept: F000 (3 lines, 0.5 Frustration dropped), M000 3, F001 4, M001 3
    # -> 0.5 / 13. All parsed adds the script dialog: xxx (1 of 3 dropped), fru (2 of 3), all-outside
    # (3 of 3), missing-wav sad (0 of 3) -> (0.5 + 1 + 2 + 3) / 25.
    stats = IEMOCAPCorpus(release, sessions=[1]).card_stats()
    assert stats["dropped_vote_mass_share"] == pytest.approx(1 / 26)
    assert stats["dropped_vote_mass_share_all"] == pytest.approx(0.26)
    # any_vote also keeps xxx and fru: (0.5 + 1 + 2) / 19.
    stats = IEMOCAPCorpus(release, sessions=[1], utterances="any_vote").card_stats()
    assert stats["dropped_vote_mass_share"] == pytest.approx(3.5 / 19)


def test_card_stats(release):
    stats = IEMOCAPCorpus(release).card_stats()
    assert stats["utterances_by_code"] == {"ang": 7, "exc": 4, "hap": 5, "neu": 9, "sad": 6}
    assert stats["n_dialogs"] == 10 and stats["n_records"] == 31
    assert stats["n_excluded_by_code"] == 5
    assert stats["records_by_session"] == {"Ses01": 4, "Ses02": 6, "Ses03": 7, "Ses04": 7, "Ses05": 7}
    json.dumps(stats)


def test_missing_root_and_wrong_layout(tmp_path, release):
    with pytest.raises(IEMOCAPLayoutError) as err:
        IEMOCAPCorpus(tmp_path / "nowhere").records()
    assert "USC" in str(err.value) and "dataset.root" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(IEMOCAPLayoutError, match="EmoEvaluation") as err:
        IEMOCAPCorpus(tmp_path / "empty").records()
    assert "USC" in str(err.value) and "dataset.root" in str(err.value)
    with pytest.raises(IEMOCAPLayoutError, match="did you mean"):  # the parent of the release
        IEMOCAPCorpus(release.parent).records()


def test_session_subset(tmp_path):
    release = write_iemocap_fixture(tmp_path)
    shutil.rmtree(release / "Session5")
    recs = IEMOCAPCorpus(release, sessions=[1, 2]).records()
    assert {r.session for r in recs} == {"Ses01", "Ses02"}
    with pytest.raises(IEMOCAPLayoutError, match="Session5"):
        IEMOCAPCorpus(release).records()


@pytest.mark.parametrize(
    "kwargs",
    [{"raters": "self"}, {"multi_label": "mean"}, {"utterances": "all"}, {"sessions": [6]}],
)
def test_unknown_option_values(release, kwargs):
    with pytest.raises(ValueError) as err:
        IEMOCAPCorpus(release, **kwargs)
    option = next(iter(kwargs))
    valid = {"raters": "external", "multi_label": "split", "utterances": "four_class", "sessions": "5"}
    assert valid[option] in str(err.value)


def test_leave_one_session_out(release):
    recs = IEMOCAPCorpus(release).records()
    tested = []
    for fold in range(1, 6):
        split = leave_one_unit_out(recs, fold, unit="session", val_unit="speaker", n_val=1)
        assert {r.session for r in split.test} == {f"Ses0{fold}"}
        parts = [{r.speaker for r in part} for part in (split.train, split.val, split.test)]
        assert all(parts)
        assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
        tested += [r.id for r in split.test]
    assert sorted(tested) == sorted(r.id for r in recs)

"""CREMA-D loader: the real shipped tables (labels only) and a miniature checkout with synthetic wavs."""

import shutil
from collections import Counter
from pathlib import Path

import pytest

from ambig.data.crema_d import (
    CLASSES,
    CODES,
    KNOWN_BAD,
    SENTENCES,
    SILENT_FLV,
    CremaDCorpus,
    CremaDLayoutError,
    actor_groups,
    annotation_dir,
    load_annotations,
    parse_name,
)
from ambig.data.fixtures.crema_d import write_crema_d_fixture
from ambig.data.folds import fixed_split, leave_one_unit_out

# Read by hand from processedResults/tabulatedVotes.csv (columns A D F H N S), in CLASSES order N H S A D F.
VOICE_VOTES = {
    "1001_IEO_NEU_XX": ((10, 1, 0, 0, 0, 0), 11),  # row "100001": A0 D0 F0 H1 N10 S0
    "1001_DFA_ANG_XX": ((1, 0, 0, 6, 2, 0), 9),  # row "100062": A6 D2 F0 H0 N1 S0
    "1050_TSI_DIS_XX": ((1, 0, 0, 1, 3, 2), 7),  # row "104075": A1 D3 F2 H0 N1 S0
    "1091_IEO_FEA_HI": ((1, 0, 0, 0, 0, 7), 8),  # row "107373": A0 D0 F7 H0 N1 S0
}
FACE_VOTES = {"1001_IEO_NEU_XX": (9, 0, 0, 0, 0, 0), "1001_DFA_ANG_XX": (3, 0, 0, 5, 2, 0)}


@pytest.fixture(scope="module")
def voice():
    return {r.id: r for r in load_annotations()}


@pytest.fixture(scope="module")
def crema_root(tmp_path_factory):
    return write_crema_d_fixture(tmp_path_factory.mktemp("crema"))


@pytest.fixture(scope="module")
def corpus(crema_root):
    return CremaDCorpus(crema_root)


def test_shipped_tables_present():
    d = annotation_dir()
    for rel in (
        "LICENSE.txt",
        "PROVENANCE.md",
        "README.md",
        "SentenceFilenames.csv",
        "VideoDemographics.csv",
        "processedResults/tabulatedVotes.csv",
        "processedResults/summaryTable.csv",
        "derived/audio_wav_lfs_pointers.csv",
    ):
        assert (d / rel).is_file(), rel
    assert "ODbL" in (d / "PROVENANCE.md").read_text()


def test_voice_rows_counted(voice):
    everything = load_annotations(drop_known_bad=False)
    assert len(everything) == 7442 and len({r.id for r in everything}) == 7442
    assert len(voice) == 7442 - len(KNOWN_BAD) and not set(KNOWN_BAD) & set(voice)
    assert [r.id for r in everything] == sorted(r.id for r in everything)
    assert len({r.speaker for r in everything}) == 91
    assert Counter(r.extra["intensity"] for r in everything) == {"XX": 6077, "LO": 455, "MD": 455, "HI": 455}


def test_votes_read_literally(voice):
    assert CLASSES == tuple(CODES[c] for c in "NHSADF")
    for name, (votes, n) in VOICE_VOTES.items():
        r = voice[name]
        assert r.votes == votes and r.extra["n_responses"] == n == sum(votes)
    assert voice["1001_IEO_NEU_XX"].soft_label[0] == pytest.approx(10 / 11)
    assert voice["1001_IEO_NEU_XX"].majority(CLASSES) == "neutral"
    assert voice["1001_DFA_ANG_XX"].majority(CLASSES) == "angry"


def test_name_parsing_and_transcripts(voice):
    r = voice["1091_IEO_FEA_HI"]
    assert (r.speaker, r.audio_path, r.cot) == ("1091", "", None)
    assert r.extra["actor"] == "1091" and r.extra["sentence"] == "IEO"
    assert (r.extra["intended"], r.extra["intensity"]) == ("fear", "HI")
    assert (r.extra["sex"], r.extra["age"]) == ("Female", 29)
    assert r.transcript == "It's eleven o'clock"
    assert voice["1001_DFA_ANG_XX"].transcript == "Don't forget a jacket"
    assert voice["1050_TSI_DIS_XX"].transcript == "The surface is slick"
    assert voice["1001_DFA_ANG_XX"].extra["sex"] == "Male" and voice["1001_DFA_ANG_XX"].extra["age"] == 51
    assert len(SENTENCES) == 12 and {r.extra["sentence"] for r in voice.values()} == set(SENTENCES)
    assert {r.extra["intended"] for r in voice.values()} == set(CLASSES)
    assert parse_name("1002_WSI_SAD_LO") == {
        "actor": "1002",
        "sentence": "WSI",
        "intended": "sad",
        "intensity": "LO",
    }
    for bad in ("1001_XYZ_ANG_XX", "1001_DFA_ANG", "101_DFA_ANG_XX", "1001_DFA_BOR_XX"):
        with pytest.raises(ValueError, match="CREMA-D clip name"):
            parse_name(bad)


def test_modality_filter(voice):
    face = {r.id: r for r in load_annotations(modality="face")}
    assert len(face) == 7442 - len(KNOWN_BAD)
    for name, votes in FACE_VOTES.items():
        assert face[name].votes == votes != voice[name].votes
    multi = load_annotations(modality="multimodal")
    assert len(multi) == 7442 - len(KNOWN_BAD) - len(SILENT_FLV)
    with pytest.raises(ValueError, match="modality"):
        load_annotations(modality="audio")


def test_zero_vote_rows_skipped(tmp_path):
    src = annotation_dir()
    ann = tmp_path / "ann"
    (ann / "processedResults").mkdir(parents=True)
    shutil.copyfile(src / "VideoDemographics.csv", ann / "VideoDemographics.csv")
    lines = (src / "processedResults/tabulatedVotes.csv").read_text().splitlines()
    header, first, second = lines[0], lines[1], lines[2]
    other = next(line for line in lines if '"1002_' in line)  # a second actor, so two folds can be dealt
    assert first.startswith('"100001",0,0,0,1,10,0,"1001_IEO_NEU_XX"')
    zeroed = '"100001",0,0,0,0,0,0,' + first.split(",", 7)[7]
    (ann / "processedResults/tabulatedVotes.csv").write_text(
        "\n".join([header, zeroed, second, other]) + "\n"
    )
    recs = load_annotations(annotations=ann, n_folds=2)
    assert [r.id for r in recs] == ["1001_IEO_HAP_LO", other.split(",")[7].strip('"')]
    # no real voice row has zero votes
    assert all(sum(r.votes) > 0 for r in load_annotations(drop_known_bad=False))
    # the corpus reports the zero-vote clip
    root = tmp_path / "CREMA-D"
    (root / "AudioWAV").mkdir(parents=True)
    shutil.copyfile(src / "README.md", root / "AudioWAV/1001_IEO_HAP_LO.wav")  # content is never read
    c = CremaDCorpus(root, annotations=ann, split_file=_split(tmp_path, {"1001": "test"}))
    assert [r.id for r in c.records()] == ["1001_IEO_HAP_LO"]
    assert [(s.id, s.reason) for s in c.skipped] == [
        ("1001_IEO_NEU_XX", "no votes"),
        (recs[1].id, "missing audio file"),
    ]


def test_labels_only_without_root_and_with_root(tmp_path):
    recs = load_annotations()
    assert all(r.audio_path == "" for r in recs)
    assert {r.session for r in recs} == {f"actors{i}" for i in range(1, 6)}
    with_root = load_annotations(tmp_path)
    assert with_root[0].audio_path == str(tmp_path / "AudioWAV" / f"{with_root[0].id}.wav")
    assert [r.votes for r in with_root] == [r.votes for r in recs]


def test_actor_groups_balanced_and_seeded():
    sexes = {f"{1000 + i}": ("Female" if i % 2 else "Male") for i in range(1, 92)}
    sexes.update({f"{2000 + i}": "Female" for i in range(3)})
    g = actor_groups(sexes, 5, seed=0)
    assert set(g) == set(sexes) and set(g.values()) == {f"actors{i}" for i in range(1, 6)}
    for sex in ("Female", "Male"):
        per = Counter(g[a] for a, s in sexes.items() if s == sex)
        assert max(per.values()) - min(per.values()) <= 1
    total = Counter(g.values())
    assert max(total.values()) - min(total.values()) <= 1
    assert actor_groups(sexes, 5, seed=0) == g and actor_groups(dict(reversed(sexes.items())), 5, seed=0) == g
    assert actor_groups(sexes, 5, seed=1) != g
    assert set(actor_groups(sexes, 12, seed=0).values()) == {f"actors{i:02d}" for i in range(1, 13)}
    for bad in (1, 200):
        with pytest.raises(ValueError, match="n_folds"):
            actor_groups(sexes, bad, seed=0)


def test_corpus_records_only_clips_with_audio(corpus, crema_root):
    recs = corpus.records()
    wavs = {p.stem for p in (crema_root / "AudioWAV").glob("*.wav")}
    assert len(wavs) == 10 * 12
    assert {r.id for r in recs} == wavs - set(KNOWN_BAD)
    assert [r.id for r in recs] == sorted(r.id for r in recs)
    assert corpus.name == "crema_d" and corpus.classes == CLASSES
    for r in recs:
        assert Path(r.audio_path).is_absolute() and Path(r.audio_path).is_file()
        assert r.speaker == r.extra["actor"] and r.extra["modality"] == "voice"
    skipped = {s.id: s for s in corpus.skipped}
    assert len(skipped) + len(recs) == 7442
    s = skipped["1001_IEO_NEU_XX"]
    assert s.reason == "missing audio file" and s.path == str(crema_root / "AudioWAV/1001_IEO_NEU_XX.wav")
    assert all(skipped[k].reason.startswith("known bad clip") for k in KNOWN_BAD)


def test_unusable_wavs_skipped(tmp_path):
    root = write_crema_d_fixture(tmp_path, actors=["1001"], clips_per_actor=3)
    wavs = sorted((root / "AudioWAV").glob("*.wav"))
    wavs[0].write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 72862\n")
    wavs[1].write_bytes(b"")
    c = CremaDCorpus(root, n_folds=2, split_file=_split(tmp_path, {"1001": "test"}))
    assert [r.id for r in c.records()] == [wavs[2].stem]
    reasons = {s.id: s.reason for s in c.skipped}
    assert reasons[wavs[0].stem].startswith("git-lfs pointer") and reasons[wavs[1].stem] == "empty audio file"


def test_corpus_groups_balanced_by_sex(corpus, crema_root):
    recs = corpus.records()
    actor_sex = {r.speaker: r.extra["sex"] for r in recs}
    assert len(actor_sex) == 10 and Counter(actor_sex.values()) == {"Female": 5, "Male": 5}
    group = {r.speaker: r.session for r in recs}
    assert all(len({r.session for r in recs if r.speaker == a}) == 1 for a in group)
    for sex in ("Female", "Male"):
        per = Counter(group[a] for a, s in actor_sex.items() if s == sex)
        assert set(per) == {f"actors{i}" for i in range(1, 6)} and set(per.values()) == {1}
    again = {r.speaker: r.session for r in CremaDCorpus(crema_root).records()}
    other = {r.speaker: r.session for r in CremaDCorpus(crema_root, fold_seed=1).records()}
    assert again == group and other != group


def test_speaker_independent_folds(corpus):
    recs = corpus.records()
    tested = Counter()
    for fold in range(1, 6):
        split = leave_one_unit_out(recs, fold, unit="session", val_unit="speaker", n_val=2)
        sides = [{r.speaker for r in side} for side in (split.train, split.val, split.test)]
        assert all(sides) and not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])
        assert len(sides[1]) == 2 and len(split.train) + len(split.val) + len(split.test) == len(recs)
        tested.update(r.id for r in split.test)
    assert set(tested) == {r.id for r in recs} and set(tested.values()) == {1}


def _split(tmp_path, splits, sep=","):
    path = tmp_path / ("split.tsv" if sep == "\t" else "split.csv")
    path.write_text(f"actor{sep}split\n" + "".join(f"{a}{sep}{s}\n" for a, s in splits.items()))
    return path


@pytest.mark.parametrize("sep", [",", "\t"])
def test_split_file(corpus, crema_root, tmp_path, sep):
    actors = sorted({r.speaker for r in corpus.records()})
    path = _split(tmp_path, {actors[0]: "test", actors[1]: "TEST", actors[2]: "dev", actors[3]: "train"}, sep)
    recs = CremaDCorpus(crema_root, split_file=path).records()
    session = {r.speaker: r.session for r in recs}
    assert session == {a: {0: "test", 1: "test", 2: "dev"}.get(i, "train") for i, a in enumerate(actors)}
    split = fixed_split(recs)
    assert {r.speaker for r in split.test} == set(actors[:2])
    assert {r.speaker for r in split.val} == {actors[2]}
    assert len(split.train) + len(split.val) + len(split.test) == len(recs)
    with pytest.raises(ValueError, match="split file"):
        fixed_split(corpus.records())
    bad = _split(tmp_path, {actors[0]: "validation"}, sep)
    with pytest.raises(ValueError, match="validation"):
        CremaDCorpus(crema_root, split_file=bad).records()
    no_test = _split(tmp_path, {actors[0]: "dev"}, sep)
    with pytest.raises(ValueError, match="no test actor"):
        CremaDCorpus(crema_root, split_file=no_test).records()


def test_layout_errors(tmp_path):
    with pytest.raises(CremaDLayoutError, match="dataset.root") as err:
        CremaDCorpus(tmp_path / "nowhere")
    assert "ODbL" in str(err.value) and "CheyneyComputerScience/CREMA-D" in str(err.value)
    assert "git-lfs" in str(err.value) and "AudioWAV" in str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    with pytest.raises(CremaDLayoutError, match="dataset.root.*AudioWAV"):
        CremaDCorpus(tmp_path)
    (tmp_path / "AudioWAV").mkdir()
    with pytest.raises(CremaDLayoutError, match="no usable clip"):
        CremaDCorpus(tmp_path).records()
    with pytest.raises(CremaDLayoutError, match="dataset.root"):
        CremaDCorpus("")
    with pytest.raises(CremaDLayoutError, match="lacks"):
        load_annotations(annotations=tmp_path)

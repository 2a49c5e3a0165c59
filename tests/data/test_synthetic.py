"""The synthetic corpus: shape, determinism, idempotent build, ambiguity and real acoustic cues."""

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ambig.data.audio import load_audio
from ambig.data.synthetic import (
    CLASSES,
    SyntheticSpec,
    build_synthetic,
    corpus_dir,
    load_synthetic,
    vocabulary_text,
)
from ambig.model.prompt import parse_cot

SPEC = SyntheticSpec(n_utterances=40, seed=1)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    return root, load_synthetic(root, SPEC)


def test_structure(built):
    root, recs = built
    assert len(recs) == 40 and len({r.id for r in recs}) == 40
    sessions = Counter(r.session for r in recs)
    assert sorted(sessions) == [f"Ses{s:02d}" for s in range(1, 6)]
    speakers = Counter(r.speaker for r in recs)
    assert sorted(speakers) == sorted(f"Ses{s:02d}{g}" for s in range(1, 6) for g in "FM")
    assert set(speakers.values()) == {4}  # even spread over the 10 speakers
    for r in recs:
        assert r.speaker.startswith(r.session) and r.id.startswith(r.speaker + "_")
        assert Path(r.audio_path).is_absolute() and Path(r.audio_path).is_file()
        assert SPEC.min_raters <= sum(r.votes) <= SPEC.max_raters
        assert len(r.votes) == len(CLASSES)
        assert sum(r.soft_label) == pytest.approx(1.0)
        assert SPEC.min_seconds - 1e-3 <= r.extra["duration_s"] <= SPEC.max_seconds + 1e-3
        assert 4 <= len(r.transcript.split()) <= 8
        assert r.extra["dominant"] in CLASSES and r.extra["lexical_emotion"] in CLASSES
        assert sum(r.extra["mixture"]) == pytest.approx(1.0, abs=1e-3)
        info = sf.info(r.audio_path)
        assert info.samplerate == 16000 and info.channels == 1 and info.subtype == "PCM_16"
        assert info.duration == pytest.approx(r.extra["duration_s"], abs=1e-3)
        parsed = parse_cot(r.cot + "\nAnswer: " + r.majority(CLASSES), CLASSES)
        assert parsed.well_formed, (r.id, parsed.errors)
        assert parsed.answer == r.majority(CLASSES)
        assert "Answer" not in r.cot
    assert json.loads((corpus_dir(root, SPEC) / "spec.json").read_text())["spec"]["n_utterances"] == 40


def test_manifest_paths_are_relative(built):
    root, _ = built
    first = json.loads((corpus_dir(root, SPEC) / "manifest.jsonl").read_text().splitlines()[0])
    assert not Path(first["audio_path"]).is_absolute()


def test_deterministic_across_roots(tmp_path):
    a, b = build_synthetic(tmp_path / "a", SPEC), build_synthetic(tmp_path / "b", SPEC)
    assert a.name == b.name
    assert (a / "manifest.jsonl").read_bytes() == (b / "manifest.jsonl").read_bytes()
    wavs = sorted(p.relative_to(a) for p in a.rglob("*.wav"))
    assert len(wavs) == 40
    for rel in wavs:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    other = build_synthetic(tmp_path / "a", SyntheticSpec(n_utterances=40, seed=2))
    assert other != a
    assert (other / "manifest.jsonl").read_bytes() != (a / "manifest.jsonl").read_bytes()


def test_second_build_does_not_rewrite(built):
    root, recs = built
    corpus = corpus_dir(root, SPEC)
    manifest = corpus / "manifest.jsonl"
    before = (manifest.stat().st_mtime_ns, Path(recs[0].audio_path).stat().st_mtime_ns)
    assert build_synthetic(root, SPEC) == corpus
    assert load_synthetic(root, SPEC) == recs
    assert (manifest.stat().st_mtime_ns, Path(recs[0].audio_path).stat().st_mtime_ns) == before
    assert not [p for p in root.iterdir() if ".tmp-" in p.name]  # no leftovers


def test_ambiguity_present(built):
    _, recs = built
    unanimous = [max(r.soft_label) == 1.0 for r in recs]
    assert any(unanimous) and not all(unanimous)
    assert any(r.extra["lexical_emotion"] != r.extra["dominant"] for r in recs)


def test_acoustic_cues_follow_emotion(built):
    _, recs = built
    by = {c: [] for c in CLASSES}
    for r in recs:
        wav = load_audio(r.audio_path)
        by[r.extra["dominant"]].append(float(np.sqrt(np.mean(wav**2))))
    assert by["angry"] and by["sad"]
    assert np.mean(by["angry"]) > 2 * np.mean(by["sad"])


def test_vocabulary_covers_corpus(built):
    _, recs = built
    words = re.compile(r"[\w']+|[^\w\s]")
    vocab = set(words.findall(vocabulary_text()))
    used = set()
    for r in recs:
        used |= set(words.findall(r.transcript)) | set(words.findall(r.cot))
    assert used <= vocab, used - vocab


def test_lost_rename_race_keeps_the_winner(tmp_path, monkeypatch):
    """Another process finishes first: our build discards its temp copy and returns the winner's."""
    from ambig.data import synthetic

    spec = SyntheticSpec(n_utterances=10, seed=5)
    original = synthetic._generate

    def racing(spec_, out):
        monkeypatch.setattr(synthetic, "_generate", original)
        synthetic.build_synthetic(tmp_path, spec_)  # the "other process" completes meanwhile
        original(spec_, out)

    monkeypatch.setattr(synthetic, "_generate", racing)
    corpus = build_synthetic(tmp_path, spec)
    assert (corpus / "manifest.jsonl").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [corpus.name]
    assert len(load_synthetic(tmp_path, spec)) == 10

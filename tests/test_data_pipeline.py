"""Real-corpus runs on release-format fixtures: skip report, strict mode, cross-corpus testing, the
feature cache and the dataset card."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.corpus_runs import write_corpora
from hydra import compose, initialize_config_dir
from transformers import WhisperFeatureExtractor

from ambig.data.audio import AudioError
from ambig.data.features import FeatureStore, extract
from ambig.data.fixtures.iemocap import MISSING_WAV, write_iemocap_fixture
from ambig.data.inspect import card
from ambig.data.mapping import restrict_votes, shared_classes
from ambig.data.records import Record
from ambig.data.skips import DataError
from ambig.train import run

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["experiment=quick", "logger=none", "trainer.enable_progress_bar=false"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    return write_corpora(tmp_path_factory.mktemp("corpora"))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMBIG_RUNS_DIR", str(tmp_path / "runs"))


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*QUICK, *overrides])


def test_iemocap_fold3_runs_and_reports_what_it_skipped(corpora, tmp_path):
    metrics = run(
        make_cfg("dataset=iemocap", "fold=3", f"dataset.root={corpora['iemocap']}"), tmp_path / "run"
    )
    assert metrics["dataset"] == "iemocap" and metrics["fold"] == 3 and metrics["n"] > 0
    skips = [json.loads(x) for x in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    assert {"id": MISSING_WAV, "reason": "missing audio file"}.items() <= next(
        s for s in skips if s["id"] == MISSING_WAV
    ).items()
    assert any(s["reason"] == "no vote among the 4 classes" for s in skips)


def test_training_clips_without_a_cot_get_the_template_curators(corpora, tmp_path):
    from ambig.train import ConfigError

    with pytest.raises(ConfigError, match="cot.source=auto"):
        run(
            make_cfg("dataset=iemocap", f"dataset.root={corpora['iemocap']}", "cot.source=corpus"),
            tmp_path / "a",
        )
    metrics = run(
        make_cfg("dataset=iemocap", f"dataset.root={corpora['iemocap']}", "cot=none"), tmp_path / "b"
    )
    assert metrics["cot"] == "none" and metrics["n"] > 0


def test_strict_mode_turns_a_skip_into_an_error(corpora, tmp_path):
    cfg = make_cfg("dataset=iemocap", f"dataset.root={corpora['iemocap']}", "dataset.strict=true")
    with pytest.raises(DataError, match="1 missing audio file"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_crema_d_runs_speaker_independent(corpora, tmp_path):
    metrics = run(
        make_cfg("dataset=crema_d", f"dataset.root={corpora['crema_d']}", "dataset.folds.n_val=2"),
        tmp_path / "run",
    )
    assert metrics["classes"] == ["neutral", "happy", "sad", "angry", "disgust", "fear"] and metrics["n"] > 0


def test_unreadable_audio_is_skipped_before_training(corpora, tmp_path):
    root = tmp_path / "iemocap"
    release = write_iemocap_fixture(root)
    victim = sorted(release.glob("Session2/sentences/wav/*/*.wav"))[0]
    victim.write_bytes(b"RIFF not really a wave file")
    run(make_cfg("dataset=iemocap", f"dataset.root={release}"), tmp_path / "run")
    skips = [json.loads(x) for x in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    (bad,) = [s for s in skips if s["id"] == victim.stem]
    assert bad["reason"].startswith("unreadable") and bad["path"] == str(victim)


def test_cross_corpus_test_keeps_the_shared_classes(corpora, tmp_path):
    cfg = make_cfg(
        "dataset=crema_d",
        f"dataset.root={corpora['crema_d']}",
        "dataset.folds.n_val=2",
        "test_dataset=iemocap",
        f"test_dataset.root={corpora['iemocap']}",
        "trainer.limit_test_batches=null",
    )
    metrics = run(cfg, tmp_path / "run")
    assert metrics["dataset"] == "crema_d" and metrics["test_dataset"] == "iemocap"
    assert metrics["classes"] == ["neutral", "happy", "sad", "angry"]
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert preds and all(len(p["q"]) == 4 and abs(sum(p["q"]) - 1) < 1e-5 for p in preds)
    assert all(p["id"].startswith("Ses") for p in preds), "every test clip comes from IEMOCAP"


def test_restrict_votes_renormalises_over_shared_classes():
    six = ("neutral", "happy", "sad", "angry", "disgust", "fear")
    four = ("neutral", "happy", "sad", "angry")
    assert shared_classes(six, four) == four
    with pytest.raises(ValueError, match="share none"):
        shared_classes(("a", "b"), ("c",))
    rec = Record("x", "/x.wav", "", (2.0, 1.0, 0.0, 1.0, 3.0, 1.0), "s", "u")
    only_other = Record("y", "/y.wav", "", (0.0, 0.0, 0.0, 0.0, 3.0, 1.0), "s", "u")
    kept, skips = restrict_votes([rec, only_other], six, four)
    assert kept[0].soft_label == pytest.approx((0.5, 0.25, 0.0, 0.25))
    assert [s.id for s in skips] == ["y"]


@pytest.fixture
def store_factory(tmp_path):
    def make(chunk_length=4, cache=True):
        fe = WhisperFeatureExtractor(feature_size=128, chunk_length=chunk_length)
        return FeatureStore(
            fe, sample_rate=16000, max_seconds=30, cache_dir=tmp_path / "feat" if cache else None
        )

    return make


def write_wav(path: Path, seconds: float, freq: float = 220.0) -> Path:
    t = np.arange(int(seconds * 16000)) / 16000
    sf.write(str(path), (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), 16000, subtype="PCM_16")
    return path


def test_feature_cache_hits_equal_the_computed_features(store_factory, tmp_path):
    wav = write_wav(tmp_path / "a.wav", 1.2)
    store = store_factory()
    first = store.get(wav)
    again = store.get(wav)
    assert (store.misses, store.hits) == (1, 1)
    np.testing.assert_array_equal(first.arrays["input_features"], again.arrays["input_features"])
    assert first.arrays["feature_attention_mask"].sum() == again.arrays["feature_attention_mask"].sum() == 120
    assert first.n_tokens == again.n_tokens == 30 and not first.cut
    data, _ = sf.read(str(wav), dtype="float32")
    np.testing.assert_array_equal(
        first.arrays["input_features"], extract(store.feature_extractor, data, 16000).arrays["input_features"]
    )
    assert not list((tmp_path / "feat").rglob("*.tmp")), "no temporary file left behind"
    fresh = store_factory()  # another run: same cache directory, same settings
    fresh.get(wav)
    assert (fresh.misses, fresh.hits) == (0, 1)


def test_feature_cache_key_follows_content_and_settings(store_factory, tmp_path):
    wav = write_wav(tmp_path / "a.wav", 1.0)
    store = store_factory()
    before = store.get(wav)
    write_wav(wav, 1.0, freq=440.0)  # same path, new content
    after = store.get(wav)
    assert store.misses == 2 and not np.array_equal(
        before.arrays["input_features"], after.arrays["input_features"]
    )
    other = store_factory(chunk_length=2)  # other feature settings: a separate cache
    assert other.cache_dir != store.cache_dir
    assert other.get(wav).arrays["input_features"].shape[-1] == 200 and other.misses == 1


def test_long_clips_are_cut_and_flagged(store_factory, tmp_path):
    wav = write_wav(tmp_path / "long.wav", 5.5)
    features = store_factory(chunk_length=4).get(wav)
    assert features.cut and features.arrays["feature_attention_mask"].sum() == 400


def test_unreadable_audio_raises_audio_error(store_factory, tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"garbage")
    for store in (store_factory(), store_factory(cache=False)):
        with pytest.raises(AudioError, match="bad.wav"):
            store.get(bad)
        with pytest.raises(AudioError, match="not found"):
            store.get(tmp_path / "missing.wav")


def test_dataset_card_figures(corpora):
    from ambig.data.iemocap import IEMOCAPCorpus

    corpus = IEMOCAPCorpus(corpora["iemocap"])
    folds = {"method": "leave_one_unit_out", "unit": "session", "val_unit": "speaker", "n_val": 1}
    c = card(corpus, folds, seed=0, n_folds=5, check_audio=True)
    records = corpus.records()
    usable = [r for r in records if Path(r.audio_path).is_file()]
    assert c["clips"] == len(usable)
    labels = np.array([r.soft_label for r in usable])
    entropy = -np.sum(
        np.where(labels > 0, labels * np.log(np.where(labels > 0, labels, 1)), 0), axis=1
    ).mean()
    assert c["mean_entropy_nats"] == pytest.approx(entropy)
    assert c["unanimous_share"] == pytest.approx(np.mean(labels.max(1) == 1))
    assert list(c["mean_soft_label"].values()) == pytest.approx(labels.mean(0).tolist())
    assert sum(f["test"] for f in c["fold_sizes"].values()) == len(usable)
    assert c["skipped_by_reason"] == {"missing audio file": 1, "no vote among the 4 classes": 1}
    assert 0 < c["corpus_stats"]["dropped_vote_mass_share"] < 1


def test_training_reads_cots_from_a_curation_file(corpora, tmp_path):
    from ambig.curation.store import CotStore, make_entry
    from ambig.data.folds import make_split
    from ambig.data.iemocap import CLASSES, IEMOCAPCorpus
    from ambig.model.prompt import format_cot

    cfg = make_cfg(
        "dataset=iemocap", f"dataset.root={corpora['iemocap']}", f"cot.source={tmp_path / 'cot.jsonl'}"
    )
    train = make_split(IEMOCAPCorpus(corpora["iemocap"]).records(), 1, seed=0, **cfg.dataset.folds).train
    chosen, rejected = train[:-1], train[-1]
    store = CotStore(tmp_path / "cot.jsonl")
    for i, r in enumerate([*chosen, rejected]):
        body = format_cot("loud", "words", f"voice {i}", "mostly angry (100%).")
        verdict = "rejected" if r is rejected else "accepted"
        store.append(
            make_entry(
                id=r.id,
                trajectory=f"{body}\nAnswer: {r.majority(CLASSES)}",
                classes=CLASSES,
                verdict=verdict,
                reason=None,
                model="test",
                curator="test",
                prompt_version="v",
                attempts=1,
            )
        )
    cfg = make_cfg(
        "dataset=iemocap", f"dataset.root={corpora['iemocap']}", f"cot.source={tmp_path / 'cot.jsonl'}"
    )
    run(cfg, tmp_path / "run")
    skips = [json.loads(x) for x in (tmp_path / "run" / "skipped.jsonl").read_text().splitlines()]
    no_cot = {s["id"] for s in skips if s["reason"].startswith("no accepted CoT")}
    assert rejected.id in no_cot and not no_cot & {r.id for r in chosen}

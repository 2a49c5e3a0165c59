"""MSP-Podcast downstream: scale=smoke trains and evaluates on its release-format fixture, cross-corpus
tests in both directions with IEMOCAP and CREMA-D, curation (template and OpenAI), the dataset card and
the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures.corpus_runs import write_corpora
from fixtures.openai_server import FakeChatServer
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate

from ambig.curate import run as curate
from ambig.curation.store import load_cots
from ambig.data.inspect import card
from ambig.data.msp_podcast import CLASSES
from ambig.evaluate import evaluate
from ambig.report.build import build_report
from ambig.train import run

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["experiment=quick", "logger=none", "trainer.enable_progress_bar=false"]
FOUR = ["neutral", "happy", "sad", "angry"]
SIX = ["neutral", "happy", "sad", "angry", "disgust", "fear"]


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    return write_corpora(tmp_path_factory.mktemp("corpora"), ("msp_podcast", "iemocap", "crema_d"))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMBIG_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("AMBIG_CURATION_DIR", str(tmp_path / "curation"))


def make_cfg(name: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(name, overrides=list(overrides))


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


@pytest.mark.slow
def test_scale_smoke_trains_and_evaluates_on_the_fixture_and_the_report_shows_it(tmp_path):
    cfg = make_cfg("train", "dataset=msp_podcast", "scale=smoke", "logger=none", "strategy=sft")
    metrics = run(cfg, tmp_path / "sft")
    assert cfg.dataset.root.endswith("fixtures/msp_podcast/MSP-Podcast")  # the fixture, written on first use
    assert metrics["dataset"] == "msp_podcast" and metrics["classes"] == list(CLASSES) and metrics["n"] == 4
    preds = lines(tmp_path / "sft" / "predictions.jsonl")
    assert preds and all(len(p["q"]) == 8 and abs(sum(p["q"]) - 1) < 1e-5 for p in preds)
    skips = {s["id"]: s["reason"] for s in lines(tmp_path / "sft" / "skipped.jsonl")}
    assert skips == {
        "MSP-PODCAST_0002_0004": "no vote among the 8 classes",
        "MSP-PODCAST_0003_0005": "missing audio file",
    }

    ev_cfg = make_cfg(
        "evaluate", "dataset=msp_podcast", "scale=smoke", "logger=none", f"checkpoint={tmp_path / 'sft'}"
    )
    ev = evaluate(ev_cfg, tmp_path / "evaluate")
    assert ev["dataset"] == "msp_podcast" and ev["initialised_from"].startswith(str(tmp_path / "sft"))

    report = build_report([tmp_path / "sft", tmp_path / "evaluate"], out_dir=tmp_path / "report")
    assert not report.aggregate.failed
    assert {c.key.dataset for c in report.aggregate.cells} == {"msp_podcast"}
    assert "msp_podcast" in report.markdown


@pytest.mark.slow
@pytest.mark.parametrize(
    ("train", "test", "shared"),
    [
        ("msp_podcast", "iemocap", FOUR),
        ("iemocap", "msp_podcast", FOUR),
        (
            "msp_podcast",
            "crema_d",
            ["neutral", "happy", "sad", "angry", "fear", "disgust"],
        ),  # the model's order
        ("crema_d", "msp_podcast", SIX),
    ],
)
def test_cross_corpus_in_both_directions(corpora, tmp_path, train, test, shared):
    """The model of corpus `train` (its classes in its prompt) evaluated on every clip of `test` over the
    shared classes; strategy=base, as training plays no part in the mapping (test_data_pipeline
    trains one)."""
    cfg = make_cfg(
        "train",
        *QUICK,
        "strategy=base",
        f"dataset={train}",
        f"dataset.root={corpora[train]}",
        *(["dataset.folds.n_val=2"] if train == "crema_d" else []),
        f"test_dataset={test}",
        f"test_dataset.root={corpora[test]}",
    )
    metrics = run(cfg, tmp_path / "run")
    assert metrics["dataset"] == train and metrics["test_dataset"] == test and metrics["classes"] == shared
    preds = lines(tmp_path / "run" / "predictions.jsonl")
    assert len(preds) == 8 and all(len(p["q"]) == len(shared) for p in preds)
    prefix = {"msp_podcast": "MSP-PODCAST_", "iemocap": "Ses", "crema_d": "10"}[test]
    assert all(p["id"].startswith(prefix) for p in preds), f"every test clip comes from {test}"


def test_the_template_curator_writes_surprise_and_contempt_cues(corpora, tmp_path):
    cfg = make_cfg(
        "curate",
        "dataset=msp_podcast",
        f"dataset.root={corpora['msp_podcast']}",
        "curator=template",
        "progress=false",
    )
    summary = curate(cfg)
    cots = load_cots(tmp_path / "curation" / "msp_podcast" / "cot.jsonl")
    corpus = instantiate(cfg.dataset.corpus)
    assert set(cots) == {r.id for r in corpus.records()} and summary.verdicts["accepted"] == len(cots)
    surprise = next(r for r in corpus.records() if r.transcript.startswith("Whoa"))
    assert "'surprised'" in cots[surprise.id] and "surprise" in cots[surprise.id]
    contempt = next(r for r in corpus.records() if "clueless" in r.transcript)
    assert "'clueless'" in cots[contempt.id]


def test_the_openai_curator_on_the_train_split(corpora, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-msp")
    with FakeChatServer() as server:
        cfg = make_cfg(
            "curate",
            "dataset=msp_podcast",
            f"dataset.root={corpora['msp_podcast']}",
            "curator=openai",
            "split=train",
            "limit=3",
            f"curator.base_url={server.base_url}",
            "curator.model=test-audio-model",
            "curator.backoff_base=0",
            "progress=false",
        )
        summary = curate(cfg)
    entries = lines(tmp_path / "curation" / "msp_podcast" / "cot.jsonl")
    assert summary.verdicts["accepted"] == 3 and [e["verdict"] for e in entries] == ["accepted"] * 3
    train_ids = {r.id for r in instantiate(cfg.dataset.corpus).records() if r.session == "train"}
    assert {e["id"] for e in entries} <= train_ids
    prompts = [r["body"]["messages"][-1]["content"] for r in server.requests]
    assert any("contempt" in json.dumps(p) for p in prompts)  # the 8 classes are offered


def test_the_dataset_card_from_the_config(corpora):
    cfg = make_cfg("inspect", "dataset=msp_podcast", f"dataset.root={corpora['msp_podcast']}")
    out = card(instantiate(cfg.dataset.corpus), cfg.dataset.folds, cfg.seed, 1, check_audio=True)
    assert out["dataset"] == "msp_podcast" and out["classes"] == list(CLASSES)
    assert out["fold_sizes"]["1"] == {"train": 21, "val": 8, "test": 7}
    assert out["corpus_stats"]["missing_transcripts"] == 1
    kfold = make_cfg(
        "inspect",
        "dataset=msp_podcast",
        f"dataset.root={corpora['msp_podcast']}",
        "dataset.folds.method=speaker_kfold",
        "dataset.folds.n_val=1",
    )
    out = card(instantiate(kfold.dataset.corpus), kfold.dataset.folds, kfold.seed, 5, check_audio=False)
    assert set(out["fold_sizes"]) == {"1", "2", "3", "4", "5"}
    assert all(isinstance(s, dict) and s["test"] > 0 for s in out["fold_sizes"].values())


def test_the_test_split_is_chosen_in_the_config(corpora):
    cfg = make_cfg(
        "train", "dataset=msp_podcast", f"dataset.root={corpora['msp_podcast']}", "dataset.test_split=Test2"
    )
    test = [r for r in instantiate(cfg.dataset.corpus).records() if r.session == "test"]
    assert len(test) == 4 and {r.extra["split"] for r in test} == {"Test2"}
    cfg = make_cfg(
        "train", "dataset=msp_podcast", f"dataset.root={corpora['msp_podcast']}", "dataset.test_split=Test3"
    )
    with pytest.raises(InstantiationException, match="Test3's labels are not released"):
        instantiate(cfg.dataset.corpus)

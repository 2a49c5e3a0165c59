"""The `openai` curator against a real HTTP server on 127.0.0.1 speaking the chat-completions wire format."""

from __future__ import annotations

import base64
import io
import json
from collections import Counter

import numpy as np
import pytest
import soundfile as sf
from fixtures.openai_server import FakeChatServer, has_audio, transcript_of, user_text

from ambig.curation.openai_curator import CurationError, OpenAICurator, parse_verdict
from ambig.curation.store import CotStore, load_cots
from ambig.data.audio import load_audio
from ambig.data.records import Record
from ambig.model.prompt import parse_cot

CLASSES = ("neutral", "happy", "sad", "angry")
KEY = "sk-test-DO-NOT-LEAK-0123456789"
SR = 16000
VOTES = [(6, 0, 4, 0), (0, 7, 0, 3), (1, 1, 8, 0), (0, 2, 0, 8), (10, 0, 0, 0), (3, 3, 0, 4)]


@pytest.fixture
def server():
    with FakeChatServer() as s:
        yield s


@pytest.fixture
def records(tmp_path):
    """Six clips with distinct transcripts (the server tells them apart by transcript)."""
    out = []
    rng = np.random.default_rng(0)
    for i, votes in enumerate(VOTES):
        t = np.arange(int(0.4 * SR)) / SR
        wav = (0.2 + 0.05 * i) * np.sin(2 * np.pi * (120 + 20 * i) * t) + 0.01 * rng.standard_normal(t.size)
        path = tmp_path / f"clip{i}.wav"
        sf.write(path, wav.astype(np.float32), SR)
        out.append(Record(f"utt{i}", str(path), f"this is clip number {i}", votes, f"spk{i % 2}", "s1"))
    return out


@pytest.fixture
def make(server, monkeypatch):
    """make(**overrides) -> (curator, recorded sleeps): concurrency 1, no real waiting."""
    monkeypatch.setenv("OPENAI_API_KEY", KEY)

    def build(**overrides):
        sleeps = []
        options = dict(
            base_url=server.base_url, model="test-audio-model", max_attempts=3, concurrency=1,
            request_timeout=5, max_retries=4, backoff_base=1.0, backoff_max=60, sleep=sleeps.append, seed=0,
            prices={"input_per_mtok": 2.5, "output_per_mtok": 10.0},
        )  # fmt: skip
        options.update(overrides)
        return OpenAICurator(**options), sleeps

    return build


def loader(path):
    return load_audio(path, SR, max_seconds=None)


def no_key_anywhere(root):
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path


def test_audio_mode_sends_audio_and_distribution(make, server, records, tmp_path):
    curator, sleeps = make(concurrency=3)
    store = CotStore(tmp_path / "out" / "cot.jsonl")
    summary = curator.curate_many(records, loader, CLASSES, store, progress=False)
    assert summary.verdicts["accepted"] == 6 and summary.written == 6 and not summary.failed
    assert len(server.requests) == 12 and not sleeps  # one generation and one validation per clip
    assert summary.prompt_tokens == 12 * 50 and summary.completion_tokens == 12 * 20
    assert summary.cost == pytest.approx((600 * 2.5 + 240 * 10.0) / 1e6)
    for req in server.requests:
        assert req["headers"]["authorization"] == f"Bearer {KEY}"
        assert req["body"]["model"] == "test-audio-model" and req["body"]["max_tokens"] in (600, 100)
    generations = server.of_kind("generation")
    assert len(generations) == 6 and all(has_audio(b) for b in generations)
    assert not any(has_audio(b) for b in server.of_kind("validation"))  # validation_audio=false
    part = generations[0]["messages"][0]["content"][0]
    assert part["input_audio"]["format"] == "wav"
    wav, sr = sf.read(io.BytesIO(base64.b64decode(part["input_audio"]["data"])))
    info = sf.info(io.BytesIO(base64.b64decode(part["input_audio"]["data"])))
    assert sr == SR and info.subtype == "PCM_16" and wav.shape[0] == int(0.4 * SR)
    prompt = next(user_text(b) for b in generations if transcript_of(user_text(b)) == "this is clip number 0")
    assert "Human label distribution: neutral 60%, sad 40%" in prompt
    assert "Majority label: neutral" in prompt and "Minority labels: sad" in prompt
    assert "Step 2: Audio Analysis" in prompt
    lines = [json.loads(line) for line in store.path.read_text().splitlines()]
    assert sorted(e["id"] for e in lines) == [r.id for r in records]
    for e in lines:
        assert e["verdict"] == "accepted" and e["curator"] == "openai" and e["attempts"] == 1
        assert e["prompt_version"] == "generation=cot_generation_v1;validation=cot_validation_v1;mode=audio"
        assert e["usage"]["prompt_tokens"] == 100 and e["created"]
        assert parse_cot(e["trajectory"], CLASSES).well_formed and "Answer" not in e["cot"]
    assert {e["id"]: e["answer"] for e in lines}["utt3"] == "angry"
    no_key_anywhere(tmp_path / "out")
    assert KEY not in repr(curator)


def test_text_mode_sends_features_not_audio(make, server, records, tmp_path):
    curator, _ = make(mode="text")
    curator.curate_many(records[:2], loader, CLASSES, CotStore(tmp_path / "cot.jsonl"), progress=False)
    assert len(server.requests) == 4
    for body in (r["body"] for r in server.requests):
        assert not has_audio(body) and isinstance(body["messages"][0]["content"], str)
        assert "Acoustic features measured from the clip" in user_text(body) and "dBFS" in user_text(body)
    assert "mode=text" in curator.prompt_version


def test_rate_limits_and_server_errors_are_retried(make, server, records, tmp_path):
    curator, sleeps = make()
    server.faults.extend([429, 500, 429])
    summary = curator.curate_many(
        records[:1], loader, CLASSES, CotStore(tmp_path / "cot.jsonl"), progress=False
    )
    assert summary.verdicts["accepted"] == 1
    assert len(server.requests) == 5  # three failures, then generation and validation
    assert len(sleeps) == 3
    for k, wait in enumerate(sleeps):  # base * 2^k plus at most 10% jitter
        assert 2.0**k <= wait <= 1.1 * 2.0**k


def test_backoff_is_capped_and_honours_retry_after(make):
    curator, _ = make(backoff_base=1.0, backoff_max=5.0)
    assert 5.0 <= curator.delay(10) <= 5.5
    assert 3.0 <= curator.delay(0, retry_after=3.0) <= 3.3
    assert curator.delay(0, retry_after=1000.0) <= 5.5


def test_retries_run_out(make, server, records, tmp_path):
    curator, sleeps = make(max_retries=2)
    server.faults.extend([500, 503, 500])
    store = CotStore(tmp_path / "cot.jsonl")
    with pytest.raises(CurationError, match="HTTP 500.*after 2 retries") as info:
        curator.curate_many(records[:1], loader, CLASSES, store, progress=False)
    assert KEY not in str(info.value) and len(server.requests) == 3 and len(sleeps) == 2
    assert not store.path.exists() or store.path.read_text() == ""


@pytest.mark.parametrize("status", [400, 401, 404])
def test_client_errors_stop_at_once(make, server, records, tmp_path, status):
    curator, sleeps = make()
    server.faults.append(status)
    with pytest.raises(CurationError, match=f"HTTP {status}") as info:
        curator.curate_many(records, loader, CLASSES, CotStore(tmp_path / "cot.jsonl"), progress=False)
    assert len(server.requests) == 1 and not sleeps and KEY not in str(info.value)


def test_missing_key_names_the_variable(server, monkeypatch):
    monkeypatch.delenv("MY_CURATION_KEY", raising=False)
    with pytest.raises(CurationError, match="MY_CURATION_KEY"):
        OpenAICurator(base_url=server.base_url, model="m", api_key_env="MY_CURATION_KEY")


def test_malformed_and_refused_clips_are_rejected(make, server, records, tmp_path):
    curator, _ = make(max_attempts=3)
    server.malformed.add(records[1].transcript)
    server.refuse.add(records[2].transcript)
    path = tmp_path / "cot.jsonl"
    summary = curator.curate_many(records[:4], loader, CLASSES, CotStore(path), progress=False)
    assert summary.verdicts == Counter(accepted=2, rejected=2)
    by_id = {e["id"]: e for e in map(json.loads, path.read_text().splitlines())}
    bad, refused = by_id["utt1"], by_id["utt2"]
    assert bad["verdict"] == "rejected" and bad["attempts"] == 3 and bad["cot"] is None
    assert bad["reason"].count("format:") == 3 and "missing section" in bad["reason"]
    assert refused["verdict"] == "rejected" and refused["attempts"] == 3 and refused["cot"]
    assert refused["reason"].count("validation said no") == 3
    gens = Counter(transcript_of(user_text(b)) for b in server.of_kind("generation"))
    vals = Counter(transcript_of(user_text(b)) for b in server.of_kind("validation"))
    assert gens[records[1].transcript] == 3 and vals[records[1].transcript] == 0
    assert gens[records[2].transcript] == 3 and vals[records[2].transcript] == 3
    assert bad["usage"]["prompt_tokens"] == 3 * 50 and refused["usage"]["prompt_tokens"] == 6 * 50
    assert set(load_cots(path)) == {"utt0", "utt3"}
    # A rerun pays for nothing again; retry_rejected=true redoes the rejected ones only.
    n = len(server.requests)
    again = curator.curate_many(records[:4], loader, CLASSES, CotStore(path), progress=False)
    assert again.skipped_done == 4 and again.written == 0 and len(server.requests) == n
    redo, _ = make(retry_rejected=True)
    server.malformed.clear()
    server.refuse.clear()
    third = redo.curate_many(records[:4], loader, CLASSES, CotStore(path), progress=False)
    assert third.skipped_done == 2 and third.verdicts == Counter(accepted=2)
    assert set(load_cots(path)) == {"utt0", "utt1", "utt2", "utt3"}


def test_answer_must_be_the_majority(make, records):
    curator, _ = make()
    text = "Keywords: a\nStep 1: Text Analysis - b\nStep 2: Audio Analysis - c\nStep 3: Synthesis - d\n"
    text += "Answer: sad"
    assert any("majority" in p for p in curator.format_problems(text, records[0], CLASSES))
    assert curator.format_problems(text.replace("sad", "neutral"), records[0], CLASSES) == []
    tie = records[5]  # neutral 3, happy 3, angry 4 -> angry only
    assert curator.format_problems(text.replace("sad", "angry"), tie, CLASSES) == []
    assert curator.format_problems("", records[0], CLASSES) == ["empty reply"]


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("Yes.", "yes"),
        ("**NO** - it misses sad", "no"),
        ("yes, consistent", "yes"),
        ("Maybe", None),
        ("", None),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply)[0] == verdict


@pytest.mark.parametrize("concurrency", [1, 3])
def test_resume_after_a_killed_run_loses_and_repeats_nothing(make, server, records, tmp_path, concurrency):
    curator, _ = make(concurrency=concurrency)
    path = tmp_path / "cot.jsonl"
    loaded = []

    def dying_loader(p):
        if len(loaded) >= 3:
            raise KeyboardInterrupt  # Ctrl-C / a crash after three clips were started
        loaded.append(p)
        return loader(p)

    with pytest.raises(KeyboardInterrupt):
        curator.curate_many(records, dying_loader, CLASSES, CotStore(path), progress=False)
    first = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert len(first) == 3 and len(set(first)) == 3  # the clips in flight were finished and written
    fresh, _ = make(concurrency=concurrency)
    summary = fresh.curate_many(records, loader, CLASSES, CotStore(path), progress=False)
    assert summary.skipped_done == len(first) and summary.written == len(records) - len(first)
    ids = [json.loads(line)["id"] for line in path.read_text().splitlines()]
    assert sorted(ids) == sorted(r.id for r in records)  # each clip exactly once
    gens = Counter(transcript_of(user_text(b)) for b in server.of_kind("generation"))
    assert set(gens.values()) == {1} and len(gens) == len(records)  # no clip generated twice


def test_resume_after_a_line_cut_short(make, server, records, tmp_path):
    curator, _ = make()
    path = tmp_path / "cot.jsonl"
    curator.curate_many(records, loader, CLASSES, CotStore(path), progress=False)
    data = path.read_bytes()
    last_id = json.loads(data.splitlines()[-1])["id"]
    path.write_bytes(data[:-30])  # killed while writing the last line
    n = len(server.requests)
    summary = curator.curate_many(records, loader, CLASSES, CotStore(path), progress=False)
    assert summary.written == 1 and summary.skipped_done == len(records) - 1
    assert len(server.requests) == n + 2  # only the lost clip is asked for again
    entries = CotStore(path).entries()
    assert sorted(e["id"] for e in entries) == sorted(r.id for r in records)
    assert entries[-1]["id"] == last_id and path.read_bytes().startswith(data[:-30] + b"\n")


def test_unreadable_audio_is_reported_not_written(make, server, records, tmp_path):
    curator, _ = make()
    broken = Record("gone", str(tmp_path / "missing.wav"), "gone", (1, 0, 0, 0), "spk0", "s1")
    path = tmp_path / "cot.jsonl"
    summary = curator.curate_many([broken, *records[:1]], loader, CLASSES, CotStore(path), progress=False)
    assert [i for i, _ in summary.failed] == ["gone"] and summary.written == 1
    assert "failed 1" in summary.format() and "gone" in summary.format()
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["utt0"]

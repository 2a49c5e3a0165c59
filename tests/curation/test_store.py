"""The curation store: append-only lines, resume keys, a cut-short last line, load_cots, the summary."""

from __future__ import annotations

import json
import logging
import threading

import pytest

from ambig.curation.store import (
    CotStore,
    Summary,
    canonical_cot,
    load_cots,
    make_entry,
    trajectory_with_answer,
)
from ambig.model.prompt import format_cot, parse_cot

CLASSES = ("neutral", "happy", "sad", "angry")
COT = format_cot("loud voice", "plain words", "loud and fast: angry; a soft start: sad", "mostly angry")


def entry(id, verdict="accepted", model="m", pv="v1", answer="angry", cot=COT):
    return make_entry(
        id=id,
        trajectory=trajectory_with_answer(cot, answer),
        classes=CLASSES,
        verdict=verdict,
        reason=None if verdict == "accepted" else "validation said no",
        model=model,
        curator="openai",
        prompt_version=pv,
        attempts=1,
        usage={"prompt_tokens": 10, "completion_tokens": 5},
    )


def test_entry_schema_and_canonical_cot():
    messy = "Sure!\nKeywords:  loud\nStep 1: Text Analysis - plain\n  words\nStep 2: Audio Analysis - loud\n"
    messy += "Step 3: Synthesis - angry\nAnswer: Angry."
    e = make_entry(
        id="a", trajectory=messy, classes=CLASSES, verdict="accepted", reason=None, model="m",
        curator="openai", prompt_version="v", attempts=2,
    )  # fmt: skip
    assert e["cot"] == format_cot("loud", "plain words", "loud", "angry")
    assert parse_cot(e["cot"] + "\nAnswer: angry", CLASSES).well_formed
    assert e["answer"] == "angry" and e["trajectory"] == messy and e["attempts"] == 2
    assert e["usage"] == {"prompt_tokens": 0, "completion_tokens": 0, "audio_prompt_tokens": 0}
    assert set(e["sections"]) == {"keywords", "text_analysis", "audio_analysis", "synthesis"}
    broken = make_entry(
        id="b", trajectory="Keywords: x\nAnswer: angry", classes=CLASSES, verdict="rejected", reason="format",
        model="m", curator="openai", prompt_version="v", attempts=3,
    )  # fmt: skip
    assert broken["cot"] is None and broken["verdict"] == "rejected"
    assert canonical_cot({"keywords": "x"}) is None
    with pytest.raises(ValueError, match="verdict"):
        entry("c", verdict="maybe")


def test_append_done_and_reload(tmp_path):
    path = tmp_path / "sub" / "cot.jsonl"
    store = CotStore(path)
    assert len(store) == 0 and not store.done("a", "v1", "m")
    store.append(entry("a"))
    store.append(entry("b", verdict="rejected"))
    assert store.done("a", "v1", "m") and store.done("b", "v1", "m")
    assert not store.done("a", "v2", "m") and not store.done("a", "v1", "other")
    assert not store.done("b", "v1", "m", retry_rejected=True)
    again = CotStore(path)
    assert len(again) == 2 and again.done("a", "v1", "m") and again.done("b", "v1", "m")
    assert [e["id"] for e in again.entries()] == ["a", "b"]
    assert all(line.endswith("}") for line in path.read_text().splitlines())
    with pytest.raises(ValueError, match="lacks"):
        store.append({"id": "x"})


def test_truncated_last_line_is_ignored_and_kept(tmp_path, caplog):
    path = tmp_path / "cot.jsonl"
    store = CotStore(path)
    for i in "abc":
        store.append(entry(i))
    data = path.read_bytes()
    cut = data[: len(data) - 40]  # c's line cut short, as by a crash mid-write
    path.write_bytes(cut)
    with caplog.at_level(logging.WARNING):
        resumed = CotStore(path)
    assert "truncated last line" in caplog.text
    assert resumed.done("a", "v1", "m") and resumed.done("b", "v1", "m") and not resumed.done("c", "v1", "m")
    resumed.append(entry("c"))
    after = path.read_bytes()
    assert after.startswith(cut + b"\n")  # nothing deleted; the new line starts fresh
    assert [e["id"] for e in CotStore(path).entries()] == ["a", "b", "c"]
    assert set(load_cots(path)) == {"a", "b", "c"}


def test_complete_last_line_without_newline_is_kept(tmp_path):
    path = tmp_path / "cot.jsonl"
    path.write_text(json.dumps(entry("a")))
    store = CotStore(path)
    assert store.done("a", "v1", "m")
    store.append(entry("b"))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["a", "b"]


def test_concurrent_appends_give_whole_lines(tmp_path):
    store = CotStore(tmp_path / "cot.jsonl")

    def writer(k):
        for i in range(25):
            store.append(entry(f"{k}-{i}"))

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lines = (tmp_path / "cot.jsonl").read_text().splitlines()
    assert len(lines) == 200 and len({json.loads(line)["id"] for line in lines}) == 200


def test_load_cots_accepted_only_last_wins(tmp_path):
    path = tmp_path / "cot.jsonl"
    store = CotStore(path)
    other = format_cot("quiet", "sad words", "slow and low: sad", "mostly sad")
    store.append(entry("a"))
    store.append(entry("a", cot=other, answer="sad", model="m2"))
    store.append(entry("b", verdict="rejected"))
    store.append(entry("c", verdict="rejected"))
    store.append(entry("c"))
    cots = load_cots(path)
    assert cots == {"a": other, "c": COT}
    assert "Answer" not in cots["a"]
    assert set(load_cots(path, include_rejected=True)) == {"a", "b", "c"}
    with pytest.raises(FileNotFoundError, match="ambig.curate"):
        load_cots(tmp_path / "missing.jsonl")


def test_summary_cost_and_format():
    s = Summary(selected=4, skipped_done=1, prices={"input_per_mtok": 2.5, "output_per_mtok": 10.0})
    s.add({"verdict": "accepted", "usage": {"prompt_tokens": 1_000_000, "completion_tokens": 100_000}})
    s.add({"verdict": "rejected", "usage": {"prompt_tokens": 0, "completion_tokens": 0}})
    s.failed.append(("x", "unreadable"))
    assert s.cost == pytest.approx(2.5 + 1.0) and s.tokens == 1_100_000 and s.written == 2
    s.prices = {**s.prices, "audio_input_per_mtok": 40.0}
    s.audio_prompt_tokens = 500_000
    assert s.cost == pytest.approx(1.25 + 20.0 + 1.0)
    text = s.format()
    assert "accepted 1, rejected 1, failed 1" in text and "1 already done" in text and "$" in text

"""model=mini behind a real OpenAI-compatible server: `transformers serve` (transformers' own), started on
127.0.0.1 by the test. The `openai` curator curates against it in both modes (audio as `input_audio`
parts, which the server accepts for Qwen2-Audio-class models, and text), is killed and resumed; and a trained
mini run, exported with `ambig.export`, is served and answers as `ambig.predict` does."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import soundfile as sf
from fixtures.transformers_server import TransformersServer
from test_train import make_cfg

from ambig.curation.store import load_cots
from ambig.data.synthetic import CLASSES
from ambig.export import export
from ambig.model.family import FAMILIES
from ambig.model.inputs import BatchBuilder, Example
from ambig.model.load import resolve_source
from ambig.model.prompt import instruction, parse_cot
from ambig.predict import Predictor
from ambig.train import run

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mini_dir(mini_cfg_factory) -> Path:
    """The model=mini checkpoint (built once per session by conftest's factory)."""
    return Path(resolve_source(mini_cfg_factory(lora=False)))


@pytest.fixture(scope="module")
def served(mini_dir):
    with TransformersServer(mini_dir) as server:
        yield server


@pytest.fixture(scope="module")
def corpus_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


def _audio_part(path: Path) -> dict:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}


def test_an_input_audio_part_is_rendered_as_ambigs_prompt(served, mini_base, synthetic_records):
    """The server turns the OpenAI part into an audio item of the mini's chat template: its prompt is ambig's
    own prompt for that clip, token for token in count, with the clip's audio tokens."""
    _, processor = mini_base
    record = synthetic_records[0]
    text = instruction(CLASSES, record.transcript, cot=True)
    reply = served.chat(
        [{"role": "user", "content": [_audio_part(Path(record.audio_path)), {"type": "text", "text": text}]}],
        8,
    )
    builder = BatchBuilder(
        processor,
        CLASSES,
        cot=True,
        ce_answer_word=False,
        sample_rate=16000,
        family=FAMILIES["smollm2_audio"],
    )
    wave, rate = sf.read(record.audio_path, dtype="float32")
    assert rate == 16000 and len(wave) <= 4 * rate  # within the mini's 4 s window: nothing cut
    n_tokens = builder.features_of(Example(record, wave)).n_tokens
    ours = builder.prompt_ids(record.transcript, n_tokens)
    assert reply["usage"]["prompt_tokens"] == len(ours)
    assert ours.count(processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")) == n_tokens > 20
    assert reply["usage"]["completion_tokens"] == 8 and reply["choices"][0]["message"]["content"].strip()
    text_only = served.chat([{"role": "user", "content": text}], 1)
    assert text_only["usage"]["prompt_tokens"] < len(ours) - n_tokens + 1


def _curate(*args: str, cache: Path, curation: Path, **popen) -> subprocess.Popen:
    env = {**os.environ, "AMBIG_CACHE_DIR": str(cache), "AMBIG_CURATION_DIR": str(curation)}
    return subprocess.Popen(
        [sys.executable, "-m", "ambig.curate", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **popen,
    )


def _args(server: TransformersServer, mode: str, limit: int, attempts: int) -> tuple[str, ...]:
    # SmolLM2-135M does not write the five-line format (measured: it echoes the prompt), so every reply is
    # rejected on its format whatever the budget; 48 tokens keep the test short on 2 cores.
    return (
        "dataset=synthetic",
        "dataset.corpus.n_utterances=20",
        "curator=openai",
        f"curator.base_url={server.base_url}",
        f"curator.model={server.model}",
        "curator.api_key_env=null",
        f"curator.mode={mode}",
        "curator.max_tokens=48",
        "curator.validation_max_tokens=16",
        f"curator.max_attempts={attempts}",
        "curator.concurrency=1",
        "split=train",
        f"limit={limit}",
        "progress=false",
    )


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _check_entries(entries: list[dict], model: str, attempts: int) -> None:
    """Every clip's verdict follows from the reply the server actually wrote."""
    for e in entries:
        assert e["curator"] == "openai" and e["model"] == model and 1 <= e["attempts"] <= attempts
        assert e["usage"]["prompt_tokens"] > 0 and e["usage"]["completion_tokens"] > 0
        parsed = parse_cot(e["trajectory"], CLASSES)
        if e["verdict"] == "accepted":
            assert not parsed.errors and parsed.answer is not None and e["reason"] is None
        else:
            assert e["verdict"] == "rejected" and e["reason"].startswith("attempt 1: ")
            assert e["reason"].count(" | ") == e["attempts"] - 1  # one reason per attempt
            last = e["reason"].split(" | ")[-1]
            if last.startswith(f"attempt {e['attempts']}: format: "):
                # a format rejection names what our own parser finds wrong with the stored (last) reply
                assert parsed.errors and all(err in last for err in parsed.errors)


@pytest.mark.slow
def test_curate_in_audio_mode_against_transformers_serve(served, corpus_cache, tmp_path):
    proc = _curate(*_args(served, "audio", 1, attempts=2), cache=corpus_cache, curation=tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:] + served.log()
    entries = _lines(tmp_path / "synthetic" / "cot.jsonl")
    assert len(entries) == 1
    _check_entries(entries, served.model, attempts=2)
    # the audio reached the model: each generation's prompt carries the clip's audio tokens
    assert all(e["usage"]["prompt_tokens"] / e["attempts"] > 400 for e in entries)
    summary = next(line for line in out.splitlines() if "accepted" in line and "rejected" in line)
    accepted = sum(e["verdict"] == "accepted" for e in entries)
    assert f"accepted {accepted}" in summary, out


@pytest.mark.slow
def test_curate_in_text_mode_survives_a_kill_and_resumes(served, corpus_cache, tmp_path):
    args = _args(served, "text", 2, attempts=1)
    out_file = tmp_path / "synthetic" / "cot.jsonl"
    first = _curate(*args, cache=corpus_cache, curation=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline and first.poll() is None:
        if out_file.is_file() and out_file.read_text().count("\n") >= 1:
            break
        time.sleep(0.2)
    assert first.poll() is None, first.communicate()[1][-3000:]
    os.killpg(first.pid, signal.SIGKILL)
    first.communicate()
    before = out_file.read_text()
    done = before.count("\n")
    assert done == 1
    again = _curate(*args, cache=corpus_cache, curation=tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err[-3000:] + served.log()
    after = out_file.read_text()
    assert after.startswith(before)  # what the killed run wrote is kept as it was
    entries = _lines(out_file)
    assert len(entries) == len({e["id"] for e in entries}) == 2
    assert "1 already done" in out
    _check_entries(entries, served.model, attempts=1)
    assert len(load_cots(out_file)) == sum(e["verdict"] == "accepted" for e in entries)


@pytest.mark.slow
def test_an_exported_mini_run_is_served_and_answers_as_predict(
    mini_cfg_factory, synthetic_records, tmp_path, monkeypatch
):
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("AMBIG_RUNS_DIR", str(tmp_path / "runs"))
    models = mini_cfg_factory().cache_dir
    cfg = make_cfg(
        "model=mini",
        f"model.cache_dir={models}",
        "trainer.limit_train_batches=1",
        "trainer.limit_test_batches=1",
        "batch_size=2",
        "eval_batch_size=2",  # one step, two validation and two test clips: the export is what is tested
    )
    run(cfg, tmp_path / "sft")
    out = export(tmp_path / "sft", tmp_path / "export", merge=True)
    record = synthetic_records[1]
    predicted = Predictor(out, max_new_tokens=12).predict(record.audio_path, transcript=record.transcript)
    text = instruction(CLASSES, record.transcript, cot=True)
    messages = [
        {"role": "user", "content": [_audio_part(Path(record.audio_path)), {"type": "text", "text": text}]}
    ]
    with TransformersServer(out) as server:
        reply = server.chat(messages, 12)
    answer = reply["choices"][0]["message"]["content"]
    assert reply["usage"]["completion_tokens"] > 0 and answer.strip()
    # greedy on both sides, same weights, same prompt and features: the same words
    assert answer.strip() == predicted.reasoning.strip()

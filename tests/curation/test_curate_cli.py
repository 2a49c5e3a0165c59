"""`python -m ambig.curate` end to end: the template curator offline, the openai one against a test server."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.openai_server import FakeChatServer, has_audio
from hydra import compose, initialize_config_dir

from ambig.curate import run, select
from ambig.curation.openai_curator import CurationError
from ambig.curation.store import load_cots
from ambig.data.records import Record

ROOT = Path(__file__).resolve().parents[2]
KEY = "sk-test-CLI-SECRET-9876543210"


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """One synthetic-corpus cache for the module (built once), a fresh curation dir per test."""
    return tmp_path_factory.mktemp("cache")


def cli(*args: str, cache: Path, curation: Path, **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    return subprocess.run(
        [sys.executable, "-m", "ambig.curate", *args],
        cwd=ROOT,
        env={**base, "AMBIG_CACHE_DIR": str(cache), "AMBIG_CURATION_DIR": str(curation), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_template_curator_writes_and_resumes(dirs, tmp_path):
    args = ("dataset=synthetic", "curator=template", "dataset.corpus.n_utterances=20", "progress=false")
    first = cli(*args, cache=dirs, curation=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = tmp_path / "synthetic" / "cot.jsonl"
    entries = lines(out)
    assert len(entries) == 20 and len({e["id"] for e in entries}) == 20
    assert all(
        e["verdict"] == "accepted" and e["model"] == "template" and e["attempts"] == 1 for e in entries
    )
    assert all(e["prompt_version"] == "template-v1" and e["usage"]["prompt_tokens"] == 0 for e in entries)
    assert "accepted 20" in first.stdout and str(out) in first.stdout
    assert len(load_cots(out)) == 20
    # The lengths it wrote, as training targets in the model's tokens, and the budget auto would give.
    report = next(line for line in first.stdout.splitlines() if line.startswith("target lengths"))
    pattern = r"the 20 accepted trajectories .*median [\d.]+, p95 [\d.]+, max (\d+); .*auto gives (\d+)"
    match = re.search(pattern, report)
    assert "model=tiny's tokens" in report and match, report
    assert int(match[2]) == math.ceil(1.25 * int(match[1]))
    again = cli(*args, cache=dirs, curation=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert len(lines(out)) == 20 and "20 already done" in again.stdout


@pytest.mark.slow
def test_openai_curator_via_cli(dirs, tmp_path):
    with FakeChatServer() as server:
        server.faults.extend([429, 500])
        proc = cli(
            "dataset=synthetic",
            "curator=openai",
            "dataset.corpus.n_utterances=20",
            "limit=6",
            "split=train",
            "fold=2",
            f"curator.base_url={server.base_url}",
            "curator.model=test-audio-model",
            "curator.backoff_base=0",
            "curator.concurrency=2",
            cache=dirs,
            curation=tmp_path,
            OPENAI_API_KEY=KEY,
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "synthetic" / "cot.jsonl"
    entries = lines(out)
    assert len(entries) == 6 and all(e["verdict"] == "accepted" and e["curator"] == "openai" for e in entries)
    assert all(not e["id"].startswith("Ses02") for e in entries)  # fold 2's train side
    assert len(server.requests) == 6 * 2 + 2  # two injected failures were retried
    assert all(r["headers"]["authorization"] == f"Bearer {KEY}" for r in server.requests)
    assert any(has_audio(r["body"]) for r in server.requests)
    assert "accepted 6" in proc.stdout and "estimated cost $" in proc.stdout
    for path in tmp_path.rglob("*"):  # cot.jsonl, hydra's saved config and the log
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path
    assert KEY not in proc.stdout + proc.stderr
    saved = next(tmp_path.rglob("config.yaml")).read_text()
    assert "api_key_env: OPENAI_API_KEY" in saved


def test_missing_key_stops_before_any_work(dirs, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(dirs))
    monkeypatch.setenv("AMBIG_CURATION_DIR", str(tmp_path))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("curate", overrides=["curator=openai", "dataset.corpus.n_utterances=20"])
    with pytest.raises(CurationError, match="OPENAI_API_KEY"):
        run(cfg)
    assert not (tmp_path / "synthetic" / "cot.jsonl").exists()


def test_select_split_and_limit(dirs, monkeypatch):
    monkeypatch.setenv("AMBIG_CACHE_DIR", str(dirs))
    records = [
        Record(f"Ses0{s}_{i}", "/x.wav", "", (1, 0, 0, 0), f"Ses0{s}F", f"Ses0{s}")
        for s in (1, 2, 3)
        for i in (0, 1)
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("curate", overrides=["split=test", "fold=2"])
        assert [r.id for r in select(records, cfg)] == ["Ses02_0", "Ses02_1"]
        cfg = compose("curate", overrides=["limit=3"])
        assert [r.id for r in select(records, cfg)] == ["Ses01_0", "Ses01_1", "Ses02_0"]
        with pytest.raises(ValueError, match="split"):
            select(records, compose("curate", overrides=["split=dev"]))


@pytest.mark.parametrize(
    ("config", "dataset", "variable"),
    [
        ("curate", "iemocap", "IEMOCAP_ROOT"),
        ("curate", "crema_d", "CREMA_D_ROOT"),
        ("curate", "msp_podcast", "MSP_PODCAST_ROOT"),
        ("inspect", "iemocap", "IEMOCAP_ROOT"),
        ("inspect", "msp_podcast", "MSP_PODCAST_ROOT"),
        ("train", "msp_podcast", "MSP_PODCAST_ROOT"),
    ],
)
def test_every_entry_point_finds_a_corpus_root_in_its_variable(
    monkeypatch, tmp_path, config, dataset, variable
):
    """conf/corpus_roots.yaml is shared: `ambig.curate dataset=iemocap` with only IEMOCAP_ROOT set resolves
    (it once failed: curate.yaml had no corpus_roots block)."""
    monkeypatch.setenv(variable, str(tmp_path / "corpus"))
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config, overrides=[f"dataset={dataset}"])
    assert cfg.dataset.root == cfg.dataset.corpus.root == str(tmp_path / "corpus")

"""Crash safety: a training run killed hard (SIGKILL) mid-run resumes with `resume=true` from its last step
checkpoint (weights, optimizer, scheduler, RNG, data position) and ends with the metrics of an uninterrupted
run with the same seed; the same config run twice gives the same metrics."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
ARGS = [
    "dataset.corpus.n_utterances=30",  # 18 training clips: 5 batches of 4 per epoch
    "trainer.max_epochs=2",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "decoding.max_new_tokens=8",
    "decoding.refuse_short_budget=false",
    "batch_size=4",
    "eval_batch_size=8",
    "checkpoint_every_n_steps=1",
    "logger=none",
]
METRICS = ("js", "bc", "r2", "brier", "kl", "accuracy")


def train(runs: Path, cache: Path, *extra: str, wait: bool = True):
    env = {**os.environ, "AMBIG_RUNS_DIR": str(runs), "AMBIG_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "ambig.train", *ARGS, *extra]
    if not wait:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (newest,) = sorted(runs.glob("synthetic/sft/fold1/*/metrics.json"), key=lambda p: p.stat().st_mtime)[-1:]
    return json.loads(newest.read_text())


def kill_after_checkpoints(proc: subprocess.Popen, runs: Path, writes: int) -> Path:
    """SIGKILL `proc` once its last.ckpt has been (re)written `writes` times; returns that checkpoint."""
    seen, deadline = set(), time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        for ckpt in runs.glob("synthetic/sft/fold1/*/checkpoints/last.ckpt"):
            try:
                seen.add(ckpt.stat().st_mtime_ns)
            except FileNotFoundError:
                continue
            if len(seen) >= writes:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return ckpt
        time.sleep(0.01)
    raise AssertionError(
        f"the run ended or stalled before {writes} checkpoints: {proc.stderr.read()[-2000:]}"
    )


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """(metrics of an uninterrupted run, the feature and model cache its runs share)."""
    root = tmp_path_factory.mktemp("resume")
    cache = root / "cache"
    return train(root / "straight", cache), cache


@pytest.mark.slow
def test_a_killed_run_resumes_to_the_uninterrupted_metrics(tmp_path, straight):
    straight, cache = straight
    again = train(tmp_path / "again", cache)
    assert all(again[k] == straight[k] for k in METRICS)  # run to run, same seed and config

    runs = tmp_path / "killed"
    ckpt = kill_after_checkpoints(train(runs, cache, wait=False), runs, writes=3)
    state = torch.load(ckpt, map_location="cpu", weights_only=False)  # whole, though the process was killed
    total_steps = 2 * 5
    assert 0 < state["global_step"] < total_steps
    assert "rng_states" in state and "EmotionDataModule" in state  # RNG and data position saved
    resumed = train(runs, cache, "resume=true")
    assert resumed["resumed_from"].endswith("last.ckpt")
    for key in METRICS:
        assert abs(resumed[key] - straight[key]) <= 1e-6, (key, resumed[key], straight[key])


@pytest.mark.slow
def test_a_run_killed_at_an_epoch_end_resumes_to_the_uninterrupted_metrics(tmp_path, straight):
    """Killed right after epoch 1's checkpoint (its last batch, validation and best model): the resumed run
    keeps epoch 1's best checkpoint (the test uses the best, so a later, worse epoch must not replace it) and
    ends with the uninterrupted run's metrics; the interrupted run's files stay as they were."""
    straight, cache = straight
    runs = tmp_path / "killed"
    # A step checkpoint on the epoch's last batch is deferred to the save after validation. (How often
    # checkpoints are written changes no result, so the uninterrupted run with every step's is the reference.)
    ckpt = kill_after_checkpoints(
        train(runs, cache, "checkpoint_every_n_steps=5", wait=False), runs, writes=1
    )
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    assert state["global_step"] == 5 and state["EmotionDataModule"]["batches_done"] == 5
    (best_state,) = [v for k, v in state["callbacks"].items() if "val/js" in k]
    assert best_state["best_model_score"] is not None  # written after validation and the best checkpoint
    interrupted = {p.name: p.read_bytes() for p in ckpt.parent.iterdir()}
    assert sorted(interrupted) == ["best-epoch0-step5.ckpt", "last.ckpt"]

    resumed = train(runs, cache, "checkpoint_every_n_steps=5", "resume=true")
    for key in METRICS:
        assert abs(resumed[key] - straight[key]) <= 1e-6, (key, resumed[key], straight[key])
    assert {p.name: p.read_bytes() for p in ckpt.parent.iterdir()} == interrupted
    (new_dir,) = [p for p in runs.glob("synthetic/sft/fold1/*/checkpoints") if p != ckpt.parent]
    names = sorted(p.name for p in new_dir.iterdir())
    assert names[-1] == "last.ckpt" and not any(n.startswith("last-") for n in names)  # one last file
    # The test ran on the uninterrupted run's best checkpoint, now a file of the resumed run.
    assert Path(resumed["best_checkpoint"]) == new_dir / Path(straight["best_checkpoint"]).name
    assert Path(resumed["best_checkpoint"]).is_file()

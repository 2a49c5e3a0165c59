"""trainer=ddp_cpu: two processes (gloo) train SFT and GRPO; the test metrics equal a single-process
evaluation of the same checkpoint, every test clip is counted once, and rank zero alone writes the results
(a second writer would hit the existing metrics.json and fail the run)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMON = [
    "dataset.corpus.n_utterances=30",
    "trainer.max_epochs=1",
    "trainer.limit_val_batches=1",
    "trainer.enable_progress_bar=false",
    "decoding.max_new_tokens=8",
    "decoding.refuse_short_budget=false",
    "batch_size=4",
    "eval_batch_size=4",  # 6 test clips: rank 0 gets 3, rank 1 gets 3, in batches of 4 and fewer
    "logger=none",
]


def train(runs: Path, cache: Path, *extra: str) -> tuple[dict, Path]:
    env = {**os.environ, "AMBIG_RUNS_DIR": str(runs), "AMBIG_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    overridden = {e.split("=")[0] for e in extra}
    common = [c for c in COMMON if c.split("=")[0] not in overridden]
    proc = subprocess.run(
        [sys.executable, "-m", "ambig.train", *common, *extra],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (metrics_file,) = runs.glob("synthetic/*/fold1/*/metrics.json")
    return json.loads(metrics_file.read_text()), metrics_file.parent


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["sft", "grpo"])
def test_two_processes_match_a_single_process_evaluation(tmp_path, strategy):
    cache = tmp_path / "cache"
    extra = [f"strategy={strategy}"] + (["strategy.num_generations=2"] if strategy == "grpo" else [])
    ddp, ddp_dir = train(tmp_path / "ddp", cache, "trainer=ddp_cpu", *extra)
    rows = [json.loads(line) for line in (ddp_dir / "predictions.jsonl").read_text().splitlines()]
    ids = [row["id"] for row in rows]
    assert len(ids) == len(set(ids)) == ddp["n"] == 6  # every test clip once, none padded in twice
    # The same checkpoint evaluated by one process (no training: max_epochs=0 tests the loaded weights).
    single, single_dir = train(
        tmp_path / "single", cache, *extra, f"init_from={ddp['best_checkpoint']}", "trainer.max_epochs=0"
    )
    for key in ("js", "bc", "r2", "brier", "kl", "accuracy"):
        assert abs(ddp[key] - single[key]) <= 1e-5, (key, ddp[key], single[key])
    single_ids = [
        json.loads(line)["id"] for line in (single_dir / "predictions.jsonl").read_text().splitlines()
    ]
    assert ids == single_ids  # gathered back into the test set's order

"""The training entry point end to end: config composition, results files, resume, refusals."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ambig.train import ConfigError, run

ROOT = Path(__file__).resolve().parents[1]
FAST = [
    "dataset.corpus.n_utterances=30",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "decoding.max_new_tokens=12",
    "decoding.refuse_short_budget=false",
    "batch_size=4",
    "eval_batch_size=8",
]


@pytest.fixture(scope="module")
def env(tmp_path_factory, monkeypatch_module):
    cache = tmp_path_factory.mktemp("cache")
    runs = tmp_path_factory.mktemp("runs")
    monkeypatch_module.setenv("AMBIG_CACHE_DIR", str(cache))
    monkeypatch_module.setenv("AMBIG_RUNS_DIR", str(runs))
    return {"cache": cache, "runs": runs}


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def make_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=[*FAST, *overrides])


def cli(*args: str, env_vars: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ambig.train", *args],
        cwd=ROOT,
        env={**os.environ, **{k: str(v) for k, v in env_vars.items()}},
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_cli_trains_tests_and_writes_results(env):
    proc = cli(*FAST, env_vars={"AMBIG_CACHE_DIR": env["cache"], "AMBIG_RUNS_DIR": env["runs"]})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((env["runs"] / "synthetic" / "sft" / "fold1").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("js", "bc", "r2", "brier", "kl", "accuracy", "n", "fold", "strategy", "dataset", "seed"):
        assert key in metrics
    assert 0 <= metrics["js"] <= 1 and metrics["strategy"] == "sft" and metrics["fold"] == 1
    preds = [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == metrics["n"] > 0
    assert all(abs(sum(p["q"]) - 1) < 1e-5 and abs(sum(p["p"]) - 1) < 1e-5 for p in preds)
    assert all(isinstance(p["cot"], str) for p in preds)
    assert (run_dir / "checkpoints" / "last.ckpt").exists()
    saved = OmegaConf.load(run_dir / "config.yaml")
    assert saved.model.name == "tiny" and "${" not in (run_dir / "config.yaml").read_text()
    assert "JS" in proc.stdout and "results:" in proc.stdout


@pytest.mark.slow
def test_unknown_option_fails_before_any_model_is_built(tmp_path):
    proc = cli(
        "strategy=nope", env_vars={"AMBIG_CACHE_DIR": tmp_path / "c", "AMBIG_RUNS_DIR": tmp_path / "r"}
    )
    assert proc.returncode != 0
    assert "strategy/nope" in proc.stderr and "Available options" in proc.stderr
    assert not (tmp_path / "c").exists()
    proc = cli(
        "trainer.max_epoch=3", env_vars={"AMBIG_CACHE_DIR": tmp_path / "c", "AMBIG_RUNS_DIR": tmp_path}
    )
    assert proc.returncode != 0 and "max_epoch" in proc.stderr


def test_base_strategy_evaluates_without_training(env, tmp_path):
    metrics = run(make_cfg("strategy=base"), tmp_path / "base")
    assert metrics["best_checkpoint"] is None and metrics["n"] > 0
    assert not (tmp_path / "base" / "checkpoints").exists()


def test_rerun_into_the_same_directory_refuses_to_overwrite(env, tmp_path):
    cfg = make_cfg("strategy=base")
    run(cfg, tmp_path / "run")
    before = (tmp_path / "run" / "metrics.json").read_text()
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        run(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "metrics.json").read_text() == before


@pytest.mark.parametrize("overrides", [["loss=ce_only"], ["loss=kl_only"], ["cot=none"]])
def test_loss_and_cot_variants_run(env, tmp_path, overrides):
    metrics = run(make_cfg(*overrides), tmp_path / "run")
    assert metrics["loss"] == make_cfg(*overrides).loss.name and metrics["n"] > 0
    if overrides == ["cot=none"]:
        preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
        assert all(p["cot"] is None for p in preds)


def test_resume_continues_from_the_last_checkpoint(env, tmp_path):
    parent = tmp_path / "synthetic" / "sft" / "fold1"
    first = run(make_cfg(), parent / "a")
    assert first["resumed_from"] is None
    second = run(make_cfg("resume=true", "trainer.max_epochs=2"), parent / "b")
    assert second["resumed_from"] == str(parent / "a" / "checkpoints" / "last.ckpt")
    rows = list(csv.DictReader((parent / "b" / "logs" / "metrics.csv").open()))
    trained = {row["epoch"] for row in rows if row.get("train/loss")}
    assert trained == {"1"}, "the resumed run trains epoch 1 only: epoch 0 came from the checkpoint"


def test_resume_without_an_earlier_run_says_so(env, tmp_path):
    with pytest.raises(FileNotFoundError, match="no earlier run"):
        run(make_cfg("resume=true"), tmp_path / "lonely" / "run")


def test_a_loss_that_supervises_no_answer_is_refused(env, tmp_path):
    with pytest.raises(ConfigError, match="neither KL"):
        run(make_cfg("loss=ce_only", "loss.ce_answer_word=false"), tmp_path / "run")


def test_fold_out_of_range_is_refused(env, tmp_path):
    with pytest.raises(ValueError, match="valid folds are 1..5"):
        run(make_cfg("fold=6"), tmp_path / "run")


def test_the_7b_config_composes_and_a_missing_download_says_how_to_get_it(env, tmp_path, monkeypatch):
    import huggingface_hub.constants

    from ambig.model.load import ModelNotAvailableError

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf-home"))
    cfg = make_cfg("model=qwen2_audio_7b_instruct", "strategy=base")
    assert cfg.model.hub_id == "Qwen/Qwen2-Audio-7B-Instruct" and cfg.model.dtype == "bfloat16"
    with pytest.raises(ModelNotAvailableError, match="huggingface-cli download Qwen/Qwen2-Audio-7B-Instruct"):
        run(cfg, tmp_path / "run")


@pytest.mark.slow
def test_multirun_writes_one_directory_per_job(env, tmp_path):
    proc = cli(
        "-m",
        "experiment=quick",
        "strategy=base",
        "fold=1,2",
        "logger=none",
        "trainer.enable_progress_bar=false",
        env_vars={"AMBIG_CACHE_DIR": env["cache"], "AMBIG_RUNS_DIR": tmp_path},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = list((tmp_path / "multirun").iterdir())
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "metrics.json").exists())
    assert jobs == ["0-synthetic-base-fold1", "1-synthetic-base-fold2"]
    folds = [json.loads((sweep / j / "metrics.json").read_text())["fold"] for j in jobs]
    assert folds == [1, 2]


def test_a_missing_corpus_root_is_named_before_anything_runs(env, tmp_path):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["dataset=iemocap"])
    with pytest.raises(ConfigError, match=r"missing: dataset\.root"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run").exists()

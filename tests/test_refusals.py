"""Bad input stops with a message naming the cause; secrets never reach what a logger writes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS
from omegaconf import OmegaConf

from ambig.loggers import build_logger, finish_logger, scrub
from ambig.losses import NonFiniteLossError
from ambig.model.inputs import Example
from ambig.strategies.sft import SFTStrategy

LOSS, OPTIM = AMBIGUITY_LOSS, ADAMW


class BadLabel:
    """A record whose soft label does not sum to 1 (as a corpus with precomputed distributions could give)."""

    def __init__(self, record):
        self._record = record

    def __getattr__(self, name):
        return getattr(self._record, name)

    @property
    def soft_label(self):
        return (0.5, 0.3, 0.1, 0.0)


def test_soft_label_not_summing_to_one_is_refused(builder, examples):
    bad = Example(BadLabel(examples[1].record), examples[1].audio)
    with pytest.raises(ValueError, match=r"sums to 0\.9.*") as err:
        builder([examples[0], bad])
    assert examples[1].record.id in str(err.value)


def test_votes_of_the_wrong_length_name_the_utterance(builder, examples):
    record = dataclasses.replace(examples[0].record, votes=(1.0, 2.0))
    with pytest.raises(ValueError, match=record.id):
        builder([Example(record, examples[0].audio)])


def test_nan_loss_stops_with_step_utterances_and_parts(tiny_lora, builder, examples, monkeypatch):
    model, _ = tiny_lora
    strategy = SFTStrategy(model, builder, optim=OPTIM, decoding={"max_new_tokens": 4}, loss=LOSS, name="sft")
    batch = builder(examples[:2])

    def nan_loss(batch):
        return torch.tensor(float("nan")), {"ce": torch.tensor(1.0), "kl": torch.tensor(float("nan"))}

    monkeypatch.setattr(strategy, "training_loss", nan_loss)
    monkeypatch.setattr(strategy, "log", lambda *a, **k: None)
    with pytest.raises(NonFiniteLossError) as err:
        strategy.training_step(batch, 0)
    message = str(err.value)
    assert "kl" in message and "step 0" in message and examples[0].record.id in message


def test_scrub_redacts_secret_looking_keys():
    cfg = {"curator": {"api_key": "sk-live-123", "model": "gpt-4o"}, "hf_token": "hf_abc", "lr": 1e-3}
    clean = scrub(cfg)
    assert clean["curator"]["api_key"] == "<redacted>" and clean["hf_token"] == "<redacted>"
    assert clean["curator"]["model"] == "gpt-4o" and clean["lr"] == 1e-3


def test_wandb_logger_runs_offline_and_writes_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_API_KEY", "sk-test-secret-should-not-leak-0123456789")
    cfg = OmegaConf.create(
        {
            "logger": {
                "name": "wandb",
                "project": "ambig-test",
                "entity": None,
                "group": "synthetic",
                "run_name": "sft/fold1",
                "mode": "offline",
            },
            "curator": {"api_key": "sk-config-secret"},
            "strategy": {"name": "sft"},
            "dataset": {"name": "synthetic"},
            "seed": 0,
        }
    )
    logger = build_logger(cfg, tmp_path)
    logger.log_metrics({"train/loss": 1.5}, step=0)
    finish_logger(
        logger, {"js": 0.2, "bc": 0.8, "r2": 0.5, "brier": 0.1, "kl": 0.3, "accuracy": 0.7, "n": 10}, [], {}
    )
    runs = list(Path(tmp_path).glob("**/offline-run-*"))
    assert runs, "an offline run directory is written"
    blobs = b"".join(p.read_bytes() for p in Path(tmp_path).rglob("*") if p.is_file())
    assert b"sk-test-secret-should-not-leak" not in blobs and b"sk-config-secret" not in blobs
    assert b"ambig-test" in blobs or b"sft/fold1" in blobs


def test_nan_loss_can_skip_the_batch_and_count_it(tiny_lora, builder, examples, monkeypatch, caplog):
    model, _ = tiny_lora
    strategy = SFTStrategy(
        model,
        builder,
        optim=OPTIM,
        decoding={"max_new_tokens": 4},
        loss=LOSS,
        name="sft",
        on_nonfinite_loss="skip",
    )
    batch = builder(examples[:2])
    monkeypatch.setattr(
        strategy, "training_loss", lambda b: (torch.tensor(float("inf")), {"ce": torch.tensor(1.0)})
    )
    monkeypatch.setattr(strategy, "log", lambda *a, **k: None)
    with caplog.at_level("WARNING"):
        assert strategy.training_step(batch, 0) is None  # Lightning skips backward and the optimizer step
        assert strategy.training_step(batch, 1) is None
    assert strategy.skipped_nonfinite == 2
    assert examples[0].record.id in caplog.text and "on_nonfinite_loss=skip, 2 so far" in caplog.text
    with pytest.raises(ValueError, match="on_nonfinite_loss='ignore'"):
        SFTStrategy(
            model, builder, optim=OPTIM, decoding={}, loss=LOSS, name="sft", on_nonfinite_loss="ignore"
        )

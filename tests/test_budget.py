"""The generation budget from the data: `auto` from the training targets, refusals of budgets that cut them,
the shares of trajectories that answered and that the budget cut, one error line on the command line."""

from __future__ import annotations

import math

import numpy as np
import pytest
from omegaconf import OmegaConf
from test_train import cli, make_cfg

from ambig.budget import TargetLengths, resolve, summarise, target_token_counts
from ambig.config import ConfigError
from ambig.model import prompt
from ambig.train import build_strategy, resolve_budgets, run

LENGTHS = TargetLengths(n=10, median=100.0, p95=140.0, max=150)


def test_auto_is_the_longest_target_plus_the_margin():
    assert resolve("auto", LENGTHS, margin=0.25, refuse_short=True, key="k") == math.ceil(150 * 1.25)
    assert resolve("auto", LENGTHS, margin=0.0, refuse_short=True, key="k") == 150
    assert resolve(140, LENGTHS, margin=0.25, refuse_short=True, key="k") == 140  # at the p95: allowed
    assert resolve(12, LENGTHS, margin=0.25, refuse_short=False, key="k") == 12  # asked for: allowed
    assert resolve(12, None, margin=0.25, refuse_short=True, key="k") == 12  # nothing to compare with


@pytest.mark.parametrize(
    ("setting", "lengths", "message"),
    [
        (139, LENGTHS, r"decoding.max_new_tokens=139 is below the training targets' 95th percentile "
                       r"\(median 100, p95 140, max 150 tokens over 10 targets\).*auto.*188"),
        ("auto", None, "sizes the budget from the training targets, but this run has none"),
        ("lots", LENGTHS, "give a number of tokens or auto"),
        (0, LENGTHS, "at least 1 token"),
    ],
)  # fmt: skip
def test_bad_budgets_are_refused_with_the_numbers(setting, lengths, message):
    with pytest.raises(ConfigError, match=message):
        resolve(setting, lengths, margin=0.25, refuse_short=True, key="decoding.max_new_tokens")


def test_target_lengths_count_the_models_tokens(builder, synthetic_records):
    counts = target_token_counts(builder, synthetic_records)
    tok = builder.tokenizer
    expected = [len(tok(prompt.target_before_answer(r.cot), add_special_tokens=False).input_ids) + 2
                for r in synthetic_records]  # fmt: skip
    assert counts == expected
    stats = summarise(counts)
    assert (stats.max, stats.median, stats.p95) == (
        max(expected),
        np.median(expected),
        np.percentile(expected, 95),
    )


@pytest.mark.slow
def test_an_auto_run_records_its_budget_and_what_it_did(isolated):
    cfg = make_cfg("decoding.max_new_tokens=auto", "decoding.refuse_short_budget=true")
    metrics = run(cfg, isolated / "run")
    assert metrics["target_tokens"]["n"] > 0 and metrics["target_tokens"]["max"] < 200
    assert metrics["max_new_tokens"] == math.ceil(1.25 * metrics["target_tokens"]["max"])
    assert metrics["trajectories"] == metrics["n"] > 0
    assert 0 <= metrics["answered_share"] <= 1 and 0 <= metrics["truncated_share"] <= 1
    saved = OmegaConf.load(isolated / "run" / "config.yaml")
    assert saved.decoding.max_new_tokens == metrics["max_new_tokens"]  # a number, for predict and reruns


def test_a_budget_that_cuts_the_targets_is_refused_before_training(isolated):
    with pytest.raises(ConfigError, match=r"decoding.max_new_tokens=12 is below .* 95th percentile"):
        run(make_cfg("decoding.refuse_short_budget=true"), isolated / "run")
    assert not (isolated / "run" / "checkpoints").exists()
    with pytest.raises(ConfigError, match=r"strategy.rollout.max_new_tokens=10 is below"):
        cfg = make_cfg("strategy=grpo", "decoding.max_new_tokens=auto", "decoding.refuse_short_budget=true",
                       "strategy.rollout.max_new_tokens=10")  # fmt: skip
        run(cfg, isolated / "grpo")


def test_rollout_and_tts_budgets_follow_the_evaluation_budget():
    cfg = make_cfg("strategy=grpo", "decoding.max_new_tokens=auto")
    resolve_budgets(cfg, LENGTHS)
    assert cfg.decoding.max_new_tokens == cfg.strategy.rollout.max_new_tokens == 188
    assert cfg.strategy.max_completion_length == 188  # dr_grpo's normaliser follows the rollout budget
    kept = make_cfg("strategy=grpo", "decoding.max_new_tokens=auto", "strategy.rollout.max_new_tokens=200")
    resolve_budgets(kept, LENGTHS)
    assert (kept.decoding.max_new_tokens, kept.strategy.rollout.max_new_tokens) == (188, 200)


def test_a_strategy_refusing_its_settings_is_a_config_error(tiny_lora, builder):
    cfg = make_cfg("strategy=grpo", "strategy.loss_type=ppo")
    with pytest.raises(ConfigError, match="strategy=grpo: strategy.loss_type='ppo': choose one of grpo"):
        build_strategy(cfg, tiny_lora[0], builder)


@pytest.mark.slow
def test_the_command_line_prints_one_error_line(tmp_path):
    env = {"AMBIG_CACHE_DIR": tmp_path / "c", "AMBIG_RUNS_DIR": tmp_path / "r"}
    proc = cli("dataset.corpus.n_utterances=30", "decoding.max_new_tokens=12", env_vars=env)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "decoding.max_new_tokens=12 is below" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not any(p.name == "metrics.json" for p in (tmp_path / "r").rglob("*"))

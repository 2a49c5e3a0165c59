"""Test-time scaling strategies on the tiny model (ambig.tts.strategies) and `python -m ambig.evaluate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from test_train import FAST, make_cfg

from ambig.evaluate import evaluate
from ambig.model import prompt
from ambig.train import run
from ambig.tts.strategies import TTS_STRATEGIES, run_tts

ROOT = Path(__file__).resolve().parents[1]


def tts(name: str, n: int = 3, **extra):
    return {"name": name, "n": n, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6,
            "likelihood_temperature": 1.0, **extra}  # fmt: skip


@pytest.mark.parametrize("name", TTS_STRATEGIES)
def test_every_strategy_gives_distributions_and_counts_its_compute(tiny_lora, builder, examples, name):
    model, _ = tiny_lora
    batch = builder.for_evaluation()(examples[:2])
    torch.manual_seed(0)
    out = run_tts(model, batch, builder, tts(name))
    assert out.q.shape == (2, len(builder.classes))
    torch.testing.assert_close(out.q.sum(-1), torch.ones(2))
    if name == "direct":
        assert out.tokens.tolist() == [0, 0] and out.forwards.tolist() == [1, 1] and out.texts == [None, None]
    else:
        n = 1 if name == "cot_greedy" else 3
        assert (out.tokens <= 6 * n).all() and (out.tokens >= n).all() and (out.forwards >= out.tokens).all()
        assert all(isinstance(t, str) for t in out.texts)
    if name == "vote":  # frequencies of 3 answers
        assert torch.allclose(out.q * 3, (out.q * 3).round(), atol=1e-5)
    if name in ("best_of_n", "weighted_best_of_n", "verifier_best_of_n", "verifier"):  # + a pass each
        assert (out.forwards >= out.tokens + 3).all()


def test_one_trajectory_weighted_equals_its_own_read_out(tiny_lora, builder, examples):
    model, _ = tiny_lora
    batch = builder.for_evaluation()(examples[:2])
    torch.manual_seed(4)
    best_of_one = run_tts(model, batch, builder, tts("weighted_best_of_n", n=1))
    torch.manual_seed(4)
    single = run_tts(model, batch, builder, tts("self_consistency", n=1))
    torch.testing.assert_close(best_of_one.q, single.q)
    torch.manual_seed(4)
    verified_one = run_tts(model, batch, builder, tts("verifier", n=1))
    torch.testing.assert_close(verified_one.q, single.q)


def test_verifier_scores_are_the_models_p_yes_after_the_verification_turn(tiny_lora, builder, examples):
    from ambig.model.audio_encoding import audio_inputs
    from ambig.rollout import prompt_rows, sample
    from ambig.tts.strategies import verifier_scores
    from ambig.tts.verifier import yes_no_ids

    model, _ = tiny_lora
    batch = builder.for_evaluation()(examples[:2])
    torch.manual_seed(5)
    out = sample(model, batch, builder, n=2, max_new_tokens=5, temperature=1.0, top_p=1.0)
    scores = verifier_scores(model, batch, builder, out, 2)
    assert scores.shape == (2, 2) and ((scores > 0) & (scores < 1)).all()
    # row 3 (clip 1, trajectory 1) alone, built by hand
    turn = builder.tokenizer(prompt.verification_turn(), add_special_tokens=False).input_ids
    assert builder.verification_ids() == turn  # Qwen2-Audio's ChatML
    head = prompt_rows(batch)[1]
    ids = torch.tensor([head + out.tokens[3] + turn])
    one = {k: v[1:2] for k, v in batch.items() if k in ("input_features", "feature_attention_mask")}
    with torch.no_grad():
        logits = model(**audio_inputs(model, ids, one)).logits[0, -1]
    yes, no = yes_no_ids(builder)
    expected = torch.softmax(logits[[yes, no]].float(), dim=-1)[0]
    torch.testing.assert_close(scores[1, 1], expected, atol=1e-5, rtol=0)


def _mean_logp_by_hand(model, batch, tokens, truncated, end_id, clip):
    """Mean log-likelihood of one trajectory of clip `clip`, from one unbatched forward of prompt + it."""
    from ambig.model.audio_encoding import audio_inputs
    from ambig.rollout import prompt_rows

    head = prompt_rows(batch)[clip]
    tail = tokens if truncated else [*tokens, end_id]
    ids = torch.tensor([head + tail])
    one = {
        k: v[clip : clip + 1] for k, v in batch.items() if k in ("input_features", "feature_attention_mask")
    }
    with torch.no_grad():
        logits = model(**audio_inputs(model, ids, one)).logits[0].float()
    logp = torch.log_softmax(logits[len(head) - 1 : -1], dim=-1)
    return logp.gather(-1, torch.tensor(tail)[:, None]).mean().item()


def test_best_of_n_is_the_read_out_of_the_most_likely_trajectory(tiny_lora, builder, examples):
    from ambig.rollout import sample

    model, _ = tiny_lora
    batch = builder.for_evaluation()(examples[:2])
    torch.manual_seed(6)
    out = run_tts(model, batch, builder, tts("best_of_n", n=3))
    torch.manual_seed(6)  # the same trajectories, sampled again
    again = sample(model, batch, builder, n=3, max_new_tokens=6, temperature=1.0, top_p=1.0)
    q_all = again.log_q.exp() / again.log_q.exp().sum(-1, keepdim=True)
    for clip in range(2):
        rows = range(clip * 3, clip * 3 + 3)
        means = [
            _mean_logp_by_hand(model, batch, again.tokens[r], bool(again.truncated[r]), builder.end_id, clip)
            for r in rows
        ]
        best = clip * 3 + max(range(3), key=lambda j: means[j])
        torch.testing.assert_close(out.q[clip], q_all[best].float(), atol=1e-5, rtol=0)
        assert out.texts[clip] == again.texts[best]  # the text shown is the chosen trajectory's


def test_verifier_best_of_n_is_the_read_out_of_the_trajectory_rated_highest(tiny_lora, builder, examples):
    from ambig.rollout import sample
    from ambig.tts.strategies import verifier_scores

    model, _ = tiny_lora
    batch = builder.for_evaluation()(examples[:2])
    torch.manual_seed(7)
    out = run_tts(model, batch, builder, tts("verifier_best_of_n", n=3))
    torch.manual_seed(7)
    again = sample(model, batch, builder, n=3, max_new_tokens=6, temperature=1.0, top_p=1.0)
    p_yes = verifier_scores(model, batch, builder, again, 3)
    q_all = again.log_q.exp() / again.log_q.exp().sum(-1, keepdim=True)
    for clip in range(2):
        best = clip * 3 + int(p_yes[clip].argmax())
        torch.testing.assert_close(out.q[clip], q_all[best].float(), atol=1e-5, rtol=0)
    # one trajectory: both selection strategies give that trajectory's read-out
    for name in ("best_of_n", "verifier_best_of_n"):
        torch.manual_seed(4)
        one = run_tts(model, batch, builder, tts(name, n=1))
        torch.manual_seed(4)
        single = run_tts(model, batch, builder, tts("self_consistency", n=1))
        torch.testing.assert_close(one.q, single.q)


def test_unknown_strategy_is_refused(tiny_lora, builder, examples):
    with pytest.raises(ValueError, match="tts='beam'"):
        run_tts(tiny_lora[0], builder.for_evaluation()(examples[:1]), builder, tts("beam"))


@pytest.mark.slow
def test_every_strategy_evaluates_a_trained_checkpoint(isolated):
    import math

    sft = run(make_cfg(), isolated / "sft")
    for name in TTS_STRATEGIES:
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            overrides = [
                *FAST,
                f"tts={name}",
                "tts.n=2",
                "decoding.max_new_tokens=6",
                "decoding.refuse_short_budget=false",
            ]
            cfg = compose("evaluate", overrides=[*overrides, f"checkpoint={isolated / 'sft'}"])
        metrics = evaluate(cfg, isolated / f"eval-{name}")
        assert metrics["strategy"] == "base" and metrics["tts"]["name"] == name
        assert metrics["initialised_from"] == sft["best_checkpoint"] and metrics["n"] == sft["n"]
        assert all(math.isfinite(metrics[k]) for k in ("js", "bc", "r2", "brier", "kl")), name
        compute = metrics["compute"]
        n = {"direct": 0, "cot_greedy": 1}.get(name, 2)  # trajectories per clip
        assert n <= compute["generated_tokens_per_clip"] <= 6 * n, name
        assert compute["forward_passes_per_clip"] >= max(1, compute["generated_tokens_per_clip"]), name
        assert compute["test_wall_s"] > 0
        out = isolated / f"eval-{name}" / "predictions.jsonl"
        rows = [json.loads(x) for x in out.read_text().splitlines()]
        assert len(rows) == metrics["n"] and all(abs(sum(r["q"]) - 1) < 1e-5 for r in rows), name
        if name == "vote":  # frequencies of the 2 trajectories' answers
            assert all(abs(v * 2 - round(v * 2)) < 1e-5 for r in rows for v in r["q"])


@pytest.mark.slow
def test_the_sweep_runs_at_smoke_scale_and_the_report_draws_compute_vs_quality(isolated):
    import os
    import subprocess
    import sys

    from ambig.report.build import build_report

    env = {**os.environ, "AMBIG_RUNS_DIR": str(isolated / "runs"), "AMBIG_CACHE_DIR": str(isolated / "cache")}
    cmd = [sys.executable, "-m", "ambig.evaluate", "-m", "experiment=tts_sweep", "scale=smoke", "tts.n=1,2"]
    cmd += ["tts=self_consistency,verifier"]  # two of its strategies (every one: the benchmark's tests)
    cmd += [
        "dataset.corpus.n_utterances=30",
        "logger=none",
        "decoding.max_new_tokens=6",
        "decoding.refuse_short_budget=false",
    ]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = (isolated / "runs" / "multirun").glob("*")
    report = build_report([sweep])
    labels = {c.key.strategy for c in report.aggregate.cells}
    assert labels == {f"base+{t}-n{n}" for t in ("self_consistency", "verifier") for n in (1, 2)}
    assert (report.out_dir / "tts_compute.png").read_bytes()[:4] == b"\x89PNG"

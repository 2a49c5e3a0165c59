"""Every generate runs with ambig's pinned configuration: nothing comes from the model's generation_config."""

from __future__ import annotations

import json
import logging
import shutil

import torch
from transformers import GenerationConfig

from ambig.generation import differences, pinned, pinned_config
from ambig.model.load import load_model, resolve_source
from ambig.rollout import decode, sample

# What releases ship in generation_config.json, and more: each would change greedy or sampled outputs.
POISON = {
    "do_sample": True,
    "temperature": 0.3,
    "top_k": 3,
    "top_p": 0.5,
    "repetition_penalty": 1.8,
    "no_repeat_ngram_size": 2,
    "min_new_tokens": 5,
    "bad_words_ids": [[40], [41]],
    "typical_p": 0.5,
    "num_beams": 2,
}


def poisoned_copy(tiny_cfg_factory, where):
    source = resolve_source(tiny_cfg_factory(lora=False))
    target = where / "poisoned"
    shutil.copytree(source, target)
    (target / "generation_config.json").write_text(json.dumps(POISON))
    return target


def test_a_poisoned_generation_config_changes_nothing(tiny_cfg_factory, builder, examples, tmp_path, caplog):
    clean, _ = load_model(tiny_cfg_factory(lora=False))
    poisoned, _ = load_model(
        tiny_cfg_factory(lora=False, path=str(poisoned_copy(tiny_cfg_factory, tmp_path)))
    )
    assert poisoned.generation_config.top_k == 3  # the file was read: the model carries its values
    clean.eval(), poisoned.eval()
    batch = builder.for_evaluation()(examples[:3])
    with caplog.at_level(logging.INFO, logger="ambig.generation"):
        greedy = [decode(m, batch, builder, max_new_tokens=12) for m in (clean, poisoned)]
        sampled = []
        for m in (clean, poisoned):
            torch.manual_seed(0)
            sampled.append(sample(m, batch, builder, n=4, max_new_tokens=12, temperature=1.0, top_p=1.0))
    for a, b in (greedy, sampled):
        assert a.tokens == b.tokens
        torch.testing.assert_close(a.log_q, b.log_q)
    assert poisoned.generation_config.top_k == 3  # put back after each call
    # Said once per model and mode (greedy, sampling), naming what the file would have changed.
    notes = [r.getMessage() for r in caplog.records if "generation_config differs" in r.getMessage()]
    assert len(notes) == 2
    greedy_note, sampling_note = notes
    assert "decodes greedily" in greedy_note and "repetition_penalty=1.8->1.0" in greedy_note
    assert "do_sample=True->False" in greedy_note and "top_k" not in greedy_note
    assert (
        "samples" in sampling_note
        and "top_k=3->0" in sampling_note
        and "temperature=0.3->1.0" in sampling_note
    )


def test_the_poison_would_have_changed_the_samples(tiny_cfg_factory, builder, examples, tmp_path):
    """The test above could fail: letting transformers fill the knobs from the file changes the outputs."""
    poisoned, _ = load_model(
        tiny_cfg_factory(lora=False, path=str(poisoned_copy(tiny_cfg_factory, tmp_path)))
    )
    poisoned.eval()
    batch = builder.for_evaluation()(examples[:3])
    ours = decode(poisoned, batch, builder, max_new_tokens=12).tokens
    theirs = poisoned.generate(
        input_ids=batch["prompt_ids"],
        attention_mask=batch["prompt_mask"],
        input_features=batch["input_features"],
        feature_attention_mask=batch["feature_attention_mask"],
        max_new_tokens=12,
        do_sample=False,  # even greedy: repetition penalty, n-gram ban, bad words and min length still apply
        num_beams=1,
        pad_token_id=builder.pad_id,
        eos_token_id=builder.end_id,
    )[:, batch["prompt_ids"].shape[1] :]
    assert [row[: len(o)] for row, o in zip(theirs.tolist(), ours, strict=True)] != ours


def test_pinned_config_sets_every_sampling_knob_and_nothing_leaks_in():
    config = pinned_config(
        max_new_tokens=7, do_sample=True, temperature=0.7, top_p=0.9, pad_token_id=0, eos_token_id=1,
        suppress_tokens=[3],
    )  # fmt: skip
    assert (config.top_k, config.repetition_penalty, config.no_repeat_ngram_size) == (0, 1.0, 0)
    assert (config.min_new_tokens, config.num_beams, config.bad_words_ids) == (0, 1, None)
    assert (config.temperature, config.top_p, config.max_new_tokens) == (0.7, 0.9, 7)

    class Holder(torch.nn.Module):
        generation_config = GenerationConfig(**POISON)

    holder = Holder()
    own = holder.generation_config
    with pinned(holder, config):
        assert holder.generation_config is config
    assert holder.generation_config is own
    diff = differences(own, config)
    assert diff["temperature"] == (0.3, 0.7) and diff["top_k"] == (3, 0) and "top_p" in diff

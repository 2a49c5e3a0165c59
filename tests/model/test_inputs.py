"""BatchBuilder: padding invariance of the read-out, labels, audio reaching the loss, cot=False, errors."""

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ambig.data.synthetic import CLASSES
from ambig.model.inputs import IGNORE, BatchBuilder, Example
from ambig.rollout import read_after
from ambig.scoring import full_logits

SAMPLE_RATE = 16000


def _logits(model, batch):
    with torch.no_grad():
        return full_logits(model, batch)


def _answer_q(model, batch, builder):
    logits = _logits(model, batch)
    rows = torch.arange(logits.shape[0])
    return torch.softmax(logits[rows, batch["answer_index"]][:, builder.class_ids], dim=-1)


def _span(batch, b):
    """(first real position, prompt length) of row b."""
    start = batch["input_ids"].shape[1] - int(batch["attention_mask"][b].sum())
    return start, int(batch["prompt_mask"][b].sum())


def _by_length(builder, examples):
    return sorted(examples, key=lambda e: builder([e])["input_ids"].shape[1])


def test_padding_invariance(tiny_base, builder, examples):
    model, _ = tiny_base
    ordered = _by_length(builder, examples[:8])
    shortest, middle, longest = ordered[0], ordered[len(ordered) // 2], ordered[-1]
    alone = builder([middle])
    batch = builder([longest, middle, shortest])
    # Precondition: the utterance really is left-padded in the batch, and its neighbour more so.
    assert batch["attention_mask"][1].sum() < batch["attention_mask"].shape[1]
    assert batch["attention_mask"][2].sum() < batch["attention_mask"][1].sum()
    assert batch["answer_index"][1] != alone["answer_index"][0]

    q_alone = _answer_q(model, alone, builder)[0]
    q_batch = _answer_q(model, batch, builder)
    torch.testing.assert_close(q_batch[1], q_alone, atol=1e-5, rtol=0)
    q_short_alone = _answer_q(model, builder([shortest]), builder)[0]
    torch.testing.assert_close(q_batch[2], q_short_alone, atol=1e-5, rtol=0)

    cont = builder.tokenizer("Keywords: loud", add_special_tokens=False).input_ids
    r_alone = read_after(model, alone, builder, [cont]).exp()[0]
    r_batch = read_after(model, batch, builder, [cont[:1], cont, []]).exp()
    torch.testing.assert_close(r_batch[1], r_alone, atol=1e-5, rtol=0)


def test_labels_mask_the_prompt_and_the_answer_word(builder, examples, tiny_base):
    _, processor = tiny_base
    with_word = BatchBuilder(processor, CLASSES, cot=True, ce_answer_word=True, sample_rate=SAMPLE_RATE)
    chosen = examples[:3]
    batch, batch_w = builder(chosen), with_word(chosen)
    tok = builder.tokenizer
    for b, ex in enumerate(chosen):
        ids, labels = batch["input_ids"][b], batch["labels"][b]
        start, plen = _span(batch, b)
        a = int(batch["answer_index"][b])
        answer_tok = builder.class_ids[CLASSES.index(ex.record.majority(CLASSES))]
        # Padding and prompt are never labelled; the prompt is the generation prompt verbatim.
        assert (labels[: start + plen] == IGNORE).all()
        prompt_row = batch["prompt_ids"][b][batch["prompt_mask"][b].bool()]
        assert torch.equal(ids[start : start + plen], prompt_row)
        # The answer position holds the prefix's last token; the next input is the majority class token.
        assert ids[a - len(builder.prefix_ids) + 1 : a + 1].tolist() == builder.prefix_ids
        assert int(ids[a + 1]) == answer_tok
        assert int(labels[a + 1]) == IGNORE
        assert int(labels[a + 2]) == builder.end_id and int(ids[a + 2]) == builder.end_id
        assert a + 3 == len(ids)
        # Everything between the prompt and the answer word is labelled with itself: CoT + "\nAnswer:".
        target = labels[start + plen : a + 1]
        assert (target != IGNORE).all()
        assert torch.equal(target, ids[start + plen : a + 1])
        assert tok.decode(target.tolist()) == ex.record.cot + "\nAnswer:"
        # With ce_answer_word the answer word is labelled, and nothing else changes.
        assert int(batch_w["labels"][b][a + 1]) == answer_tok
        assert torch.equal(batch_w["input_ids"][b], ids)
        changed = (batch_w["labels"][b] != labels).nonzero().flatten().tolist()
        assert changed == [a + 1]
    torch.testing.assert_close(batch["p"], torch.tensor([e.record.soft_label for e in chosen]))
    assert batch["ids"] == [e.record.id for e in chosen]


def test_audio_reaches_read_out_and_loss(tiny_lora, examples, make_sft):
    model, processor = tiny_lora
    builder = BatchBuilder(processor, CLASSES, cot=True, ce_answer_word=False, sample_rate=SAMPLE_RATE)
    ex = examples[0]
    noise = np.random.default_rng(0).normal(0.0, 0.3, ex.audio.shape).astype(np.float32)
    batch = builder([ex, Example(ex.record, noise)])
    # Same length audio, same text: the token sequences are identical, only the audio differs.
    assert torch.equal(batch["input_ids"][0], batch["input_ids"][1])
    assert not torch.equal(batch["input_features"][0], batch["input_features"][1])
    logits = _logits(model, batch)
    q = torch.softmax(logits[torch.arange(2), batch["answer_index"]][:, builder.class_ids], -1)
    assert (q[0] - q[1]).abs().max() > 1e-6
    ce = [
        float(F.cross_entropy(logits[i, :-1], batch["labels"][i, 1:], ignore_index=IGNORE)) for i in range(2)
    ]
    assert abs(ce[0] - ce[1]) > 1e-6

    sft = make_sft(model, builder, lr=1e-4)
    towers = [m for n, m in model.named_modules() if n.endswith("audio_tower")]
    assert len(towers) == 1
    calls = []
    handle = towers[0].register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    try:
        with torch.no_grad():
            loss_real, _ = sft.training_loss(builder([ex]))
            loss_noise, _ = sft.training_loss(builder([Example(ex.record, noise)]))
    finally:
        handle.remove()
    assert len(calls) == 2 and calls[0][0] == 1
    assert abs(float(loss_real) - float(loss_noise)) > 1e-6


def test_direct_answer_target(tiny_base, examples):
    _, processor = tiny_base
    for ce_word in (False, True):
        builder = BatchBuilder(processor, CLASSES, cot=False, ce_answer_word=ce_word, sample_rate=SAMPLE_RATE)
        batch = builder(examples[:2])
        for b, ex in enumerate(examples[:2]):
            start, plen = _span(batch, b)
            answer_tok = builder.class_ids[CLASSES.index(ex.record.majority(CLASSES))]
            target = batch["input_ids"][b][start + plen :].tolist()
            assert target == builder.prefix_ids + [answer_tok, builder.end_id]
            labels = batch["labels"][b][start + plen :].tolist()
            assert labels == builder.prefix_ids + [answer_tok if ce_word else IGNORE, builder.end_id]
            assert int(batch["answer_index"][b]) == start + plen + len(builder.prefix_ids) - 1
            prompt = builder.tokenizer.decode(batch["prompt_ids"][b][batch["prompt_mask"][b].bool()])
            assert "Reason step by step" not in prompt and "Give the emotion as" in prompt


def test_missing_cot_is_refused(builder, examples):
    ex = examples[0]
    bare = Example(dataclasses.replace(ex.record, cot=None), ex.audio)
    with pytest.raises(ValueError, match=ex.record.id):
        builder([examples[1], bare])


def test_evaluation_batches_need_no_cot_and_carry_no_targets(builder, examples):
    bare = Example(dataclasses.replace(examples[0].record, cot=None), examples[0].audio)
    batch = builder.for_evaluation()([bare, examples[1]])
    assert "labels" not in batch and "answer_index" not in batch
    assert batch["prompt_ids"].shape[0] == 2 and batch["p"].shape == (2, 4)
    assert builder.targets, "for_evaluation leaves the training builder unchanged"


def test_prompt_and_features_equal_the_processors_own(builder, examples, tiny_base):
    """The batch builder expands the audio placeholder itself (so cached features need no processor call)."""
    from ambig.data.features import extract
    from ambig.model import prompt

    _, processor = tiny_base
    for ex in examples[:3]:
        text = prompt.chat_prompt(CLASSES, ex.record.transcript, True)
        ref = processor(text=[text], audio=[ex.audio], sampling_rate=16000, return_tensors="pt")
        features = extract(processor.feature_extractor, ex.audio, 16000)
        assert builder.prompt_ids(ex.record.transcript, features.n_tokens) == ref["input_ids"][0].tolist()
        np.testing.assert_array_equal(features.arrays["input_features"], ref["input_features"][0].numpy())
        assert int(features.arrays["feature_attention_mask"].sum()) == int(
            ref["feature_attention_mask"][0].sum()
        )
        assert (
            features.n_tokens
            == (ref["input_ids"][0] == processor.tokenizer.convert_tokens_to_ids("<|AUDIO|>")).sum()
        )
        batch = builder.for_evaluation()([Example(ex.record, features=features)])
        torch.testing.assert_close(
            batch["feature_attention_mask"][0], ref["feature_attention_mask"][0].long()
        )


def test_the_hand_written_qwen2_audio_prompt_is_its_processors_chat_template(builder, tiny_base):
    """Qwen2-Audio's prompt is written by hand (ambig.model.prompt.QWEN2_AUDIO); it must be what the
    processor's own chat template writes for the same conversation (an audio part, then the instruction)."""
    from ambig.model import prompt

    _, processor = tiny_base
    for transcript in ("I can't believe it.", None):
        messages = prompt.conversation(CLASSES, transcript, True)
        theirs = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert builder.prompt_text(transcript) == theirs
        assert builder.family.verification_turn(processor) == prompt.verification_turn()

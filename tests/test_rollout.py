"""decode: one read-out per row; the fallback read after the trajectory; the from-generation read-out."""

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from ambig.rollout import decode, read_after


class ForceTokens(LogitsProcessor):
    """Makes generation emit fixed tokens per row; the raw logits (`output_logits`) stay the model's."""

    def __init__(self, rows, prompt_len):
        self.rows, self.prompt_len = rows, prompt_len

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_len
        forced = torch.full_like(scores, -float("inf"))
        for b, row in enumerate(self.rows):
            forced[b, row[step]] = 0.0
        return forced


class Forced:
    """A model whose `generate` writes the given token rows; forward passes are the model's own."""

    def __init__(self, model, rows):
        self.wrapped, self.rows = model, rows

    def __call__(self, **kwargs):
        return self.wrapped(**kwargs)

    def __getattr__(self, name):  # the model's own parts (its output head, its inner model)
        return getattr(self.wrapped, name)

    def generate(self, **kwargs):
        force = ForceTokens(self.rows, kwargs["input_ids"].shape[1])
        return self.wrapped.generate(**kwargs, logits_processor=LogitsProcessorList([force]))


def _words(builder, text):
    return builder.tokenizer(text, add_special_tokens=False).input_ids


def test_fallback_reads_after_the_trajectory(tiny_base, builder, examples):
    model, _ = tiny_base
    batch = builder(examples[:3])
    out = decode(model, batch, builder, max_new_tokens=4)
    assert out.log_q.shape == (3, len(builder.classes))
    torch.testing.assert_close(out.log_q.exp().sum(-1), torch.ones(3))
    assert len(out.tokens) == len(out.texts) == 3
    for row, text in zip(out.tokens, out.texts, strict=True):
        assert 0 < len(row) <= 4 and builder.end_id not in row
        assert text == builder.tokenizer.decode(row, skip_special_tokens=True)
    # A random model does not write "Answer:" in 4 tokens, so every row is read by one extra forward.
    assert not any(builder.prefix_ids == row[i : i + 2] for row in out.tokens for i in range(len(row)))
    assert out.answered.tolist() == [False, False, False]
    expected = read_after(model, batch, builder, [row + builder.newline_ids for row in out.tokens])
    torch.testing.assert_close(out.log_q, expected, atol=1e-5, rtol=0)


def test_read_out_from_generation_matches_teacher_forcing(tiny_base, builder, examples):
    model, _ = tiny_base
    batch = builder([examples[0], examples[1], examples[2]])
    assert len(set(batch["prompt_mask"].sum(1).tolist())) == 3  # three prompt lengths: left padding at work
    prefix = builder.prefix_ids
    cot = _words(builder, "Keywords: loud, fast")
    before = [cot[:3], cot[:1], cot[:4]]
    rows = [
        before[0] + prefix + _words(builder, " sad") + [builder.end_id],
        before[1] + prefix + _words(builder, " happy, sad"),
        before[2] + _words(builder, " 'hate' again"),  # never reaches the prefix
    ]
    width = max(len(r) for r in rows)
    rows = [r + [builder.end_id] * (width - len(r)) for r in rows]
    out = decode(Forced(model, rows), batch, builder, max_new_tokens=width)
    assert out.answered.tolist() == [True, True, False]
    assert out.tokens[0] == before[0] + prefix + _words(builder, " sad")
    # Rows 0 and 1: the generation's own logits after "Answer:" equal a teacher-forced forward's.
    expected = read_after(model, batch, builder, [before[0], before[1], []])
    torch.testing.assert_close(out.log_q[:2], expected[:2], atol=1e-4, rtol=0)
    # Row 2 (the only one without the prefix) is read after its trajectory plus a newline.
    fallback = read_after(model, batch, builder, [[], [], out.tokens[2] + builder.newline_ids])
    torch.testing.assert_close(out.log_q[2], fallback[2], atol=1e-5, rtol=0)
    torch.testing.assert_close(out.log_q.exp().sum(-1), torch.ones(3))


def test_pad_token_inside_trajectory_keeps_read_out_aligned(tiny_base, builder, examples):
    model, _ = tiny_base
    batch = builder(examples[:1])
    head = _words(builder, "Keywords: loud")
    written = head[:1] + [builder.pad_id] + head[1:]
    rows = [written + builder.prefix_ids + _words(builder, " sad") + [builder.end_id]]
    out = decode(Forced(model, rows), batch, builder, max_new_tokens=len(rows[0]))
    assert out.answered.tolist() == [True]
    expected = read_after(model, batch, builder, [written])
    torch.testing.assert_close(out.log_q, expected, atol=1e-4, rtol=0)


def test_trajectory_ending_with_the_prefix_is_read_after_it(tiny_base, builder, examples):
    model, _ = tiny_base
    batch = builder(examples[:1])
    written = _words(builder, "Keywords: loud")
    rows = [written + builder.prefix_ids]
    out = decode(Forced(model, rows), batch, builder, max_new_tokens=len(rows[0]))
    expected = read_after(model, batch, builder, [written])
    torch.testing.assert_close(out.log_q, expected, atol=1e-4, rtol=0)

"""Generate trajectories for a batch and read the emotion distribution after each one.

The read-out comes from the generation's own logits when the trajectory produced the answer prefix (no extra
forward); otherwise the prefix is appended and one forward pass reads it (so every rollout gets a q).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ambig.model.audio_encoding import audio_inputs
from ambig.model.inputs import BatchBuilder, left_pad, positions
from ambig.model.readout import answer_position, readout_log


@dataclass
class Decoded:
    """Per row: generated token ids (end and padding removed), text, log q (B, K), read from generation?"""

    tokens: list[list[int]]
    texts: list[str]
    log_q: torch.Tensor
    from_generation: torch.Tensor


def generation_audio(batch: dict) -> dict:
    """The audio arguments `generate` gets for a batch whose rows carry their own features."""
    return {
        "input_features": batch["input_features"],
        "feature_attention_mask": batch["feature_attention_mask"],
    }


@torch.no_grad()
def prefill(model, batch: dict, repeats: int = 1):
    """The KV cache of every prompt but its last token (the audio included), each row repeated `repeats`
    times (utterance-major), so a group's rollouts share one pass over their common prompt.

    `generate` given this cache and the full prompts runs only the last prompt token and what follows.
    """
    ids, mask = batch["prompt_ids"][:, :-1], batch["prompt_mask"][:, :-1]
    out = model(
        **audio_inputs(model, ids, batch), attention_mask=mask, position_ids=positions(mask), use_cache=True
    )
    cache = out.past_key_values
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    return cache


def audio_token_id(builder: BatchBuilder) -> int:
    return builder.tokenizer.convert_tokens_to_ids(builder.processor.audio_token)


def prompt_rows(batch: dict) -> list[list[int]]:
    return [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]


@torch.no_grad()
def last_logits(model, batch: dict, builder: BatchBuilder, tails: list[list[int]]) -> torch.Tensor:
    """Next-token logits (B, V) after each row's prompt (with its audio) + `tails[i]`, one forward."""
    rows = [head + tail for head, tail in zip(prompt_rows(batch), tails, strict=True)]
    ids, mask = left_pad(rows, builder.pad_id)
    ids, mask = ids.to(batch["prompt_ids"].device), mask.to(batch["prompt_ids"].device)
    logits = model(
        **audio_inputs(model, ids, batch), attention_mask=mask, position_ids=positions(mask)
    ).logits
    return logits[:, -1]


@torch.no_grad()
def read_after(model, batch: dict, builder: BatchBuilder, continuations: list[list[int]]) -> torch.Tensor:
    """log q after prompt + continuation + answer prefix, one forward for the batch."""
    tails = [cont + builder.prefix_ids for cont in continuations]
    return readout_log(last_logits(model, batch, builder, tails), builder.class_ids)


@torch.no_grad()
def decode(
    model,
    batch: dict,
    builder: BatchBuilder,
    *,
    max_new_tokens: int,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    past_key_values=None,
) -> Decoded:
    """One trajectory per row (greedy unless `do_sample`), then its read-out.

    `past_key_values`: a `prefill` cache of the prompts (the audio is in it, so none is passed again). A batch
    holding encoded audio instead of features is always prefilled this way.
    """
    if past_key_values is None and "encoded_audio" in batch:
        past_key_values = prefill(model, batch)
    out = model.generate(
        input_ids=batch["prompt_ids"],
        attention_mask=batch["prompt_mask"],
        # Explicit, as in every other forward: positions count real tokens from 0. Left to itself,
        # Qwen2.5-Omni's generate derives them from rope offsets it keeps on the model between calls, which
        # break when a prefilled call follows one of another batch size; for audio-only prompts its 3-D
        # positions are these same counts on all three axes.
        position_ids=positions(batch["prompt_mask"]),
        **({"past_key_values": past_key_values} if past_key_values is not None else generation_audio(batch)),
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=None,
        output_logits=True,
        return_dict_in_generate=True,
        pad_token_id=builder.pad_id,
        eos_token_id=builder.end_id,
        # A written audio placeholder would make every later forward over the trajectory (the read-out
        # fallback, a loss) count one audio token more than the features fill, and fail.
        suppress_tokens=[audio_token_id(builder)],
    )
    generated = out.sequences[:, batch["prompt_ids"].shape[1] :]
    steps = torch.stack(out.logits, dim=1)  # (B, T, V): step t predicts generated token t
    tokens, log_q, from_gen = [], [], []
    missing, continuations = [], []
    for b, row in enumerate(generated.tolist()):
        row = _trim(row, builder)
        tokens.append(row)
        pos = answer_position(row, builder.prefix_ids)
        if pos is not None and pos + 1 < steps.shape[1]:
            log_q.append(readout_log(steps[b, pos + 1], builder.class_ids))
            from_gen.append(True)
            continue
        log_q.append(None)
        from_gen.append(False)
        missing.append(b)
        # The budget ran out right after the prefix: read after the model's own prefix, not a second one.
        # Otherwise the prefix goes on a new line after whatever was written.
        cut = pos + 1 - len(builder.prefix_ids) if pos is not None else None
        continuations.append(row[:cut] if cut is not None else row + builder.newline_ids)
    if missing:
        sub = {k: (v[missing] if torch.is_tensor(v) else v) for k, v in batch.items()}
        filled = read_after(model, sub, builder, continuations)
        for i, b in enumerate(missing):
            log_q[b] = filled[i]
    texts = builder.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return Decoded(tokens, texts, torch.stack(log_q), torch.tensor(from_gen))


# What a rollout needs, per row: prompt, audio, human distribution (the teacher-forced keys are not copied).
ROLLOUT_KEYS = ("p", "prompt_ids", "prompt_mask", "input_features", "feature_attention_mask", "clip_index")


def expand(batch: dict, n: int) -> dict:
    """Each utterance's prompt, audio and p repeated `n` times, utterance-major (rows 0..n-1 are utterance 0).

    The audio is the batch's own: features are repeated as they are (nothing is extracted again); encoded
    audio is shared, the rows pointing at their clip through `clip_index`.
    """
    out = {k: batch[k].repeat_interleave(n, dim=0) for k in ROLLOUT_KEYS if k in batch}
    if "encoded_audio" in batch:
        out["encoded_audio"] = batch["encoded_audio"]
    out["ids"] = [uid for uid in batch["ids"] for _ in range(n)]
    return out


def sample(
    model,
    batch: dict,
    builder: BatchBuilder,
    *,
    n: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    share_prompt: bool = True,
) -> Decoded:
    """`n` sampled trajectories per utterance in one batched `generate`, each with its read-out.

    Rows are utterance-major: row `i * n + j` is utterance i's rollout j. With `share_prompt` the prompt
    (audio included) is run once per utterance and its cache copied to the n rollouts; without, each rollout
    row runs the whole prompt and the audio tower itself (the cost `make bench` compares).
    """
    return decode(
        model,
        expand(batch, n),
        builder,
        max_new_tokens=max_new_tokens,
        do_sample=True,
        temperature=temperature,
        top_p=top_p,
        past_key_values=prefill(model, batch, repeats=n) if share_prompt else None,
    )


def completions(decoded: Decoded, builder: BatchBuilder, max_new_tokens: int) -> list[list[int]]:
    """Each rollout's tokens as a completion to score: with the end-of-turn token when it wrote one.

    A row that stopped short of the budget ended with the end token (which `decode` trims); one that used
    the whole budget was cut and gets none.
    """
    return [row + [builder.end_id] if len(row) < max_new_tokens else row for row in decoded.tokens]


def _trim(row: list[int], builder: BatchBuilder) -> list[int]:
    """Generated ids up to (not including) the end-of-turn token; `generate` pads only after it."""
    return row[: row.index(builder.end_id)] if builder.end_id in row else row

"""Generate trajectories for a batch and read the emotion distribution after each one.

Every `generate` runs with the pinned configuration of `ambig.generation` (nothing comes from the model's
own generation_config.json). The read-out comes from the generation's own logits when the trajectory wrote
the answer prefix: a hook on the output head keeps the K class-token logits of every step, so the full
(rows x steps x vocabulary) logits are never kept. A trajectory without the prefix is `answered=False`;
with `fallback` (evaluation) the prefix is appended and one forward pass reads it, so every clip gets a q;
without (DPO / GRPO rollouts) its q is left NaN and the strategy gives it the unanswered reward instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ambig.generation import pinned, pinned_config
from ambig.model.audio_encoding import audio_inputs
from ambig.model.inputs import BatchBuilder, audio_keys, audio_token_id, left_pad, positions, prompt_rows
from ambig.model.readout import answer_position, readout_log
from ambig.scoring import next_token_logits, softcap, transformers_model


@dataclass
class Decoded:
    """Per row: generated token ids (end and padding removed), text, log q (B, K; NaN where unanswered and
    no fallback read it), whether it wrote the answer prefix (`answered`), whether the budget cut it
    (`truncated`: no end-of-turn token within max_new_tokens), and whether q needed the fallback forward."""

    tokens: list[list[int]]
    texts: list[str]
    log_q: torch.Tensor
    answered: torch.Tensor
    truncated: torch.Tensor
    fallback: torch.Tensor


def generation_audio(batch: dict, builder: BatchBuilder) -> dict:
    """The audio arguments `generate` gets for a batch whose rows carry their own audio inputs."""
    return {k: batch[k] for k in batch.get("audio_keys") or builder.audio_format.keys}


@torch.no_grad()
def prefill(model, batch: dict, repeats: int = 1):
    """The KV cache of every prompt but its last token (the audio included), each row repeated `repeats`
    times (utterance-major), so a group's rollouts share one pass over their common prompt.

    `generate` given this cache and the full prompts runs only the last prompt token and what follows. The
    pass runs the model without its output head (no logits are needed here).
    """
    ids, mask = batch["prompt_ids"][:, :-1], batch["prompt_mask"][:, :-1]
    out = transformers_model(model).model(
        **audio_inputs(model, ids, batch), attention_mask=mask, position_ids=positions(mask), use_cache=True
    )
    cache = out.past_key_values
    if repeats > 1:
        cache.batch_repeat_interleave(repeats)
    return cache


@torch.no_grad()
def last_logits(model, batch: dict, builder: BatchBuilder, tails: list[list[int]]) -> torch.Tensor:
    """Next-token logits (B, V) after each row's prompt (with its audio) + `tails[i]`, one forward."""
    rows = [head + tail for head, tail in zip(prompt_rows(batch), tails, strict=True)]
    ids, mask = left_pad(rows, builder.pad_id)
    device = batch["prompt_ids"].device
    return next_token_logits(model, ids.to(device), mask.to(device), batch)


@torch.no_grad()
def read_after(model, batch: dict, builder: BatchBuilder, continuations: list[list[int]]) -> torch.Tensor:
    """log q after prompt + continuation + answer prefix, one forward for the batch."""
    tails = [cont + builder.prefix_ids for cont in continuations]
    return readout_log(last_logits(model, batch, builder, tails), builder.class_ids)


class ClassLogits:
    """While active, keeps the class-token logits (B, K) of the last position of every output-head call:
    inside `generate`, step t's are those that chose generated token t. The model's logits (after its soft
    cap, if it has one: the hook sees the head's output), before any logits processor."""

    def __init__(self, model, class_ids):
        self.model = model
        self.head = transformers_model(model).lm_head
        self.index = torch.as_tensor(list(class_ids))
        self.steps: list[torch.Tensor] = []

    def _hook(self, module, args, output):
        picked = output[:, -1].index_select(-1, self.index.to(output.device))
        self.steps.append(softcap(self.model, picked).float())

    def __enter__(self):
        self.handle = self.head.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def stacked(self, n_steps: int) -> torch.Tensor:
        """(B, T, K) for the T generated tokens. Under sharded weights (FSDP) `generate` keeps stepping, with
        no token appended, until every process has finished (synced GPUs): those last calls are dropped."""
        if len(self.steps) < n_steps:
            raise RuntimeError(f"generate ran the output head {len(self.steps)} times for {n_steps} tokens")
        return torch.stack(self.steps[:n_steps], dim=1)


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
    fallback: bool = True,
) -> Decoded:
    """One trajectory per row (greedy unless `do_sample`), then its read-out.

    `past_key_values`: a `prefill` cache of the prompts (the audio is in it, so none is passed again). A batch
    holding encoded audio instead of features is always prefilled this way. `fallback`: read a trajectory
    that never wrote the answer prefix after appending it (one forward); without, its q is NaN.
    """
    if past_key_values is None and "encoded_audio" in batch:
        past_key_values = prefill(model, batch)
    config = pinned_config(
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        pad_token_id=builder.pad_id,
        eos_token_id=builder.end_id,
        # A written audio placeholder would make every later forward over the trajectory (the read-out
        # fallback, a loss) count one audio token more than the features fill, and fail.
        suppress_tokens=[audio_token_id(builder)],
    )
    with pinned(model, config), ClassLogits(model, builder.class_ids) as recorded:
        out = model.generate(
            generation_config=config,
            input_ids=batch["prompt_ids"],
            attention_mask=batch["prompt_mask"],
            # Explicit, as in every other forward: positions count real tokens from 0. Left to itself,
            # Qwen2.5-Omni's generate derives them from rope offsets it keeps on the model between calls,
            # which break when a prefilled call follows one of another batch size; for audio-only prompts its
            # 3-D positions are these same counts on all three axes.
            position_ids=positions(batch["prompt_mask"]),
            **(
                {"past_key_values": past_key_values}
                if past_key_values is not None
                else generation_audio(batch, builder)
            ),
        )
    generated = out.sequences[:, batch["prompt_ids"].shape[1] :]
    steps = recorded.stacked(generated.shape[1])  # (B, T, K): step t chose generated token t
    n_rows, n_classes = generated.shape[0], len(builder.class_ids)
    tokens, answered, truncated = [], [], []
    log_q = torch.full((n_rows, n_classes), float("nan"), device=steps.device)
    missing, continuations = [], []
    for b, raw in enumerate(generated.tolist()):
        row = _trim(raw, builder)
        tokens.append(row)
        truncated.append(builder.end_id not in raw)
        pos = answer_position(row, builder.prefix_ids)
        answered.append(pos is not None)
        if pos is not None and pos + 1 < steps.shape[1]:
            log_q[b] = torch.log_softmax(steps[b, pos + 1], dim=-1)
            continue
        if pos is None and not fallback:
            continue
        missing.append(b)
        # The budget ran out right after the prefix: read after the model's own prefix, not a second one.
        # Otherwise the prefix goes on a new line after whatever was written.
        cut = pos + 1 - len(builder.prefix_ids) if pos is not None else None
        continuations.append(row[:cut] if cut is not None else row + builder.newline_ids)
    if missing:
        sub = {
            k: (v[missing] if torch.is_tensor(v) else v) for k, v in batch.items()
        }  # encoded audio: shared
        log_q[missing] = read_after(model, sub, builder, continuations).to(log_q.device)
    used_fallback = torch.zeros(n_rows, dtype=torch.bool)
    used_fallback[[b for b in missing if not answered[b]]] = True
    texts = builder.tokenizer.batch_decode(tokens, skip_special_tokens=True)
    return Decoded(tokens, texts, log_q, torch.tensor(answered), torch.tensor(truncated), used_fallback)


# What a rollout needs, per row: prompt, human distribution and the audio (`audio_keys`; the teacher-forced
# keys are not copied).
ROLLOUT_KEYS = ("p", "prompt_ids", "prompt_mask")


def expand(batch: dict, n: int) -> dict:
    """Each utterance's prompt, audio and p repeated `n` times, utterance-major (rows 0..n-1 are utterance 0).

    The audio is the batch's own: features are repeated as they are (nothing is extracted again); encoded
    audio is shared, the rows pointing at their clip through `clip_index`.
    """
    per_row = [k for k in (*ROLLOUT_KEYS, *audio_keys(batch)) if k in batch and k != "encoded_audio"]
    out = {k: batch[k].repeat_interleave(n, dim=0) for k in per_row}
    if "encoded_audio" in batch:
        out["encoded_audio"] = batch["encoded_audio"]
    if "audio_keys" in batch:
        out["audio_keys"] = batch["audio_keys"]
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
    fallback: bool = True,
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
        fallback=fallback,
    )


def completions(decoded: Decoded, builder: BatchBuilder) -> list[list[int]]:
    """Each rollout's tokens as a completion to score: with the end-of-turn token when it wrote one (which
    `decode` trims); a row the budget cut gets none."""
    cuts = decoded.truncated.tolist()
    return [row if cut else row + [builder.end_id] for row, cut in zip(decoded.tokens, cuts, strict=True)]


def _trim(row: list[int], builder: BatchBuilder) -> list[int]:
    """Generated ids up to (not including) the end-of-turn token; `generate` pads only after it."""
    return row[: row.index(builder.end_id)] if builder.end_id in row else row

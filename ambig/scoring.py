"""Teacher-forced scoring: the model's logits, token and sequence log-probs of given continuations, and the
masks that say which tokens count. Below the strategies and test-time scaling, which all score through here.

Logits only where they are needed. Every scored row is left-padded (ambig.model.inputs), so its scored tokens
(a teacher-forced target or a sampled completion) end at the right edge: with C the longest scored part of
the batch, the head runs on the C positions that predict them (`target_logits`), not on every prompt and
audio position. For the 7B (vocabulary 156k, ~330 prompt positions) that is the difference between about
7.5 GB of bf16 logits for a GRPO batch and the completion's share of it. Log-probs are then taken in chunks
of rows (`token_logps`): the float upcast and log-softmax of one chunk at a time, recomputed in backward
(activation checkpointing of that one step), so the float copy of the whole (rows x positions x vocab)
tensor never exists.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ambig.model.audio_encoding import audio_inputs
from ambig.model.inputs import IGNORE, positions

# Upper bound on the float32 elements one chunk of `token_logps` upcasts at a time (256 MB).
CHUNK_ELEMENTS = 2**26


def transformers_model(model):
    """The transformers model (inside a PEFT wrapper, or itself): it holds `.model` and `.lm_head`."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def hidden_states(model, ids: Tensor, mask: Tensor, audio: dict) -> Tensor:
    """The last hidden states (B, L, H) of left-padded rows `ids` with the audio `audio` describes: the
    model's forward without its head (both families compute `lm_head(hidden_states)` on exactly this)."""
    inner = transformers_model(model).model
    out = inner(**audio_inputs(model, ids, audio), attention_mask=mask, position_ids=positions(mask))
    return out.last_hidden_state


def softcap(model, logits: Tensor) -> Tensor:
    """`logits` through the soft cap (cap * tanh(logits / cap)) the model's forward applies after its head
    (`final_logit_softcapping`: Gemma 3n's 30), the same operations in the same order; unchanged without
    one."""
    cap = getattr(transformers_model(model).config.get_text_config(), "final_logit_softcapping", None)
    return logits if cap is None else torch.tanh(logits / cap) * cap


def head(model, hidden: Tensor) -> Tensor:
    return softcap(model, transformers_model(model).lm_head(hidden))


def full_logits(model, batch: dict) -> Tensor:
    """Logits (B, L, V) at every position of prompt + teacher-forced target, with the audio (the model's own
    forward: what `target_logits` slices)."""
    mask = batch["attention_mask"]
    return model(
        **audio_inputs(model, batch["input_ids"], batch), attention_mask=mask, position_ids=positions(mask)
    ).logits


@dataclass
class TargetLogits:
    """Logits of the positions that predict a batch's scored tokens.

    `logits[:, j]` is the output at position `start + j` and predicts `input_ids[:, start + 1 + j]`; it covers
    positions `start .. L - 2`, so `targets(x)` = `x[:, start + 1:]` lines any (B, L) tensor up with it.
    """

    logits: Tensor
    start: int

    def targets(self, x: Tensor) -> Tensor:
        return x[:, self.start + 1 :]

    def at(self, positions: Tensor) -> Tensor:
        """Logits (B, V) at absolute positions (B,) (each at least `start`)."""
        rows = torch.arange(self.logits.shape[0], device=self.logits.device)
        return self.logits[rows, positions.to(self.logits.device) - self.start]


def scored_start(mask: Tensor) -> int:
    """The first position whose logits are needed: one before the leftmost scored token of any row."""
    cols = mask.bool().any(0).nonzero()
    if cols.numel() == 0:
        raise ValueError("nothing to score: the mask marks no token")
    return max(int(cols[0]) - 1, 0)


def target_logits(model, batch: dict, mask: Tensor, extra: Tensor | None = None) -> TargetLogits:
    """Logits of the positions predicting the tokens `mask` (B, L) marks, the head run only there.

    `extra`: absolute positions (B,) whose own logits are also needed (e.g. the answer position); the slice
    starts early enough to hold them.
    """
    start = scored_start(mask)
    if extra is not None:
        start = min(start, int(extra.min()))
    hidden = hidden_states(model, batch["input_ids"], batch["attention_mask"], batch)
    return TargetLogits(head(model, hidden[:, start:-1]), start)


def _token_logps(logits: Tensor, targets: Tensor, temperature: float, suppressed: tuple[int, ...]) -> Tensor:
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    if not suppressed:
        return logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    ids = torch.as_tensor(suppressed, device=logits.device)
    logits = logits.index_fill(-1, ids, float("-inf"))
    values = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    # A suppressed token is never a scored one (completions cannot hold it), but the scored window of a row
    # may reach into its prompt (the audio placeholders): 0 there instead of -inf, which a mask would turn
    # into NaN.
    return torch.where(torch.isin(targets, ids), torch.zeros_like(values), values)


def token_logps(
    logits: Tensor,
    targets: Tensor,
    temperature: float = 1.0,
    chunk_elements: int = CHUNK_ELEMENTS,
    suppressed: tuple[int, ...] = (),
) -> Tensor:
    """log softmax(logits / temperature) of each target token: (B, T, V), (B, T) -> (B, T), float32.

    `suppressed`: token ids the sampler never emits (generation's `suppress_tokens`), left out of the softmax
    as sampling leaves them out. Rows are processed in chunks of at most `chunk_elements` logits; with
    gradients, each chunk's upcast and log-softmax are recomputed in backward instead of kept, so memory holds
    one chunk's float copy.
    """
    if logits.shape[:2] != targets.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and targets {tuple(targets.shape)} do not line up")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    per_row = max(1, logits.shape[1] * logits.shape[2])
    rows = max(1, chunk_elements // per_row)
    targets = targets.clamp(min=0)  # ignored label positions (-100) are masked by the caller
    pieces = []
    for i in range(0, logits.shape[0], rows):
        chunk, goal = logits[i : i + rows], targets[i : i + rows]
        if torch.is_grad_enabled() and chunk.requires_grad:
            pieces.append(checkpoint(_token_logps, chunk, goal, temperature, suppressed, use_reentrant=False))
        else:
            pieces.append(_token_logps(chunk, goal, temperature, suppressed))
    return torch.cat(pieces) if pieces else logits.new_zeros(targets.shape, dtype=torch.float32)


def masked_sum(values: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.bool(), values, torch.zeros_like(values)).sum(-1)


def sequence_logps_of(scored: TargetLogits, ids: Tensor, mask: Tensor, temperature: float = 1.0) -> Tensor:
    """Summed log-probs (B,) of the tokens `mask` marks, from `target_logits`."""
    per_token = token_logps(scored.logits, scored.targets(ids), temperature)
    return masked_sum(per_token, scored.targets(mask))


def token_ce(scored: TargetLogits, labels: Tensor) -> Tensor:
    """Mean next-token cross-entropy over the labelled tokens (labels aligned with the inputs, -100 ignored),
    as `F.cross_entropy(..., ignore_index=-100)` computes it."""
    goal = scored.targets(labels)
    keep = goal != IGNORE
    if not keep.any():
        return scored.logits.sum() * 0.0
    per_token = token_logps(scored.logits, goal)
    return -masked_sum(per_token, keep).sum() / keep.sum()


def target_mask(batch: dict) -> Tensor:
    """1 on the teacher-forced target's tokens (CoT, answer word, end token), 0 on prompt and padding."""
    prompt_len = batch["prompt_mask"].sum(1, keepdim=True).to(batch["position_ids"].device)
    return batch["attention_mask"].bool() & (batch["position_ids"] >= prompt_len)


def completion_logps(
    model, seqs: dict, temperature: float = 1.0, suppressed: tuple[int, ...] = ()
) -> tuple[Tensor, Tensor]:
    """Per-token log-probs (N, T) of each row's completion (`seqs` as `completion_batch` builds it), under
    softmax(logits / temperature) without the `suppressed` tokens, and the mask (N, T) of the completion
    tokens they score."""
    scored = target_logits(model, seqs, seqs["completion_mask"])
    goal, mask = scored.targets(seqs["input_ids"]), scored.targets(seqs["completion_mask"])
    return token_logps(scored.logits, goal, temperature, suppressed=suppressed), mask


def next_token_logits(model, ids: Tensor, mask: Tensor, audio: dict) -> Tensor:
    """Logits (B, V) after each left-padded row of `ids` (with the audio `audio` describes), the head run on
    the last position only."""
    return head(model, hidden_states(model, ids, mask, audio)[:, -1])

"""Run the frozen audio tower once per clip and feed its output to every forward pass that needs the clip.

Qwen2-Audio's own forward runs the audio tower on every row it gets. A GRPO step scores N = B * (G + 1)
rows (policy, reference, old policy) that share B clips, so it would run the tower 3N times for B distinct
inputs. When the tower is frozen (LoRA leaves it alone: every shipped model config), its output depends only
on the clip: `encode_audio` computes it once per clip and `embed_with_audio` builds each row's input
embeddings from it exactly as the model's forward does (token embeddings, with the audio positions replaced by
the projected audio features). The projector runs inside that call, so a trainable projector still gets its
gradient and a disabled adapter still switches it back.

A row is tied to its clip by `clip_index` (row -> clip), so rows never carry copies of the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from transformers.masking_utils import create_bidirectional_mask


def _audio_model(model):
    """The `Qwen2AudioModel` inside `model` (a PEFT wrapper or a `Qwen2AudioForConditionalGeneration`)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


def audio_tower_frozen(model) -> bool:
    """True when no parameter of the audio tower trains (its output is then a function of the clip)."""
    return not any(p.requires_grad for p in _audio_model(model).audio_tower.parameters())


@dataclass
class EncodedAudio:
    """The audio tower's output per clip: `hidden` (C, T, D), `lengths` (C,) = audio tokens per clip."""

    hidden: Tensor
    lengths: Tensor

    def to(self, device) -> EncodedAudio:
        return EncodedAudio(self.hidden.to(device), self.lengths.to(device))


@torch.no_grad()
def encode_audio(model, input_features: Tensor, feature_attention_mask: Tensor) -> EncodedAudio:
    """The audio tower on each clip once, with the padding mask Qwen2-Audio's forward builds."""
    inner = _audio_model(model)
    tower = inner.audio_tower
    if not audio_tower_frozen(model):
        raise ValueError(
            "encode_audio caches the audio tower's output, but the tower has trainable parameters: "
            "its output would go stale; run the model's own forward instead"
        )
    input_features = input_features.to(tower.device, tower.dtype)
    feature_attention_mask = feature_attention_mask.to(tower.device)
    feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    n_clips, _, n_mel_frames = input_features.shape
    width = (n_mel_frames - 2) // 2 + 1
    valid = torch.arange(width, device=feat_lengths.device)[None, :] < feat_lengths[:, None]
    mask = create_bidirectional_mask(
        config=tower.config,
        inputs_embeds=torch.zeros((n_clips, width, 1), dtype=input_features.dtype, device=tower.device),
        attention_mask=valid.long(),
    )
    hidden = tower(input_features, attention_mask=mask).last_hidden_state
    return EncodedAudio(hidden, out_lengths)


def embed_with_audio(model, input_ids: Tensor, encoded: EncodedAudio, clip_index: Tensor) -> Tensor:
    """Input embeddings (N, L, H) of `input_ids`, the audio tokens of row i filled from clip `clip_index[i]`.

    Equal to what the model's forward builds from the features of that clip.
    """
    inner = _audio_model(model)
    audio_token = inner.config.audio_token_id
    embeds = inner.get_input_embeddings()(input_ids)
    projected = inner.multi_modal_projector(encoded.hidden.to(embeds.device))  # (C, T, H): once per clip
    clip_index = clip_index.to(embeds.device)
    lengths = encoded.lengths.to(embeds.device)[clip_index]
    valid = torch.arange(projected.shape[1], device=embeds.device)[None, :] < lengths[:, None]
    slots = input_ids == audio_token
    wrong = (slots.sum(1) != lengths).nonzero().flatten().tolist()
    if wrong:
        raise ValueError(
            f"rows {wrong} hold {slots.sum(1)[wrong].tolist()} audio tokens but their clips give "
            f"{lengths[wrong].tolist()} audio features: a row's prompt does not belong to the clip "
            "`clip_index` names"
        )
    features = projected[clip_index][valid]
    return embeds.masked_scatter(slots.unsqueeze(-1), features.to(embeds.dtype))


def audio_inputs(model, input_ids: Tensor, audio: dict) -> dict:
    """The model's keyword arguments for rows `input_ids` whose audio `audio` describes.

    `audio` holds either the rows' own features (`input_features`, `feature_attention_mask`, one per row) or
    the clips' encoded audio (`encoded_audio`, `clip_index`, row -> clip).
    """
    if "encoded_audio" in audio:
        return {
            "inputs_embeds": embed_with_audio(model, input_ids, audio["encoded_audio"], audio["clip_index"])
        }
    return {
        "input_ids": input_ids,
        "input_features": audio["input_features"],
        "feature_attention_mask": audio["feature_attention_mask"],
    }


def with_encoded_audio(model, batch: dict) -> dict:
    """`batch` with its features replaced by their encoding (one clip per row, clip_index = row)."""
    out = {k: v for k, v in batch.items() if k not in ("input_features", "feature_attention_mask")}
    out["encoded_audio"] = encode_audio(model, batch["input_features"], batch["feature_attention_mask"])
    out["clip_index"] = torch.arange(len(batch["ids"]), device=batch["prompt_ids"].device)
    return out

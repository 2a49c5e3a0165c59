"""Run the frozen audio tower once per clip and feed its output to every forward pass that needs the clip.

The model's own forward runs the audio tower on every row it gets. A GRPO step scores N = B * (G + 1) rows
(policy, reference, old policy) that share B clips, so it would run the tower 3N times for B distinct inputs.
When the tower is frozen (LoRA leaves it alone: every shipped model config), its output depends only on the
clip: `encode_audio` computes it once per clip and `embed_with_audio` builds each row's input embeddings from
it exactly as the model's forward does (token embeddings, with the audio positions replaced by the audio
features in the language model's width).

Both model families (ambig.model.family) are covered; they differ in the tower call and the last step:
- qwen2_audio: a Whisper encoder over the padded window with a padding mask, then the separate
  `multi_modal_projector`. The projector runs inside `embed_with_audio`, so a trainable projector still gets
  its gradient and a disabled adapter still switches it back.
- qwen2_5_omni_thinker: the encoder takes each clip's valid frames in 2 s windows and ends in its own
  projection into the language model's width (part of the frozen tower), so the cached output is final.

A row is tied to its clip by `clip_index` (row -> clip), so rows never carry copies of the features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers.masking_utils import create_bidirectional_mask

from ambig.model.family import family_of


def _audio_model(model):
    """The multimodal model inside `model` (a PEFT wrapper or the transformers model): `Qwen2AudioModel` or
    `Qwen2_5OmniThinkerModel`, the one holding `audio_tower`."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model


# the families whose tower output `encode_audio` can cache (the others run their own forward every pass; Gemma
# 3n's inputs_embeds path would also need its per_layer_inputs, which `embed_with_audio` does not build)
ENCODABLE = ("qwen2_audio", "qwen2_5_omni")


def audio_tower_frozen(model) -> bool:
    """True when no parameter of the audio tower trains (its output is then a function of the clip)."""
    tower = family_of(model).towers[0]
    return not any(p.requires_grad for n, p in model.named_parameters() if f".{tower}." in f".{n}")


def can_encode_once(model) -> bool:
    """The audio tower is frozen and `encode_audio` knows how to run it for this family."""
    return family_of(model).architecture in ENCODABLE and audio_tower_frozen(model)


@dataclass
class EncodedAudio:
    """The audio tower's output per clip: `hidden` (C, T, D), `lengths` (C,) = audio tokens per clip."""

    hidden: Tensor
    lengths: Tensor

    def to(self, device) -> EncodedAudio:
        return EncodedAudio(self.hidden.to(device), self.lengths.to(device))


@torch.no_grad()
def encode_audio(model, input_features: Tensor, feature_attention_mask: Tensor) -> EncodedAudio:
    """The audio tower on each clip once, as the model's own forward runs it."""
    if not audio_tower_frozen(model):
        raise ValueError(
            "encode_audio caches the audio tower's output, but the tower has trainable parameters: "
            "its output would go stale; run the model's own forward instead"
        )
    tower = _audio_model(model).audio_tower
    input_features = input_features.to(tower.device, tower.dtype)
    feature_attention_mask = feature_attention_mask.to(tower.device)
    family = family_of(model)
    if family.architecture == "qwen2_audio":
        return _encode_qwen2_audio(tower, input_features, feature_attention_mask)
    if family.architecture == "qwen2_5_omni":
        return _encode_omni(_audio_model(model), input_features, feature_attention_mask)
    raise ValueError(f"encode_audio has no implementation for model family {family.name!r}")


def _encode_qwen2_audio(tower, input_features: Tensor, feature_attention_mask: Tensor) -> EncodedAudio:
    """Whisper over the padded window with the padding mask Qwen2-Audio's forward builds."""
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


def _encode_omni(inner, input_features: Tensor, feature_attention_mask: Tensor) -> EncodedAudio:
    """The thinker's own audio-feature call (all clips' valid frames, concatenated), split back per clip."""
    flat = inner.get_audio_features(input_features, feature_attention_mask).last_hidden_state  # (sum T, H)
    _, out_lengths = inner.audio_tower._get_feat_extract_output_lengths(feature_attention_mask.sum(-1))
    hidden = pad_sequence(flat.split(out_lengths.tolist()), batch_first=True)
    return EncodedAudio(hidden, out_lengths)


def _to_text_width(model, hidden: Tensor) -> Tensor:
    """The encoded audio as language-model inputs: Qwen2-Audio's projector, or (Qwen2.5-Omni, whose tower
    ends in its own projection) the encoding as it is."""
    inner = _audio_model(model)
    if family_of(model).architecture == "qwen2_audio":
        return inner.multi_modal_projector(hidden)
    return hidden


def embed_with_audio(model, input_ids: Tensor, encoded: EncodedAudio, clip_index: Tensor) -> Tensor:
    """Input embeddings (N, L, H) of `input_ids`, the audio tokens of row i filled from clip `clip_index[i]`.

    Equal to what the model's forward builds from the features of that clip.
    """
    inner = _audio_model(model)
    audio_token = inner.config.audio_token_id
    embeds = inner.get_input_embeddings()(input_ids)
    projected = _to_text_width(model, encoded.hidden.to(embeds.device))  # (C, T, H): once per clip
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


def own_audio(model, audio: dict) -> dict:
    """The rows' own audio inputs in `audio` (one row each): the keys it names in `audio_keys`, else those of
    the model's family (ambig.model.audio_formats)."""
    keys = audio.get("audio_keys") or family_of(model).audio_format.keys
    missing = [k for k in keys if k not in audio]
    if missing:
        raise ValueError(f"the batch lacks the audio inputs {missing} the model's family takes")
    return {k: audio[k] for k in keys}


def audio_inputs(model, input_ids: Tensor, audio: dict) -> dict:
    """The model's keyword arguments for rows `input_ids` whose audio `audio` describes.

    `audio` holds either the rows' own inputs (the family's keys, e.g. `input_features` and
    `feature_attention_mask`, one per row) or the clips' encoded audio (`encoded_audio`, `clip_index`,
    row -> clip).
    """
    if "encoded_audio" in audio:
        return {
            "inputs_embeds": embed_with_audio(model, input_ids, audio["encoded_audio"], audio["clip_index"])
        }
    return {"input_ids": input_ids, **own_audio(model, audio)}


def with_encoded_audio(model, batch: dict, cache=None) -> dict:
    """`batch` with its features replaced by their encoding (one clip per row, clip_index = row); with a
    `cache` (ambig.model.audio_cache), clips it already holds are not encoded again."""
    out = {
        k: v for k, v in batch.items() if k not in ("input_features", "feature_attention_mask", "audio_keys")
    }
    if cache is not None:
        out["encoded_audio"] = cache.encode(model, batch)
    else:
        out["encoded_audio"] = encode_audio(model, batch["input_features"], batch["feature_attention_mask"])
    out["clip_index"] = torch.arange(len(batch["ids"]), device=batch["prompt_ids"].device)
    return out

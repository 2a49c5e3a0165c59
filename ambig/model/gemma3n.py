"""Gemma 3n (google/gemma-3n-E4B-it) in ambig: loaded without its vision tower; its processor; its audio span.

The vision tower. `Gemma3nModel.__init__` builds `model.vision_tower` with
`AutoModel.from_config(vision_config)` (transformers' models/gemma3n/modeling_gemma3n.py): a
`TimmWrapperModel` around timm's MobileNetV5 (~300 M parameters in E4B). timm imports torchvision, and the
registry's torchvision wheel is a CUDA build that does not load beside a CPU torch, so without them the model
cannot even be constructed. ambig never passes images, so the family always builds the model under
`without_vision_tower()`: `model.vision_tower` is a parameterless `NoVisionTower` whatever is installed (also
where timm and torchvision are: the twin's weights, the real model's memory and FSDP's units then do not
depend on the machine). Only the tower is replaced: `embed_vision` (the hard embedding of the vision token
block, which text ids can reach) loads as usual. A model loaded so that gets images (`pixel_values`) fails
naming the cause.

`load_gemma3n` is the family's `from_pretrained`: it loads under `without_vision_tower()` and then checks what
the checkpoint held against what was built. The release's `model.vision_tower.*` weights are the only keys it
may leave unread; any other unread, missing or mismatched key (a part the audio path needs) is an error naming
the keys, never a silently random-initialised module.

The audio span. Gemma 3n's processor writes `\\n\\n<start_of_audio>` + 188 `<audio_soft_token>` +
`<end_of_audio>\\n\\n` for every clip whatever its length (188 tokens = 30 s; the model pads the encoder's
output with a padding embedding up to 188); `expand_audio` writes the same.
"""

from __future__ import annotations

import contextlib

import torch

from ambig.model.audio_formats import GEMMA3N_AUDIO_TOKENS

VISION_PREFIX = "model.vision_tower."  # the only weights of a checkpoint the family leaves unread


class NoVisionTower(torch.nn.Module):
    """Stands in for Gemma 3n's timm vision tower: no parameters; any call fails naming why."""

    def __init__(self, config):
        super().__init__()
        self.config = config

    def forward(self, *args, **kwargs):
        raise RuntimeError(
            "this Gemma 3n was loaded without its vision tower (ambig.model.gemma3n.without_vision_tower: "
            "ambig is audio-only, and timm needs torchvision): it cannot take images (pixel_values)"
        )


@contextlib.contextmanager
def without_vision_tower():
    """While active, Gemma 3n models are built with a parameterless `NoVisionTower` as `model.vision_tower`.

    It replaces, in transformers' modeling_gemma3n only, the `AutoModel` that `Gemma3nModel.__init__` builds
    its towers with, by one that returns the stand-in for a `Gemma3nVisionConfig` and defers to the real
    `AutoModel` for every other config (the audio tower, the language model). The real one is restored on
    exit.
    """
    from transformers.models.gemma3n import modeling_gemma3n

    real = modeling_gemma3n.AutoModel

    class AutoModelWithoutVision:
        @staticmethod
        def from_config(config, **kwargs):
            if isinstance(config, modeling_gemma3n.Gemma3nVisionConfig):
                return NoVisionTower(config)
            return real.from_config(config, **kwargs)

    modeling_gemma3n.AutoModel = AutoModelWithoutVision
    try:
        yield
    finally:
        modeling_gemma3n.AutoModel = real


class Gemma3nLoadError(ValueError):
    """A Gemma 3n checkpoint that does not fill the model ambig builds from it."""


def check_loading(info: dict, source: str) -> list[str]:
    """The checkpoint keys `from_pretrained(..., output_loading_info=True)` left unread; raises unless they
    are all the vision tower's, and unless nothing is missing or mismatched."""
    unread = sorted(info.get("unexpected_keys") or ())
    other = [k for k in unread if not k.startswith(VISION_PREFIX)]
    missing = sorted(info.get("missing_keys") or ())
    mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
    problems = []
    if missing:
        problems.append(f"missing (would be random): {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if other:
        problems.append(f"unread besides the vision tower: {other[:5]}{' ...' if len(other) > 5 else ''}")
    if mismatched:
        problems.append(f"of another shape: {mismatched[:5]}")
    if problems:
        raise Gemma3nLoadError(
            f"{source} does not fit Gemma3nForConditionalGeneration without its vision tower: "
            + "; ".join(problems)
        )
    return unread


def load_gemma3n(source: str, dtype):
    """`Gemma3nForConditionalGeneration.from_pretrained(source)` without the vision tower, every other weight
    checked to be read (`check_loading`)."""
    from transformers import Gemma3nForConditionalGeneration

    with without_vision_tower():
        model, info = Gemma3nForConditionalGeneration.from_pretrained(
            source, dtype=dtype, output_loading_info=True
        )
    check_loading(info, source)
    tokens = model.config.audio_soft_tokens_per_image
    if tokens != GEMMA3N_AUDIO_TOKENS:
        raise Gemma3nLoadError(
            f"{source}: audio_soft_tokens_per_image={tokens}, but ambig's Gemma 3n audio format fills "
            f"{GEMMA3N_AUDIO_TOKENS} audio tokens per clip (the release's)"
        )
    return model


def load_processor(source: str, model_cfg=None):
    """The checkpoint's own processor (`AutoProcessor`: Gemma3nProcessor; its image processor has a PIL
    backend, so no torchvision is needed), checked to write the audio span ambig's format fills."""
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(source)
    if getattr(processor, "audio_seq_length", None) != GEMMA3N_AUDIO_TOKENS:
        raise Gemma3nLoadError(
            f"{source}: {type(processor).__name__} writes {getattr(processor, 'audio_seq_length', None)} "
            f"audio tokens per clip, but ambig's Gemma 3n audio format fills {GEMMA3N_AUDIO_TOKENS}"
        )
    return processor


def expand_audio(text: str, processor, n_tokens: int) -> str:
    """`text` with its one `<audio_soft_token>` replaced by the processor's audio span for one clip."""
    token = processor.audio_token
    if text.count(token) != 1:
        raise ValueError(f"the prompt holds {text.count(token)} audio placeholders {token!r}, not one")
    if n_tokens != processor.audio_seq_length:
        raise ValueError(
            f"Gemma 3n's processor writes {processor.audio_seq_length} audio tokens for every clip, "
            f"not {n_tokens}"
        )
    return text.replace(token, processor.full_audio_sequence, 1)

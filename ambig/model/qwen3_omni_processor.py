"""Qwen3-Omni's processor without its video and image halves, for machines without torchvision.

`Qwen3OmniMoeProcessor` holds an image processor, a video processor, a Whisper feature extractor and Qwen2's
tokenizer. It cannot be built without torchvision, although ambig never passes an image or a video:
`from_pretrained` loads its video processor through AutoVideoProcessor, whose only entry for qwen3_omni_moe
is the torchvision-backed `Qwen2VLVideoProcessor`, and the constructor checks every sub-processor against
`transformers.VideoProcessorMixin`, itself a torchvision placeholder then. ProcessorMixin takes the
sub-processors from the `__init__` signature, so `Qwen3OmniMoeAudioProcessor`, whose `__init__` names only
the feature extractor and the tokenizer (and the chat template), loads those two with the ordinary
`from_pretrained` from the release's own files; everything else (`__call__`: the audio features, the
`<|audio_pad|>` expansion, the tokenizer call; `apply_chat_template`) is the parent's code, unchanged.
It is used on every machine, with or without torchvision, so a run's inputs do not depend on the machine.
"""

from __future__ import annotations

from transformers import Qwen3OmniMoeProcessor
from transformers.processing_utils import ProcessorMixin

# the named tokens Qwen3OmniMoeProcessor.__init__ copies from its tokenizer
TOKEN_ATTRIBUTES = (
    "image_token",
    "audio_token",
    "video_token",
    "image_token_id",
    "audio_token_id",
    "video_token_id",
    "vision_bos_token",
    "vision_eos_token",
    "audio_bos_token",
    "audio_eos_token",
)


class Qwen3OmniMoeAudioProcessor(Qwen3OmniMoeProcessor):
    """Qwen3OmniMoeProcessor's text and audio halves (see the module docstring)."""

    def __init__(self, feature_extractor=None, tokenizer=None, chat_template=None):
        ProcessorMixin.__init__(self, feature_extractor, tokenizer, chat_template=chat_template)
        missing = [name for name in TOKEN_ATTRIBUTES if getattr(self.tokenizer, name, None) is None]
        if missing:
            raise ValueError(
                f"the tokenizer lacks Qwen3-Omni's named tokens {missing}: this is not a Qwen3-Omni "
                "checkpoint's tokenizer (its tokenizer_config.json names audio_token, image_token, ...)"
            )
        for name in TOKEN_ATTRIBUTES:
            setattr(self, name, getattr(self.tokenizer, name))

    @property
    def model_input_names(self):
        names = self.tokenizer.model_input_names + self.feature_extractor.model_input_names
        return list(dict.fromkeys([*names, "feature_attention_mask"]))


def load_processor(source: str, model_cfg) -> Qwen3OmniMoeAudioProcessor:
    """The audio-only processor of a Qwen3-Omni checkpoint (hub id or directory). With `max_audio_seconds`
    shorter than the extractor's window, ambig's features are padded to that instead (as for Qwen2.5-Omni,
    ambig.model.audio_text_processor.with_window); the processor's own call pads to the longest clip
    anyway."""
    from ambig.model.audio_text_processor import with_window

    processor = Qwen3OmniMoeAudioProcessor.from_pretrained(source)
    seconds = model_cfg.get("max_audio_seconds")
    if seconds is not None and seconds < processor.feature_extractor.chunk_length:
        processor.feature_extractor = with_window(processor.feature_extractor, seconds)
    return processor

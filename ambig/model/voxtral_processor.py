"""Voxtral's processor without mistral-common: its own feature extractor, its tekken tokenizer as a fast
tokenizer, and a chat template that writes what mistral-common writes.

The releases (mistralai/Voxtral-Mini-3B-2507, Voxtral-Small-24B-2507) ship no tokenizer.json and no chat
template: the tokenizer is `tekken.json`, read by mistral-common (transformers' `MistralCommonBackend`), and
the prompt format lives in mistral-common's code. `VoxtralProcessor.apply_chat_template` builds an audio
prompt only through that backend (its `__call__` refuses `[AUDIO]` in text), and mistral-common's metadata
pins numpy below ambig's. So ambig loads the processor alike with or without mistral-common installed:
`VoxtralProcessor(feature_extractor=<the release's WhisperFeatureExtractor>, tokenizer=<tekken.json converted
by transformers' own converter>)`, the tokenizer carrying `CHAT_TEMPLATE`, which reproduces mistral-common's
instruct encoding (tokenizer v7 and v11 agree on it) for the turns ambig sends: `<s>`, then per user turn
`[INST]`, `[BEGIN_AUDIO][AUDIO]` for its audio part, its text, `[/INST]`; per assistant turn its text and
`</s>`. The audio features come from the feature extractor as `VoxtralProcessor._retrieve_input_features`
computes them (ambig.model.audio_formats.VOXTRAL_CHUNKS). tests/model/test_family_twins.py checks both against
mistral-common's own `apply_chat_template` (a test dependency, installed by `make install` with --no-deps).

mistral-common refuses a system turn in a conversation that holds audio (tokenizers before v13), and so does
this template: the family sends none.
"""

from __future__ import annotations

from pathlib import Path

TEKKEN = "tekken.json"
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% set has_audio = namespace(v=False) %}"
    "{% for m in messages %}{% if m['content'] is not string %}{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' %}{% set has_audio.v = True %}{% endif %}"
    "{% endfor %}{% endif %}{% endfor %}"
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}"
    "{% if has_audio.v %}"
    "{{ raise_exception('Voxtral takes no system turn in a conversation with audio "
    "(mistral-common refuses it before tokenizer v13)') }}"
    "{% endif %}"
    "[SYSTEM_PROMPT]{{ m['content'] }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}"
    "[INST]"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}"
    "{% if c.get('type') == 'audio' %}[BEGIN_AUDIO][AUDIO]"
    "{% elif c.get('type') == 'text' %}{{ c['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "[/INST]"
    "{% elif m['role'] == 'assistant' %}"
    "{{ m['content'] }}{{ eos_token }}"
    "{% else %}{{ raise_exception('Voxtral: unknown role ' + m['role']) }}"
    "{% endif %}"
    "{% endfor %}"
)


def load_voxtral_processor(source: str | Path, model_cfg=None):
    """The release's processor (feature extractor + tekken tokenizer), `CHAT_TEMPLATE` on its tokenizer."""
    from transformers import VoxtralProcessor, WhisperFeatureExtractor
    from transformers.integrations.mistral.tokenizer import convert_tekken_tokenizer

    tekken = _tekken_file(source)
    tokenizer = convert_tekken_tokenizer(str(tekken), chat_template=CHAT_TEMPLATE)
    tokenizer.padding_side = "left"
    extractor = WhisperFeatureExtractor.from_pretrained(source)
    return VoxtralProcessor(feature_extractor=extractor, tokenizer=tokenizer)


def _tekken_file(source: str | Path) -> Path:
    local = Path(source) / TEKKEN
    if local.exists():
        return local
    from huggingface_hub import hf_hub_download

    from ambig.model.load import ModelNotAvailableError

    try:
        return Path(hf_hub_download(str(source), TEKKEN))
    except Exception as err:  # not cached and no network, or a checkpoint without it
        raise ModelNotAvailableError(
            f"{source}: no {TEKKEN} (the Voxtral tokenizer) here or in the Hugging Face cache; download the "
            f"release with `huggingface-cli download {source} --local-dir DIR` and pass model.path=DIR"
        ) from err

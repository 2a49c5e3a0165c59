"""A tiny random-init Gemma 3n (google/gemma-3n-E4B-it) in the release's checkpoint layout.

The release: `Gemma3nForConditionalGeneration` (model_type `gemma3n`) with nested `text_config`
(gemma3n_text: AltUp, LAuReL, per-layer embeddings, 4 sliding : 1 full attention layers, the last 15 of 35
reusing the KV of earlier ones, final logits soft-capped at 30, head tied to the embeddings), `audio_config`
(gemma3n_audio: a USM conformer over 128-bin log-mels, its output mapped by `embed_audio`) and
`vision_config` (gemma3n_vision: timm's MobileNetV5); its processor (`Gemma3nProcessor`) is a
`Gemma3nAudioFeatureExtractor`, a SigLIP image processor and Gemma's tokenizer, with the chat template below.
E4B's sizes are the config classes' defaults (transformers' convert_gemma3n_weights.py,
`_VARIANTS["gemma3n_e4b"]`).

The twin keeps every one of those parts and shrinks the sizes (`TinySpec.text_sizes()`, at least 4 layers:
half of them read the KV of the others, as the release's last 15), and keeps the release's token-id layout:
text ids [0, T), the vision block [T, T + 128) (from `<end_of_image>`, `<image_soft_token>`), the audio
block [T + 128, T + 256) (from `<end_of_audio>`, `<audio_soft_token>`), vocab_size T + 256, the per-layer
embeddings over the T text ids (release: 262144 / 262272 / 262400). The tokenizer is ambig's tiny byte-level
BPE with Gemma's special tokens after it, saved as a plain tokenizers-backed tokenizer (the release's
`GemmaTokenizer` is a SentencePiece-style BPE: that class would rebuild the byte-level stand-in with a "▁"
normaliser). Its vision tower is `ambig.model.gemma3n.NoVisionTower` (no weights: the release has
`model.vision_tower.timm_model.*`). `_init_weights` zeroes AltUp's `correct_output_scale`, which would leave
every layer's per-layer-input branch dead in a random model; the twin draws it around 1.
"""

from __future__ import annotations

import json
from pathlib import Path

from ambig.model.audio_formats import GEMMA3N_AUDIO_TOKENS
from ambig.model.tiny import TinySpec, _tokenizer_path, write_checkpoint

IMAGE_TOKENS = 256  # Gemma3nConfig.vision_soft_tokens_per_image / Gemma3nProcessor.image_seq_length
BLOCK = 128  # Gemma3nVisionConfig.vocab_size == Gemma3nAudioConfig.vocab_size: each modality's id block
# Gemma's text specials (release ids <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, <start_of_turn> 105,
# <end_of_turn> 106, <start_of_image> 255999, <start_of_audio> 256000), here after the BPE's vocabulary.
TEXT_SPECIALS = (
    "<pad>",
    "<eos>",
    "<bos>",
    "<unk>",
    "<mask>",
    "<start_of_turn>",
    "<end_of_turn>",
    "<start_of_image>",
    "<start_of_audio>",
)
# The tokenizer's named multimodal tokens, as the release's tokenizer_config.json names them.
NAMED_TOKENS = {
    "image_token": "<image_soft_token>",
    "boi_token": "<start_of_image>",
    "eoi_token": "<end_of_image>",
    "audio_token": "<audio_soft_token>",
    "boa_token": "<start_of_audio>",
    "eoa_token": "<end_of_audio>",
}
# The release's chat template (google/gemma-3n-E4B-it, chat_template.jinja), verbatim from transformers'
# convert_gemma3n_weights.py `_CHAT_TEMPLATE` (huggingface/transformers @ f360a89b), which the conversion
# stores with the tokenizer and the processor of the -it models.
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'audio' -%}
                {{ '<audio_soft_token>' }}
            {%- elif item['type'] == 'image' -%}
                {{ '<image_soft_token>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\\n'}}
{%- endif -%}
"""


def load_tokenizer():
    """(tokenizer, T): ambig's tiny BPE with Gemma's text specials, then the vision and audio id blocks;
    T = the text ids (the per-layer embeddings' vocabulary)."""
    from tokenizers import AddedToken, Tokenizer
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer.from_file(str(_tokenizer_path()))

    def add(tokens):
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in tokens])

    add(TEXT_SPECIALS)
    text_vocab = backend.get_vocab_size(with_added_tokens=True)
    # each block's remaining ids carry fillers (the release's names for them are not ambig's concern)
    add(["<end_of_image>", "<image_soft_token>", *(f"<vision_soft_{i}>" for i in range(2, BLOCK))])
    add(["<end_of_audio>", "<audio_soft_token>", *(f"<audio_soft_{i}>" for i in range(2, BLOCK))])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
        mask_token="<mask>",
        add_bos_token=True,  # GemmaTokenizer's: tokenizer(text) writes <bos> first
        padding_side="left",
        extra_special_tokens=NAMED_TOKENS,
    )
    if len(tokenizer) != text_vocab + 2 * BLOCK:
        raise RuntimeError(f"the twin's tokenizer has {len(tokenizer)} ids, not {text_vocab + 2 * BLOCK}")
    return tokenizer, text_vocab


def twin_config(spec: TinySpec, tokenizer, text_vocab: int):
    """Gemma3nConfig at `spec`'s sizes in the release's layout (block offsets, token ids, -it stop tokens)."""
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

    layers = spec.num_hidden_layers
    if layers < 4 or layers % 2:
        raise ValueError(
            f"the Gemma 3n twin needs an even number of at least 4 layers (half of them share the KV of the "
            f"others, a sliding and a full one among each half), got num_hidden_layers={layers}"
        )
    ids = tokenizer.convert_tokens_to_ids
    sizes = {**spec.text_sizes(), "tie_word_embeddings": True}  # the release ties its head to the embeddings
    text = Gemma3nTextConfig(
        vocab_size=text_vocab + 2 * BLOCK,
        vocab_size_per_layer_input=text_vocab,
        **sizes,
        head_dim=spec.hidden_size // spec.num_attention_heads,
        hidden_size_per_layer_input=8,
        # release: 4 sliding (window 512) : 1 full, the last 15 of 35 layers reading earlier layers' KV
        layer_types=["sliding_attention", "full_attention"] * (layers // 2),
        num_kv_shared_layers=layers // 2,
        sliding_window=32,
        activation_sparsity_pattern=[0.95] * (layers // 2) + [0.0] * (layers - layers // 2),
        laurel_rank=8,
        pad_token_id=ids("<pad>"),
        bos_token_id=ids("<bos>"),
        eos_token_id=ids("<eos>"),
    )
    audio = Gemma3nAudioConfig(
        vocab_size=BLOCK,
        vocab_offset=text_vocab + BLOCK,
        input_feat_size=spec.num_mel_bins,
        hidden_size=spec.audio_d_model,
        conf_num_attention_heads=spec.audio_heads,
        conf_num_hidden_layers=spec.audio_layers,
        sscp_conv_channel_size=[4, 4],  # release: [128, 32]; the twin's cost is this convolution over 30 s
    )
    # label_names given so that reading the config back never asks timm for ImageNet's labels
    vision = Gemma3nVisionConfig(
        vocab_size=BLOCK, vocab_offset=text_vocab, hidden_size=spec.hidden_size, label_names=["LABEL_0"]
    )
    config = Gemma3nConfig(
        text_config=text,
        vision_config=vision,
        audio_config=audio,
        audio_soft_tokens_per_image=GEMMA3N_AUDIO_TOKENS,
        vision_soft_tokens_per_image=IMAGE_TOKENS,
        boi_token_id=ids("<start_of_image>"),
        eoi_token_id=ids("<end_of_image>"),
        image_token_id=ids("<image_soft_token>"),
        boa_token_id=ids("<start_of_audio>"),
        eoa_token_id=ids("<end_of_audio>"),
        audio_token_id=ids("<audio_soft_token>"),
        tie_word_embeddings=True,
    )
    config.eos_token_id = [ids("<eos>"), ids("<end_of_turn>")]  # -it: both stop generation
    return config


def build_processor(tokenizer, spec: TinySpec):
    """The release's processor parts: Gemma 3n's audio feature extractor (its defaults are the release's),
    a SigLIP image processor of the release's settings (PIL backend: no torchvision), the tokenizer and the
    chat template."""
    from transformers import Gemma3nAudioFeatureExtractor, Gemma3nProcessor
    from transformers.image_utils import PILImageResampling
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    image_processor = SiglipImageProcessorPil(
        image_seq_length=IMAGE_TOKENS,
        image_mean=(0.5,) * 3,
        image_std=(0.5,) * 3,
        size={"height": 768, "width": 768},
        resample=PILImageResampling.BILINEAR,
        do_normalize=False,
    )
    return Gemma3nProcessor(
        feature_extractor=Gemma3nAudioFeatureExtractor(feature_size=spec.num_mel_bins),
        image_processor=image_processor,
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
        audio_seq_length=GEMMA3N_AUDIO_TOKENS,
        image_seq_length=IMAGE_TOKENS,
    )


def build_tiny_gemma3n(out_dir: str | Path, spec: TinySpec) -> Path:
    """Write a random-init tiny Gemma 3n (model + processor) to `out_dir`, atomically."""
    import torch
    from transformers import Gemma3nForConditionalGeneration

    from ambig.model.gemma3n import without_vision_tower

    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    tokenizer, text_vocab = load_tokenizer()
    config = twin_config(spec, tokenizer, text_vocab)
    with torch.random.fork_rng(), without_vision_tower():  # as the other twins: the caller's RNG stays put
        torch.manual_seed(spec.seed)
        model = Gemma3nForConditionalGeneration(config)
        with torch.no_grad():
            for layer in model.model.language_model.layers:
                layer.altup.correct_output_scale.normal_(1.0, 0.1)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    processor = build_processor(tokenizer, spec)

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        # As the release: one preprocessor_config.json with the feature extractor's and the image processor's
        # settings (convert_gemma3n_weights.py writes their union).
        merged = {
            **json.loads(processor.feature_extractor.to_json_string()),
            **json.loads(processor.image_processor.to_json_string()),
        }
        (tmp / "preprocessor_config.json").write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n")
        # and its processor_config.json: the processor's own settings only (transformers 5 would nest the
        # sub-processors' here too; they load from preprocessor_config.json either way)
        own = {
            "audio_seq_length": GEMMA3N_AUDIO_TOKENS,
            "image_seq_length": IMAGE_TOKENS,
            "processor_class": "Gemma3nProcessor",
        }
        (tmp / "processor_config.json").write_text(json.dumps(own, indent=2) + "\n")

    return write_checkpoint(out_dir, spec, write)

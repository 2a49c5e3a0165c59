"""One loader for every model: `from_pretrained` of a hub id or a local directory, then LoRA."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from ambig.model.family import ModelFamily, model_family

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ModelNotAvailableError(FileNotFoundError):
    """The weights are neither in a local directory nor in the Hugging Face cache."""


class ModelFamilyError(ValueError):
    """The checkpoint is not of the family `model.family` names (its class would load it wrongly)."""


def resolve_source(model_cfg) -> str:
    """The directory or hub id to load: the tiny and mini models are built (once, cached) into a directory."""
    if model_cfg.get("path"):
        path = Path(model_cfg.path).expanduser()
        if not (path / "config.json").exists():
            raise ModelNotAvailableError(
                f"model.path={path} has no config.json: point it at a directory written by save_pretrained "
                f"(e.g. `huggingface-cli download {model_cfg.get('hub_id', '<hub id>')} --local-dir DIR`)"
            )
        return str(path)
    family = model_family(model_cfg)
    if model_cfg.get(family.spec_key):
        spec = family.make_spec(dict(model_cfg[family.spec_key]))
        return str(family.build_tiny(Path(model_cfg.cache_dir) / f"{family.tiny_prefix}-{spec.key()}", spec))
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


def check_family(source: str, family: ModelFamily) -> None:
    """Refuse a checkpoint of another family before its weights are read into the wrong class."""
    from transformers import PretrainedConfig

    config = PretrainedConfig.get_config_dict(source)[0]
    model_type = config.get("model_type")
    if model_type not in family.checkpoint_types:
        raise ModelFamilyError(
            f"model.family={family.name} loads checkpoints of type {' or '.join(family.checkpoint_types)}, "
            f"but {source} is a {model_type!r} checkpoint: set model.family to its family or point "
            "model.path at a checkpoint of this one"
        )
    text_type = (config.get("text_config") or {}).get("model_type")
    if family.text_model_type and text_type and text_type != family.text_model_type:
        raise ModelFamilyError(
            f"model.family={family.name} reads {model_type} checkpoints around a {family.text_model_type} "
            f"language model, but {source}'s is a {text_type!r} one (its chat template differs): set "
            "model.family to its family"
        )


def load_model(model_cfg):
    """(model, processor) from `model_cfg`, with LoRA applied when `model_cfg.lora` is set.

    `model.family` (ambig.model.family) picks the transformers class and the processor; the processor has
    `tokenizer`, `feature_extractor` and `audio_token`, whatever the family.
    """
    family = model_family(model_cfg)
    source = resolve_source(model_cfg)
    dtype = DTYPES[model_cfg.get("dtype", "float32")]
    check_hub_source(source)
    try:
        check_family(source, family)
        processor = family.load_processor(source, model_cfg)
        model = family.from_pretrained(source, dtype)
    except OSError as err:
        raise _not_available(source, err) from err
    processor.tokenizer.padding_side = "left"  # decoder-only generation; the batch builder relies on it
    if model_cfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable()
    if model_cfg.get("lora"):
        model = apply_lora(
            model,
            model_cfg.lora,
            towers=family.towers,
            train_audio_tower=bool(model_cfg.get("train_audio_tower", False)),
            audio_modules=family.audio_modules,
        )
    elif model_cfg.get("train_audio_tower"):
        raise ValueError(
            "model.train_audio_tower=true trains the tower beside a LoRA adapter: set model.lora"
        )
    return model, processor


def apply_lora(
    model,
    lora_cfg,
    towers: tuple[str, ...] = ("audio_tower",),
    *,
    train_audio_tower: bool = False,
    audio_modules: tuple[str, ...] = ("audio_tower",),
):
    """LoRA on the language model's projections only; the encoder towers (audio, and Qwen2.5-Omni's vision
    tower: same module names) stay frozen, unless `train_audio_tower`: then the audio tower and what maps it
    into the language model (`audio_modules`, e.g. Qwen2-Audio's projector) train fully beside the adapter,
    as peft `modules_to_save` (so switching the adapter off also switches back to the original tower).

    A tower made trainable any other way is refused, naming what did it: the target regex (LoRA layers in
    the tower) or a `modules_to_save` entry.
    """
    from peft import LoraConfig, get_peft_model

    saved = list(lora_cfg.get("modules_to_save") or [])
    if train_audio_tower:
        saved += [m for m in audio_modules if m not in saved]
    config = LoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        # what the target regex must not reach (model=qwen3_omni*: peft turns a regex into bare names there)
        exclude_modules=lora_cfg.get("exclude_modules"),
        modules_to_save=saved or None,
        bias="none",
    )
    model = get_peft_model(model, config)
    for name in towers:
        tower = [n for n, p in model.named_parameters() if p.requires_grad and f".{name}." in n]
        if not tower or (train_audio_tower and name == "audio_tower"):
            continue
        label = "the audio tower" if name == "audio_tower" else f"the {name} tower"
        hint = " (model.train_audio_tower=true trains it on purpose)" if name == "audio_tower" else ""
        by_regex = [n for n in tower if "lora_" in n]
        if by_regex:
            raise ValueError(
                f"LoRA target regex {lora_cfg.target_modules!r} matched {label}: {by_regex[:3]}; narrow it "
                f"to the language model{hint}"
            )
        entries = [m for m in saved if m == name or m.endswith(f".{name}") or name.endswith(m)]
        raise ValueError(
            f"lora.modules_to_save entry {entries[0] if entries else saved!r} makes {label} trainable: "
            f"{tower[:3]}; remove it{hint}"
        )
    if train_audio_tower:
        log.info(
            "model.train_audio_tower: the audio tower (%s) trains beside the adapter",
            ", ".join(audio_modules),
        )
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    if trainable == 0:
        raise ValueError(f"LoRA target regex {lora_cfg.target_modules!r} matched no module of the model")
    log.info("LoRA: %d trainable parameters", trainable)
    return model

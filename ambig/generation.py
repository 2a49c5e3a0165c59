"""One pinned `GenerationConfig` for every `generate` ambig runs (evaluation, rollouts, test-time scaling,
the verifier's trajectories, predict).

transformers fills every generation knob a call leaves unset (None) from the model's own
`generation_config.json`, then from its global defaults (`top_k=50` among them), even when a
`GenerationConfig` object is passed. Releases ship `repetition_penalty`, `top_k`, `top_p` and `temperature`
there, so a file the user never chose would change what is sampled, and sampling would not be pi_theta. So:

- `pinned_config` sets every sampling, penalty and length knob explicitly from ambig's config: temperature
  and top_p as configured, everything else neutral (top_k 0 = off, repetition_penalty 1, no_repeat_ngram_size
  0, min_new_tokens 0, no bad words, no sequence bias, no forced tokens, one beam, ...);
- `generate` swaps the model's own `generation_config` for that same pinned one during the call, so nothing
  left unset can be filled from the file either;
- the first time a model's own config differs from what ambig samples with, the differences are logged once.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager

from transformers import GenerationConfig

log = logging.getLogger(__name__)

# Every knob that changes which tokens `generate` picks or how many, with the value that leaves the model's
# distribution as it is. temperature / top_p / do_sample / max_new_tokens come from ambig's config.
NEUTRAL = {
    # min_length / max_length stay unset (transformers would warn): min_new_tokens / max_new_tokens rule.
    "min_new_tokens": 0,
    "max_time": None,
    "stop_strings": None,
    "early_stopping": False,
    "num_beams": 1,
    "num_beam_groups": 1,
    "diversity_penalty": 0.0,
    "penalty_alpha": None,
    "dola_layers": None,
    "repetition_penalty": 1.0,
    "encoder_repetition_penalty": 1.0,
    "length_penalty": 1.0,
    "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0,
    "bad_words_ids": None,
    "force_words_ids": None,
    "constraints": None,
    "renormalize_logits": False,
    "forced_bos_token_id": None,
    "forced_eos_token_id": None,
    "remove_invalid_values": False,
    "exponential_decay_length_penalty": None,
    "begin_suppress_tokens": None,
    "sequence_bias": None,
    "token_healing": False,
    "guidance_scale": None,
    "watermarking_config": None,
    "num_return_sequences": 1,
    "use_cache": True,
    "output_scores": False,
    "output_logits": False,
    "output_attentions": False,
    "output_hidden_states": False,
    "return_dict_in_generate": True,
    "prompt_lookup_num_tokens": None,
    "assistant_early_exit": None,
}
# Sampling's own knobs (transformers applies them only when do_sample): off, beside temperature and top_p.
NEUTRAL_WARPERS = {
    "top_k": 0,  # 0 = off (None would be filled with the global default 50)
    "min_p": None,
    "top_h": None,
    "typical_p": 1.0,
    "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0,
}
# The knobs compared with a model's own generation_config (what would have changed the samples).
SAMPLING_KEYS = (
    "do_sample",
    "temperature",
    "top_p",
    "max_new_tokens",
    *NEUTRAL_WARPERS,
    *(k for k in NEUTRAL if not k.startswith("output_") and k != "return_dict_in_generate"),
)


def pinned_config(
    *,
    max_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    pad_token_id: int,
    eos_token_id: int,
    suppress_tokens: list[int],
) -> GenerationConfig:
    """The complete configuration of one `generate` call: ambig's values, every other knob neutral."""
    if int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1):
        raise ValueError(f"sampling needs temperature > 0 and top_p in (0, 1]; got {temperature=}, {top_p=}")
    # Greedy decoding never runs the warpers; setting them would only make transformers warn.
    warpers = (
        {**NEUTRAL_WARPERS, "temperature": float(temperature), "top_p": float(top_p)} if do_sample else {}
    )
    return GenerationConfig(
        **NEUTRAL,
        **warpers,
        max_new_tokens=int(max_new_tokens),
        do_sample=bool(do_sample),
        pad_token_id=int(pad_token_id),
        eos_token_id=int(eos_token_id),
        suppress_tokens=list(suppress_tokens),
    )


def transformers_model(model):
    """The transformers model that runs `generate` (inside a PEFT wrapper, or itself)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


_reported: set[tuple[int, bool]] = set()  # (model, sampling?) pairs already told about


def differences(own: GenerationConfig | None, pinned: GenerationConfig) -> dict[str, tuple]:
    """{knob: (model's own value, ambig's)} for every knob the model's file sets otherwise that would change
    this call (greedy decoding runs no sampling warper, so those are left out for it)."""
    if own is None:
        return {}
    mine = own.to_dict()
    out = {}
    sampling_only = () if pinned.do_sample else (*NEUTRAL_WARPERS, "temperature", "top_p")
    for key in SAMPLING_KEYS:
        if key in sampling_only:
            continue
        value = mine.get(key)
        if value is not None and value != getattr(pinned, key, None):
            out[key] = (value, getattr(pinned, key, None))
    return out


@contextmanager
def pinned(model, config: GenerationConfig):
    """Inside, the model's own `generation_config` is `config` (nothing can be filled from its file)."""
    target = transformers_model(model)
    if not hasattr(target, "generation_config"):  # a stand-in without one (tests): nothing to pin
        yield
        return
    own = target.generation_config
    diff = differences(own, config)
    seen = (id(target), bool(config.do_sample))
    if diff and seen not in _reported:
        _reported.add(seen)
        log.info(
            "the model's generation_config differs from what ambig %s with; ambig's values are used "
            "(model's -> ambig's): %s",
            "samples" if config.do_sample else "decodes greedily",
            ", ".join(f"{k}={a!r}->{b!r}" for k, (a, b) in sorted(diff.items())),
        )
    target.generation_config = config
    try:
        yield
    finally:
        target.generation_config = own

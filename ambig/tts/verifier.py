"""The verifier of `tts=verifier` / `tts=verifier_best_of_n`: the model itself, or another model
(`tts.verifier_model=<model config>`, e.g. a larger audio-language model checking a smaller one's reasoning).

Either way a trajectory's score is p(yes) over the first tokens of "yes" and "no" after the clip's prompt (its
audio included), the trajectory, and the family's verification turn (`BatchBuilder.verification_ids`).

Another model gets the clip in its own family's prompt and audio format: its own batch builder over the same
records, its features from its own feature store (cached on disk like the run's), the trajectory's text
tokenised by its own tokenizer. It is loaded once per process (a `-m` sweep's jobs share it), as released
(no adapter), frozen, and kept outside the Lightning module, so it is never part of a checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch import Tensor

from ambig.data.features import FeatureStore
from ambig.data.records import Record
from ambig.model.inputs import BatchBuilder, Example
from ambig.rollout import expand, last_logits

log = logging.getLogger(__name__)
CONF_MODELS = Path(__file__).resolve().parents[2] / "conf" / "model"
_LOADED: dict[str, tuple] = {}  # resolved model config -> (model, processor): loaded once per process


def yes_no_ids(builder: BatchBuilder) -> tuple[int, int]:
    """The first token of "yes" and of "no" as the assistant's first word; refused if they coincide."""
    yes, no = (builder.tokenizer(word, add_special_tokens=False).input_ids[0] for word in ("yes", "no"))
    if yes == no:
        raise ValueError("'yes' and 'no' start with the same token: the verifier cannot tell them apart")
    return yes, no


def p_yes(logits: Tensor, builder: BatchBuilder) -> Tensor:
    """p(yes) from next-token logits (rows, V), over the two answers only."""
    yes, no = yes_no_ids(builder)
    return torch.softmax(logits[:, [yes, no]].float(), dim=-1)[:, 0]


@dataclass
class ModelVerifier:
    """Another model as the verifier: `scores(ids, texts, n)` -> p(yes) (clips, n)."""

    name: str
    model: torch.nn.Module
    builder: BatchBuilder  # the verifier's family, for evaluation (no targets)
    store: FeatureStore  # the verifier's audio format
    records: Mapping[str, Record]  # the clips it may be asked about, by id

    def to(self, device) -> ModelVerifier:
        self.model.to(device)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def scores(self, ids: Sequence[str], texts: Sequence[str], n: int) -> Tensor:
        """p(yes) of each clip's `n` trajectories (`texts`, utterance-major as `ambig.rollout.sample` writes
        them), each trajectory re-tokenised by the verifier."""
        if len(texts) != len(ids) * n:
            raise ValueError(f"{len(texts)} trajectories for {len(ids)} clips x n = {n}")
        missing = [i for i in ids if i not in self.records]
        if missing:
            raise ValueError(f"the verifier {self.name} was given no record of the clips {missing[:5]}")
        examples = []
        for uid in ids:
            record = self.records[uid]
            examples.append(Example(record, features=self.store.get(record.audio_path)))
        batch = self.builder(examples)
        device = self.device
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        turn = self.builder.verification_ids()
        tokenizer = self.builder.tokenizer
        tails = [tokenizer(text, add_special_tokens=False).input_ids + turn for text in texts]
        logits = last_logits(self.model, expand(batch, n), self.builder, tails)
        return p_yes(logits, self.builder).view(len(ids), n).cpu()


def verifier_model_cfg(name: str, paths: Mapping, path: str | None = None):
    """conf/model/<name>.yaml resolved against the run's `paths`, without LoRA (the verifier is as released);
    `path`: its weights' directory (model.path of that config)."""
    from ambig.config import ConfigError

    file = CONF_MODELS / f"{name}.yaml"
    if not file.exists():
        choices = ", ".join(sorted(p.stem for p in CONF_MODELS.glob("*.yaml")))
        raise ConfigError(f"tts.verifier_model={name!r}: no conf/model/{name}.yaml; choose one of {choices}")
    run_paths = OmegaConf.to_container(paths, resolve=True) if OmegaConf.is_config(paths) else dict(paths)
    root = OmegaConf.create({"paths": run_paths, "model": OmegaConf.load(file)})
    model_cfg = OmegaConf.to_container(root.model, resolve=True)
    model_cfg["lora"] = None
    model_cfg["train_audio_tower"] = False
    if path:
        model_cfg["path"] = str(path)
    return OmegaConf.create(model_cfg)


def load_verifier_model(model_cfg) -> tuple:
    """(model, processor) of `model_cfg`, frozen, in eval mode; loaded once per process."""
    from ambig.model.load import load_model

    key = json.dumps(OmegaConf.to_container(model_cfg, resolve=True), sort_keys=True, default=str)
    if key not in _LOADED:
        model, processor = load_model(model_cfg)
        model.eval().requires_grad_(False)
        _LOADED.clear()  # one verifier at a time: a sweep over verifiers does not keep them all in memory
        _LOADED[key] = (model, processor)
        log.info("tts verifier: loaded model=%s", model_cfg.name)
    else:
        log.info("tts verifier: model=%s already loaded in this process", model_cfg.name)
    return _LOADED[key]


def build_verifier(
    tts: Mapping,
    *,
    paths: Mapping,
    records: Sequence[Record],
    classes: Sequence[str],
    prompt_classes: Sequence[str],
    cot: bool,
    cache_dir: str | None,
) -> ModelVerifier | None:
    """The run's verifier model for `tts` (None: the strategy's model verifies itself)."""
    from ambig.model.family import model_family

    name = tts.get("verifier_model")
    if not name:
        return None
    model_cfg = verifier_model_cfg(str(name), paths, tts.get("verifier_model_path"))
    model, processor = load_verifier_model(model_cfg)
    family = model_family(model_cfg)
    builder = BatchBuilder(
        processor,
        classes,
        prompt_classes=prompt_classes,
        cot=cot,
        ce_answer_word=False,
        sample_rate=int(model_cfg.sample_rate),
        family=family,
    ).for_evaluation()
    store = FeatureStore(
        family.audio_format.extractor(processor),
        sample_rate=int(model_cfg.sample_rate),
        max_seconds=float(model_cfg.max_audio_seconds),
        cache_dir=cache_dir,
        audio_format=family.audio_format,
    )
    yes_no_ids(builder)  # refuse a verifier whose tokenizer cannot tell yes from no before any sampling
    return ModelVerifier(str(name), model, builder, store, {r.id: r for r in records})

"""Records + audio -> model batches: prompt, teacher-forced target, labels, answer position, human p.

Every sequence is left-padded (generation needs it) and carries explicit `position_ids` that start at 0
on its first real token, so an utterance's logits do not depend on the batch it sits in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ambig.data.records import Record
from ambig.metrics import validate_distributions
from ambig.model import prompt
from ambig.model.audio_formats import ALL_AUDIO_KEYS, Features, whisper_tokens
from ambig.model.readout import class_token_ids, prefix_token_ids

IGNORE = -100
# A batch's audio, besides its rows' own inputs (named in batch["audio_keys"]): its clips' encoding and
# row -> clip (ambig.model.audio_encoding).
ENCODED_KEYS = ("encoded_audio", "clip_index")


def audio_keys(batch: dict) -> tuple[str, ...]:
    """The names of a batch's audio tensors: the family's inputs (one row each; those `audio_keys` names, or
    for a batch that lost that entry every family's input names it holds), and its clips' encoding."""
    own = tuple(k for k in batch.get("audio_keys", ALL_AUDIO_KEYS) if k in batch)
    return own + tuple(k for k in ENCODED_KEYS if k in batch)


def left_pad(rows: Sequence[Sequence[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention_mask), each (B, max_len), real tokens flush right."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            ids[i, width - len(row) :] = torch.as_tensor(row, dtype=torch.long)
            mask[i, width - len(row) :] = 1
    return ids, mask


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only, as `generate` computes them for left-padded rows."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass(frozen=True)
class Example:
    """One utterance ready for batching: its record and its audio, as a waveform or as features."""

    record: Record
    audio: np.ndarray | None = None
    features: Features | None = None


def audio_token_count(n_frames: int) -> int:
    """Audio tokens a Whisper-style encoder emits for `n_frames` mel frames (as the processor counts them)."""
    return whisper_tokens(n_frames)


class BatchBuilder:
    """Turns a list of `Example` into the tensors every strategy uses.

    `family` (ambig.model.family: `model_family(cfg.model)`) decides the prompt (its chat template: the
    processor's own, or the family's hand-written one), how the audio placeholder expands, and the audio
    inputs (`family.audio_format`).

    Keys: ids, p (B, K); prompt_ids / prompt_mask (prompt only, for generation); the family's audio inputs
    (named in `audio_keys`, e.g. input_features / feature_attention_mask); and unless built
    `for_evaluation`: input_ids / attention_mask / position_ids / labels (prompt + teacher-forced target)
    and answer_index (B,), the position whose logits predict the emotion word.
    """

    def __init__(
        self,
        processor,
        classes: Sequence[str],
        *,
        cot: bool,
        ce_answer_word: bool,
        sample_rate: int,
        prompt_classes: Sequence[str] | None = None,
        family=None,
    ):
        from ambig.model.family import DEFAULT_FAMILY, family_named

        self.family = family if family is not None else family_named(DEFAULT_FAMILY)
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.classes = tuple(classes)  # the read-out's classes: q is a distribution over these
        # the classes the prompt offers: the training corpus's, also when testing on a corpus with fewer
        self.prompt_classes = tuple(prompt_classes or classes)
        self.cot = cot
        self.ce_answer_word = ce_answer_word
        self.sample_rate = sample_rate
        self.targets = True
        self.class_ids = class_token_ids(self.tokenizer, self.classes)
        self.prefix_ids = prefix_token_ids(self.tokenizer)
        self.end_id = self.tokenizer.convert_tokens_to_ids(self.family.end_of_turn(processor))
        self.pad_id = self.tokenizer.pad_token_id
        self.newline_ids = self.tokenizer("\n", add_special_tokens=False).input_ids

    @property
    def audio_format(self):
        return self.family.audio_format

    def features_of(self, example: Example) -> Features:
        if example.features is not None:
            return example.features
        if example.audio is None:
            raise ValueError(f"utterance {example.record.id}: the example carries neither audio nor features")
        extractor = self.audio_format.extractor(self.processor)
        return self.audio_format.extract(extractor, example.audio, self.sample_rate)

    def prompt_text(self, transcript: str | None) -> str:
        """The chat prompt as text, with one audio placeholder (the family's chat template)."""
        return self.family.prompt(self.processor, self.prompt_classes, transcript, self.cot)

    def prompt_ids(self, transcript: str | None, n_tokens: int) -> list[int]:
        """The chat prompt's ids with the audio placeholder expanded to the clip's `n_tokens` audio tokens."""
        text = self.family.expand_audio(self.prompt_text(transcript), self.processor, n_tokens)
        return self.tokenizer(text, add_special_tokens=False).input_ids

    def verification_ids(self) -> list[int]:
        """What follows a finished trajectory to ask the model whether it holds (tts=verifier)."""
        return self.tokenizer(
            self.family.verification_turn(self.processor), add_special_tokens=False
        ).input_ids

    def encode_prompts(self, examples: Sequence[Example]):
        """Prompt ids per row and the batch's audio inputs (the family's keys, one row per example)."""
        feats = [self.features_of(e) for e in examples]
        rows = [
            self.prompt_ids(e.record.transcript, f.n_tokens) for e, f in zip(examples, feats, strict=True)
        ]
        return rows, self.audio_format.collate(feats)

    def target_pieces(self, record: Record) -> tuple[list[int], int]:
        """(ids up to and including the answer prefix, the majority class's answer token)."""
        if self.cot and not record.cot:
            raise ValueError(
                f"utterance {record.id} has no curated CoT but cot=structured; "
                "curate the corpus first or use cot=none"
            )
        before = self.tokenizer(
            prompt.target_before_answer(record.cot if self.cot else None), add_special_tokens=False
        ).input_ids
        if before[-len(self.prefix_ids) :] != self.prefix_ids:
            raise ValueError(f"utterance {record.id}: the CoT's last line merges with the answer prefix")
        answer = self.class_ids[self.classes.index(record.majority(self.classes))]
        return before, answer

    def for_evaluation(self) -> BatchBuilder:
        """The same builder without teacher-forced targets: evaluation decodes, so a clip needs no CoT."""
        clone = copy.copy(self)
        clone.targets = False
        return clone

    def __call__(self, examples: Sequence[Example]) -> dict:
        records = [e.record for e in examples]
        prompt_rows, audio = self.encode_prompts(examples)
        p = torch.tensor([r.soft_label for r in records], dtype=torch.float32)
        try:
            validate_distributions(p)
        except ValueError as err:
            raise ValueError(
                f"bad soft label in the batch of utterances {[r.id for r in records]}: {err}"
            ) from err
        prompt_ids, prompt_mask = left_pad(prompt_rows, self.pad_id)
        batch = {
            "ids": [r.id for r in records],
            "p": p,
            "prompt_ids": prompt_ids,
            "prompt_mask": prompt_mask,
            **audio,
            "audio_keys": self.audio_format.keys,
        }
        if self.targets:
            batch.update(self.teacher_forced(records, prompt_rows))
        return batch

    def teacher_forced(self, records: Sequence[Record], prompt_rows: list[list[int]]) -> dict:
        """Prompt + target rows, their labels and each row's answer position."""
        full_rows, label_rows, answer_offsets = [], [], []
        for record, head in zip(records, prompt_rows, strict=True):
            before, answer = self.target_pieces(record)
            seq = head + before + [answer, self.end_id]
            labels = [IGNORE] * len(head) + before + [answer if self.ce_answer_word else IGNORE, self.end_id]
            full_rows.append(seq)
            label_rows.append(labels)
            answer_offsets.append(len(head) + len(before) - 1)
        input_ids, attention_mask = left_pad(full_rows, self.pad_id)
        labels, _ = left_pad(label_rows, IGNORE)
        width = input_ids.shape[1]
        offsets = zip(full_rows, answer_offsets, strict=True)
        answer_index = torch.tensor([width - len(r) + off for r, off in offsets])
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": positions(attention_mask),
            "labels": labels,
            "answer_index": answer_index,
        }


def audio_token_id(builder: BatchBuilder) -> int:
    return builder.tokenizer.convert_tokens_to_ids(builder.processor.audio_token)


def prompt_rows(batch: dict) -> list[list[int]]:
    """Each row's prompt ids without its padding."""
    return [ids[m.bool()].tolist() for ids, m in zip(batch["prompt_ids"], batch["prompt_mask"], strict=True)]


def completion_batch(builder: BatchBuilder, batch: dict, completions: Sequence[Sequence[int]]) -> dict:
    """Teacher-forced rows `prompt + completion` for arbitrary completions (row i continues batch row i).

    Keys: input_ids / attention_mask / position_ids (left-padded as everywhere), completion_mask (1 on the
    completion's tokens only: prompt and padding are 0) and the batch's audio (features or encoded audio),
    so the dict can be fed to the model as it is.
    """
    heads = prompt_rows(batch)
    if len(heads) != len(completions):
        raise ValueError(f"{len(completions)} completions for a batch of {len(heads)} prompts")
    audio = audio_token_id(builder)
    if any(audio in tail for tail in completions):
        raise ValueError(
            "a completion holds the audio placeholder token: the audio features would not line up"
        )
    rows = [head + list(tail) for head, tail in zip(heads, completions, strict=True)]
    input_ids, attention_mask = left_pad(rows, builder.pad_id)
    marks = [[0] * len(head) + [1] * len(tail) for head, tail in zip(heads, completions, strict=True)]
    completion_mask, _ = left_pad(marks, 0)
    device = batch["prompt_ids"].device
    return {
        "input_ids": input_ids.to(device),
        "attention_mask": attention_mask.to(device),
        "position_ids": positions(attention_mask).to(device),
        "completion_mask": completion_mask.to(device),
        **{k: batch[k] for k in audio_keys(batch)},
        **({"audio_keys": batch["audio_keys"]} if "audio_keys" in batch else {}),
    }

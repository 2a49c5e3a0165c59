"""Each clip's frozen-tower encoding kept for the whole run, so the audio tower runs once per clip per run.

`encode_once` (ambig.model.audio_encoding) already runs the tower once per clip per step; this store keeps
the result across steps and epochs (mu repeats, later epochs), keyed by clip id. `strategy.audio_cache`:

- `memory`: the encodings in CPU memory (Qwen2-Audio-7B: 750 x 1280 values per 30 s clip, 1.9 MB in bf16),
  moved to the model's device for each step;
- `disk`: one file per clip under the run directory (`audio_cache/`), for corpora whose encodings do not fit
  in memory; written atomically;
- `none`: encode every step.

Valid only while the tower is frozen (checked by `encode_audio`) and for the run that filled it: the store
lives in the run's module (memory) or run directory (disk), never shared between runs or models.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ambig.model.audio_encoding import EncodedAudio, encode_audio

AUDIO_CACHES = ("none", "memory", "disk")


class AudioEncodingCache:
    def __init__(self, where: str, directory: Path | None = None):
        if where not in ("memory", "disk"):
            raise ValueError(f"audio cache {where!r}: choose memory or disk")
        if where == "disk" and directory is None:
            raise ValueError("audio_cache=disk needs a directory")
        self.where = where
        self.directory = Path(directory) if directory is not None else None
        self._memory: dict[str, Tensor] = {}
        self.encoded = 0  # clips the tower ran on
        self.reused = 0  # clips served from the store

    def _path(self, clip_id: str) -> Path:
        return self.directory / f"{hashlib.sha1(clip_id.encode()).hexdigest()}.pt"

    def get(self, clip_id: str) -> Tensor | None:
        if self.where == "memory":
            return self._memory.get(clip_id)
        path = self._path(clip_id)
        return torch.load(path, weights_only=True) if path.exists() else None

    def put(self, clip_id: str, hidden: Tensor) -> None:
        hidden = hidden.detach().cpu().clone()
        if self.where == "memory":
            self._memory[clip_id] = hidden
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(clip_id)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        torch.save(hidden, tmp)
        os.replace(tmp, path)

    def encode(self, model, batch: dict) -> EncodedAudio:
        """The batch's clips encoded (C, T, D), the tower run only on clips not in the store."""
        ids = list(batch["ids"])
        stored = [self.get(clip_id) for clip_id in ids]
        missing = [i for i, hidden in enumerate(stored) if hidden is None]
        if missing:
            rows = torch.tensor(missing, device=batch["input_features"].device)
            fresh = encode_audio(model, batch["input_features"][rows], batch["feature_attention_mask"][rows])
            for k, i in enumerate(missing):
                stored[i] = fresh.hidden[k, : int(fresh.lengths[k])].detach().cpu().clone()
                self.put(ids[i], stored[i])
        self.encoded += len(missing)
        self.reused += len(ids) - len(missing)
        device = batch["input_features"].device
        lengths = torch.tensor([h.shape[0] for h in stored], device=device)
        return EncodedAudio(pad_sequence(stored, batch_first=True).to(device), lengths)

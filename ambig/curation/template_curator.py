"""The `template` curator behind the store: offline, deterministic, free (``ambig.curation.template``).

Same file, same resume rule and same summary as the `openai` curator: every entry is ``accepted``, model
``"template"``, prompt version ``template.PROMPT_VERSION``, one attempt, zero tokens. With ``relative``
(the default, as in training's fallback) the prosody words are relative to each speaker's mean cues over
the clips selected for this run, so every selected clip is measured once before writing (a few ms each).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ambig.curation import template
from ambig.curation.acoustics import AcousticCues, measure
from ambig.curation.openai_curator import run_pool
from ambig.curation.store import CotStore, Summary, make_entry, trajectory_with_answer
from ambig.data.records import Record


class TemplateCurator:
    curator_name = "template"
    model = "template"
    prompt_version = template.PROMPT_VERSION
    retry_rejected = False
    concurrency = 1
    prices: dict[str, float] = {}

    def __init__(self, *, sample_rate: int = 16000, relative: bool = True):
        self.sample_rate = int(sample_rate)
        self.relative = bool(relative)
        self._cues: dict[str, AcousticCues] = {}
        self._norms: dict[str, AcousticCues] = {}

    def curate_one(self, record: Record, wav: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        cues = self._cues.get(record.id) or measure(wav, self.sample_rate)
        cot = template.template_cot(
            record, None, self.sample_rate, classes, self._norms.get(record.speaker), cues=cues
        )
        return make_entry(
            id=record.id,
            trajectory=trajectory_with_answer(cot, record.majority(classes)),
            classes=classes,
            verdict="accepted",
            reason=None,
            model=self.model,
            curator=self.curator_name,
            prompt_version=self.prompt_version,
            attempts=1,
        )

    def curate_many(
        self,
        records: Sequence[Record],
        load_audio: Callable[[str], np.ndarray],
        classes: Sequence[str],
        store: CotStore,
        *,
        progress: bool = True,
    ) -> Summary:
        pending = [r for r in records if not store.done(r.id, self.prompt_version, self.model)]
        if pending and self.relative:
            self._cues = {r.id: measure(load_audio(r.audio_path), self.sample_rate) for r in records}
            self._norms = template.speaker_norms((r.speaker, self._cues[r.id]) for r in records)
        return run_pool(self, records, load_audio, classes, store, progress=progress)

"""The audio-only IEMOCAP-format corpus: read by the IEMOCAP reader, neutral words, emotion in the sound."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from ambig.data.fixtures.iemocap_audio import CLASSES, SENTENCES, write_audio_only_iemocap
from ambig.data.iemocap import IEMOCAPCorpus


def test_the_release_reader_reads_it_and_only_the_audio_tells_the_emotion(tmp_path):
    root = write_audio_only_iemocap(tmp_path, utterances_per_dialog=8)
    corpus = IEMOCAPCorpus(root=str(root))
    records = corpus.records()
    assert corpus.classes == CLASSES and len(records) == 5 * 2 * 8 and not getattr(corpus, "skipped", [])
    assert {r.session for r in records} == {f"Ses0{s}" for s in range(1, 6)}
    assert {r.transcript for r in records} <= set(SENTENCES)  # the words carry nothing
    p = np.array([r.soft_label for r in records])
    assert (p.max(1) < 1).any() and np.allclose(p.sum(1), 1)  # ambiguous soft labels among them
    # Loudness follows the mixture: the louder half of the clips holds more angry and less sad vote mass.
    rms = np.array([np.sqrt(np.mean(sf.read(r.audio_path)[0] ** 2)) for r in records])
    loud = rms > np.median(rms)
    angry, sad = CLASSES.index("angry"), CLASSES.index("sad")
    assert p[loud, angry].mean() > p[~loud, angry].mean() + 0.1
    assert p[loud, sad].mean() < p[~loud, sad].mean() - 0.1

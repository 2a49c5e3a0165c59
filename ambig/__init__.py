"""ambig: ambiguity-aware emotion reasoning for audio-language models.

`ambig.Predictor(run_dir).predict(audio, transcript=None)` predicts a clip's emotion distribution with a
trained run (imported on first use, so `import ambig` stays light).
"""

from __future__ import annotations

__all__ = ["Predictor"]


def __getattr__(name: str):
    if name == "Predictor":
        from ambig.predict import Predictor

        return Predictor
    raise AttributeError(f"module 'ambig' has no attribute {name!r}")

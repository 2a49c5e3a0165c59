"""Is a CoT run's error in its read-out or in the reasoning it writes? Read q after the *curated* CoT.

    .venv/bin/python scripts/readout_after_gold_cot.py RUN_DIR [N]

For a synthetic-corpus run with structured CoT (e.g. a row of `make mini-paper`), teacher-force each of the
first N (default 24) train, validation and test clips of the run's fold with its curated CoT and read q after
"Answer:" exactly as training does (the SFT strategy's `answer_log_q`); prints the mean JS(p, q) per split
(scipy's `jensenshannon`, base 2, squared). Compare with the run's own test JS (q after its greedy CoT): a low
JS here and a high one there means the model reads the distribution off the reasoning but does not write the
right reasoning.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy.spatial.distance import jensenshannon

from ambig.data.audio import load_audio
from ambig.data.folds import make_split
from ambig.data.synthetic import CLASSES
from ambig.model.family import model_family
from ambig.model.inputs import BatchBuilder, Example
from ambig.predict import Predictor
from ambig.strategies.sft import SFTStrategy


def main(run_dir: Path, n: int) -> None:
    cfg = OmegaConf.load(run_dir / "config.yaml")
    if cfg.dataset.name != "synthetic" or not cfg.cot.enabled:
        raise SystemExit(f"{run_dir}: this diagnostic reads synthetic-corpus runs with CoT")
    predictor = Predictor(run_dir)
    corpus = instantiate(cfg.dataset.corpus)  # the run's corpus, its CoTs built in
    split = make_split(corpus.records(), cfg.fold, seed=cfg.seed, **cfg.dataset.folds)
    rate, seconds = int(cfg.model.sample_rate), float(cfg.model.max_audio_seconds)
    builder = BatchBuilder(
        predictor.builder.processor, CLASSES, cot=True, ce_answer_word=False, sample_rate=rate,
        template=model_family(cfg.model).template,
    )  # fmt: skip
    sft = SFTStrategy(predictor.model, builder, optim={}, decoding={}, loss=dict(cfg.loss), name="sft")
    for name, part in (("train", split.train[:n]), ("val", split.val[:n]), ("test", split.test[:n])):
        js = []
        for i in range(0, len(part), 4):
            chunk = part[i : i + 4]
            batch = builder([Example(r, load_audio(r.audio_path, rate, seconds)) for r in chunk])
            with torch.no_grad():
                q = sft.answer_log_q(sft.teacher_forced(batch), batch).exp().double().numpy()
            js += [
                jensenshannon(np.array(r.soft_label), row, base=2) ** 2
                for r, row in zip(chunk, q, strict=True)
            ]
        print(
            f"{name}: mean JS(p, q after the curated CoT) = {np.mean(js):.4f} over {len(js)} clips",
            flush=True,
        )


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        raise SystemExit(__doc__)
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) == 3 else 24)

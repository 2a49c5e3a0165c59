"""Predict the emotion distribution of your own audio with a trained run.

    python -m ambig.predict checkpoint=<run dir or .ckpt> audio=<wav file or folder> [transcripts=<csv>]
        [out=<predictions.jsonl>] [max_new_tokens=160]

Python: `ambig.predict.Predictor(run_dir).predict(path_or_array, transcript=None)`.

Per clip it prints the predicted distribution (sorted, with a text bar) and the generated reasoning, and
writes one JSON line. Without a transcript the prompt says none was given and the model reasons from the audio
alone. A file that cannot be read gets an error line; the other files still run. `transcripts` is a CSV with
columns `file,transcript` (file name as in the folder).
"""

from __future__ import annotations

import csv
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from ambig.checkpoints import init_checkpoint, load_init
from ambig.cli import user_errors
from ambig.data.audio import AudioError, load_audio
from ambig.data.records import Record
from ambig.model.family import model_family
from ambig.model.formats import parse_output
from ambig.model.inputs import BatchBuilder, Example
from ambig.model.load import load_model
from ambig.rollout import decode, read_after
from ambig.strategies.base import BaseStrategy

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3")


@dataclass
class Prediction:
    """One clip's predicted distribution (class -> probability, in the run's class order) and reasoning."""

    name: str
    distribution: dict[str, float]
    reasoning: str | None
    answer: str | None

    def as_json(self) -> dict:
        return {"file": self.name, "q": self.distribution, "cot": self.reasoning, "answer": self.answer}


class Predictor:
    """A trained run's model, ready to predict: `Predictor(run_dir).predict(audio, transcript=None)`.

    `checkpoint`: a run directory (its best checkpoint, else its last) or a .ckpt inside one; the run's
    config.yaml gives the model, CoT setting and decoding length, its metrics.json the classes.
    """

    def __init__(self, checkpoint: str | Path, *, max_new_tokens: int | None = None):
        path = Path(checkpoint).expanduser()
        run_dir = path.parents[1] if path.is_file() else path
        for needed in ("config.yaml", "metrics.json"):
            if not (run_dir / needed).is_file():
                raise FileNotFoundError(
                    f"checkpoint={checkpoint}: {run_dir / needed} is missing; give a training run directory "
                    "(runs/<dataset>/<strategy>/fold<k>/<timestamp>), a .ckpt inside one, or a directory "
                    "written by python -m ambig.export"
                )
        cfg = OmegaConf.load(run_dir / "config.yaml")
        metrics = json.loads((run_dir / "metrics.json").read_text())
        self.classes = tuple(metrics["classes"])
        exported = _exported(run_dir)
        if exported is not None:
            model, processor = _load_exported(run_dir, cfg, exported)
        else:
            model, processor = load_model(cfg.model)
        self.cot = bool(cfg.cot.enabled)
        self.builder = BatchBuilder(
            processor,
            self.classes,
            cot=self.cot,
            ce_answer_word=False,
            sample_rate=cfg.model.sample_rate,
            family=model_family(cfg.model),
        ).for_evaluation()
        holder = BaseStrategy(model, self.builder, optim={}, decoding={}, loss={}, name="predict")
        if cfg.strategy.name != "base" and exported is None:  # a trained run: its weights
            load_init(holder, init_checkpoint(path))
        self.model = holder.model.eval()
        self.sample_rate = int(cfg.model.sample_rate)
        self.max_seconds = float(cfg.model.max_audio_seconds)
        # The budget the run was evaluated with (sized from its training targets when it said auto).
        budget = metrics.get("max_new_tokens") or cfg.decoding.max_new_tokens
        self.max_new_tokens = int(max_new_tokens or budget)
        self.output_format = cfg.model.get("output_format", "ambig")

    @torch.no_grad()
    def predict(
        self, audio: str | Path | np.ndarray, transcript: str | None = None, *, sample_rate: int | None = None
    ) -> Prediction:
        """The distribution of one clip: a file path, or a mono waveform at `sample_rate` (default: the
        model's). Raises AudioError for unreadable audio."""
        if isinstance(audio, np.ndarray):
            if (sample_rate or self.sample_rate) != self.sample_rate:
                raise ValueError(f"pass audio at {self.sample_rate} Hz (got {sample_rate}), or a file path")
            wave, name = (
                np.asarray(audio, dtype=np.float32)[: int(self.max_seconds * self.sample_rate)],
                "<array>",
            )
        else:
            wave, name = load_audio(Path(audio), self.sample_rate, self.max_seconds), Path(audio).name
        uniform = tuple(1.0 for _ in self.classes)  # the prompt needs no votes; the batch wants a label
        record = Record(
            name,
            str(audio) if not isinstance(audio, np.ndarray) else name,
            transcript or "",
            uniform,
            "-",
            "-",
        )
        batch = self.builder([Example(record, wave)])
        if self.cot:
            out = decode(self.model, batch, self.builder, max_new_tokens=self.max_new_tokens)
            log_q, text = out.log_q[0], out.texts[0]
        else:
            log_q, text = read_after(self.model, batch, self.builder, [[]])[0], None
        q = log_q.exp().float()
        q = (q / q.sum()).tolist()
        answer = parse_output(text, self.classes, self.output_format).answer if text is not None else None
        return Prediction(name, dict(zip(self.classes, q, strict=True)), text, answer)


def _exported(folder: Path) -> dict | None:
    """The record `ambig.export` leaves in a directory it wrote, or None."""
    from ambig.export import EXPORT_FILE

    record = folder / EXPORT_FILE
    return json.loads(record.read_text()) if record.is_file() else None


def _load_exported(folder: Path, cfg, record: dict):
    """(model, processor) of an exported directory: merged weights by from_pretrained, or the run's base
    model with the exported adapter on it."""
    base_cfg = OmegaConf.merge(cfg.model, {"lora": None, "train_audio_tower": False})
    if record["merged"]:
        return load_model(OmegaConf.merge(base_cfg, {"path": str(folder)}))
    from peft import PeftModel

    base, processor = load_model(base_cfg)
    return PeftModel.from_pretrained(base, str(folder)), processor


def format_prediction(pred: Prediction, width: int = 30) -> str:
    """The distribution sorted by probability with a text bar per class, then the reasoning."""
    lines = [pred.name]
    for name, prob in sorted(pred.distribution.items(), key=lambda kv: -kv[1]):
        lines.append(f"  {name:>10s} {prob:6.3f} {'#' * round(prob * width)}")
    if pred.reasoning:
        lines.append("  reasoning: " + pred.reasoning.replace("\n", "\n             "))
    return "\n".join(lines)


def audio_files(audio: Path) -> list[Path]:
    if audio.is_dir():
        return sorted(p for p in audio.iterdir() if p.suffix.lower() in AUDIO_SUFFIXES)
    return [audio]


def read_transcripts(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if rows and not {"file", "transcript"} <= set(rows[0]):
        raise ValueError(f"{path}: a transcripts CSV needs the columns file,transcript")
    return {row["file"]: row["transcript"] for row in rows}


@user_errors
def main(argv: list[str] | None = None) -> int:
    args = dict(a.split("=", 1) for a in (sys.argv[1:] if argv is None else argv))
    unknown = set(args) - {"checkpoint", "audio", "transcripts", "out", "max_new_tokens"}
    if unknown or not {"checkpoint", "audio"} <= set(args):
        print(f"usage: {__doc__.strip().splitlines()[0]}  (unknown: {sorted(unknown)})", file=sys.stderr)
        return 2
    audio = Path(args["audio"])
    if not audio.exists():
        print(f"audio={audio}: no such file or folder", file=sys.stderr)
        return 2
    out = Path(args.get("out", "predictions.jsonl"))
    if out.exists():
        print(f"out={out} exists: predictions are never overwritten; choose another out=", file=sys.stderr)
        return 2
    predictor = Predictor(args["checkpoint"], max_new_tokens=int(args.get("max_new_tokens", 0)) or None)
    transcripts = read_transcripts(Path(args["transcripts"]) if "transcripts" in args else None)
    failed = 0
    with open(out, "x") as fh:  # never over an earlier file
        for path in audio_files(audio):
            try:
                pred = predictor.predict(path, transcripts.get(path.name))
            except AudioError as err:
                failed += 1
                print(f"{path.name}: error: {err}")
                fh.write(json.dumps({"file": path.name, "error": str(err)}) + "\n")
                continue
            print(format_prediction(pred))
            fh.write(json.dumps(pred.as_json()) + "\n")
    print(f"written: {out} ({failed} file(s) failed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

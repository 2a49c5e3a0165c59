"""The files a run leaves: metrics.json, predictions.jsonl, and the printed results table."""

from __future__ import annotations

import json
from pathlib import Path

from ambig.metrics import METRIC_DIRECTIONS

COLUMNS = ("js", "bc", "r2", "brier", "kl", "accuracy")
ARROWS = {"down": "↓", "up": "↑"}


def write_new(path: Path, text: str) -> None:
    """Write `text` to a file that must not exist yet: a rerun never overwrites results."""
    with open(path, "x") as fh:
        fh.write(text)


def write_results(run_dir: Path, metrics: dict, predictions: list[dict]) -> None:
    lines = "".join(json.dumps(p) + "\n" for p in predictions)
    write_new(run_dir / "predictions.jsonl", lines)
    write_new(run_dir / "metrics.json", json.dumps(metrics, indent=2) + "\n")


def format_table(metrics: dict) -> str:
    """A two-line results table for the console."""
    head = "  ".join(
        f"{k.upper() if k != 'accuracy' else 'Acc'} {ARROWS[METRIC_DIRECTIONS[k]]}".rjust(8) for k in COLUMNS
    )
    row = "  ".join(f"{metrics[k]:8.4f}" for k in COLUMNS)
    data = metrics["dataset"]
    if metrics.get("test_dataset", data) != data:
        data = f"{data} -> {metrics['test_dataset']}"
    title = (
        f"{data} / {metrics['strategy']} / fold {metrics['fold']} "
        f"(loss={metrics['loss']}, cot={metrics['cot']}, n={metrics['n']} test utterances)"
    )
    return f"{title}\n{head}\n{row}"

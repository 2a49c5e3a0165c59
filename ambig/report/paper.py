"""The paper's published numbers (ambig/assets/paper_results.json), looked up per cell.

A cell matches a paper entry on dataset, test_dataset, strategy, loss and cot; the model is not part of
the key (the paper used one model, our runs may use the tiny stand-in).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ambig.report.collect import CellKey

PAPER_RESULTS_PATH = Path(__file__).resolve().parent.parent / "assets" / "paper_results.json"
PAPER_METRICS = ("js", "bc", "r2", "brier")
PaperKey = tuple[str, str, str, str, str]


@dataclass(frozen=True)
class PaperResults:
    """The paper's entries by (dataset, test_dataset, strategy, loss, cot), and where they come from."""

    source: str
    entries: dict[PaperKey, dict[str, float]]

    def lookup(self, cell: CellKey) -> dict[str, float] | None:
        """The paper's JS, BC, R2 and Brier for a cell, or None when the paper has no such row."""
        return self.entries.get(paper_key(cell))


def paper_key(cell: CellKey) -> PaperKey:
    """The fields a cell is matched on against the paper (everything but the model)."""
    return (cell.dataset, cell.test_dataset, cell.strategy, cell.loss, cell.cot)


def load_paper_results(path: Path = PAPER_RESULTS_PATH) -> PaperResults:
    """Read the paper's numbers; a key listed twice is an error in the asset."""
    data = json.loads(Path(path).read_text())
    entries: dict[PaperKey, dict[str, float]] = {}
    for entry in data["entries"]:
        key = (entry["dataset"], entry["test_dataset"], entry["strategy"], entry["loss"], entry["cot"])
        if key in entries:
            raise ValueError(f"{path}: paper entry {key} listed twice")
        entries[key] = {name: float(entry[name]) for name in PAPER_METRICS}
    return PaperResults(source=data["source"], entries=entries)

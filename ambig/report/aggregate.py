"""Average runs over folds into cells, and say what is missing: incomplete cells, superseded reruns.

The folds a cell should have are those seen for its (dataset, test_dataset) anywhere in the report,
in finished runs and in failed jobs alike, so a missing fold is always visible, never averaged over.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from ambig.report.collect import CellKey, FailedRun, Run
from ambig.results import COLUMNS


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (ddof=1) over folds; ``std`` is None with one fold."""

    mean: float
    std: float | None


@dataclass(frozen=True)
class Superseded:
    """A run left out because a newer run of the same cell and fold exists."""

    run: Run
    by: Run


@dataclass(frozen=True)
class Cell:
    """One row of a results table: a cell's runs (one per fold), their statistics and expected folds."""

    key: CellKey
    runs: tuple[Run, ...]
    stats: dict[str, Stat]
    expected_folds: tuple[int, ...]

    @property
    def folds(self) -> tuple[int, ...]:
        """The folds averaged over, ascending."""
        return tuple(run.fold for run in self.runs)

    @property
    def missing_folds(self) -> tuple[int, ...]:
        """Expected folds with no finished run."""
        return tuple(f for f in self.expected_folds if f not in self.folds)

    @property
    def complete(self) -> bool:
        """Whether every expected fold has a finished run."""
        return not self.missing_folds


@dataclass(frozen=True)
class Aggregate:
    """Everything the report shows: cells, incomplete ones, failed jobs and superseded runs."""

    cells: list[Cell]
    failed: list[FailedRun]
    superseded: list[Superseded]
    unstarted: list[tuple[CellKey, tuple[int, ...]]] = field(default_factory=list)

    @property
    def incomplete(self) -> list[Cell]:
        """Cells missing at least one expected fold."""
        return [cell for cell in self.cells if not cell.complete]

    def finished_run(self, key: CellKey | None, fold: int | None) -> Run | None:
        """The run averaged for this cell and fold, if any (e.g. a rerun after a failed job)."""
        for cell in self.cells:
            if cell.key == key:
                return next((run for run in cell.runs if run.fold == fold), None)
        return None


def summarise(values: list[float]) -> Stat:
    """Mean and sample std (ddof=1) of one metric over folds; no std for a single fold."""
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if len(array) > 1 else None
    return Stat(mean=float(np.mean(array)), std=std)


def newest_per_fold(runs: list[Run]) -> tuple[list[Run], list[Superseded]]:
    """The newest run (metrics.json mtime, then path) of each (cell, fold); older ones are superseded."""
    by_slot: dict[tuple[CellKey, int], list[Run]] = defaultdict(list)
    for run in runs:
        by_slot[(run.cell, run.fold)].append(run)
    kept: list[Run] = []
    superseded: list[Superseded] = []
    for slot_runs in by_slot.values():
        ordered = sorted(slot_runs, key=lambda r: (r.mtime, str(r.path)))
        newest = ordered[-1]
        kept.append(newest)
        superseded.extend(Superseded(run=old, by=newest) for old in ordered[:-1])
    superseded.sort(key=lambda s: (s.run.cell, s.run.fold, str(s.run.path)))
    return kept, superseded


def expected_folds(runs: list[Run], failed: list[FailedRun]) -> dict[tuple[str, str], set[int]]:
    """For each (dataset, test_dataset): the union of folds seen in its runs and failed jobs."""
    folds: dict[tuple[str, str], set[int]] = defaultdict(set)
    for run in runs:
        folds[run.cell.group].add(run.fold)
    for job in failed:
        if job.cell is not None and job.fold is not None:
            folds[job.cell.group].add(job.fold)
    return folds


def build_cell(key: CellKey, runs: list[Run], expected: set[int]) -> Cell:
    """A cell from its runs (one per fold) and the folds its table expects."""
    runs = sorted(runs, key=lambda r: r.fold)
    stats = {name: summarise([r.metrics[name] for r in runs]) for name in COLUMNS}
    return Cell(key=key, runs=tuple(runs), stats=stats, expected_folds=tuple(sorted(expected)))


def unstarted_cells(
    cells: list[Cell], failed: list[FailedRun], expected
) -> list[tuple[CellKey, tuple[int, ...]]]:
    """Cells known only from failed jobs (no finished fold at all), with the folds they are missing."""
    known = {cell.key for cell in cells}
    orphans = sorted({job.cell for job in failed if job.cell is not None and job.cell not in known})
    return [(key, tuple(sorted(expected[key.group]))) for key in orphans]


def aggregate(runs: list[Run], failed: list[FailedRun]) -> Aggregate:
    """Average the newest run of each (cell, fold) over folds; mark missing folds and superseded runs."""
    kept, superseded = newest_per_fold(runs)
    expected = expected_folds(runs, failed)
    by_cell: dict[CellKey, list[Run]] = defaultdict(list)
    for run in kept:
        by_cell[run.cell].append(run)
    cells = [build_cell(key, by_cell[key], expected[key.group]) for key in sorted(by_cell)]
    return Aggregate(
        cells=cells,
        failed=failed,
        superseded=superseded,
        unstarted=unstarted_cells(cells, failed, expected),
    )

"""summary.json: the report's cells, incomplete cells, failed jobs and superseded runs, machine-readable."""

from __future__ import annotations

from pathlib import Path

from ambig.report.aggregate import Aggregate, Cell
from ambig.report.claims import verdicts
from ambig.report.collect import FailedRun
from ambig.report.paper import PaperResults


def cell_record(cell: Cell, paper: PaperResults) -> dict:
    """One cell: its key, folds (present, expected, missing), runs, per-metric mean/std, the paper's row."""
    return {
        **cell.key.as_dict(),
        "folds": list(cell.folds),
        "expected_folds": list(cell.expected_folds),
        "missing_folds": list(cell.missing_folds),
        "complete": cell.complete,
        "runs": [str(run.path) for run in cell.runs],
        "metrics": {name: {"mean": s.mean, "std": s.std} for name, s in cell.stats.items()},
        "paper": paper.lookup(cell.key),
    }


def failed_record(job: FailedRun, agg: Aggregate) -> dict:
    """One failed or unfinished job: path, reason, overrides, its cell and fold when known, and the
    finished run of that cell and fold averaged instead (if any)."""
    finished = agg.finished_run(job.cell, job.fold)
    return {
        "path": str(job.path),
        "reason": job.reason,
        "overrides": list(job.overrides),
        "cell": None if job.cell is None else job.cell.as_dict(),
        "fold": job.fold,
        "finished_run": None if finished is None else str(finished.path),
    }


def summary(
    agg: Aggregate, paper: PaperResults, inputs: list[Path], figures: list[Path], notes: list[str]
) -> dict:
    """The whole summary.json document."""
    incomplete = [
        {**c.key.as_dict(), "folds": list(c.folds), "missing_folds": list(c.missing_folds)}
        for c in agg.incomplete
    ]
    incomplete += [
        {**key.as_dict(), "folds": [], "missing_folds": list(folds)} for key, folds in agg.unstarted
    ]
    return {
        "inputs": [str(p) for p in inputs],
        "paper_source": paper.source,
        "cells": [cell_record(c, paper) for c in agg.cells],
        "incomplete": incomplete,
        "failed": [failed_record(j, agg) for j in agg.failed],
        "superseded": [
            {**s.run.cell.as_dict(), "fold": s.run.fold, "path": str(s.run.path), "by": str(s.by.path)}
            for s in agg.superseded
        ],
        "claims": [
            {
                "claim": v.claim.text,
                "dataset": v.table[0],
                "test_dataset": v.table[1],
                "model": v.model,
                "better": list(v.claim.better),
                "worse": list(v.claim.worse),
                "better_js": v.better_js,
                "worse_js": v.worse_js,
                "held": v.held,
                "paper": [{"dataset": d, "better_js": b, "worse_js": w} for d, b, w in v.paper],
            }
            for v in verdicts(agg.cells, paper)
        ],
        "figures": [f.name for f in figures],
        "notes": notes,
    }

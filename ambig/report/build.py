"""Write a report: collect runs, aggregate them, and write report.md, report.tex, summary.json and figures
(with the test-time-scaling benchmark's tables and figures when its runs are there: tts_benchmark.py)
into a directory that must not exist yet (an earlier report is never overwritten)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ambig.report.aggregate import Aggregate, aggregate
from ambig.report.collect import collect
from ambig.report.figures import draw_figures
from ambig.report.paper import PaperResults, load_paper_results
from ambig.report.render import render_latex, render_markdown
from ambig.report.summary import summary
from ambig.report.tts_benchmark import (
    benchmark_cells,
    benchmark_record,
    collect_benchmark,
    draw_benchmark,
    render_benchmark,
)
from ambig.results import write_new


class ReportError(Exception):
    """A report that cannot be made: a missing input path, no runs found, or an existing output directory."""


@dataclass(frozen=True)
class Report:
    """A written report: where it is, its Markdown, and what it aggregated."""

    out_dir: Path
    markdown: str
    aggregate: Aggregate


def default_out_dir(first_input: Path, now: datetime | None = None) -> Path:
    """``<first input>/report/<YYYY-mm-dd_HH-MM-SS>``."""
    stamp = (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")
    return first_input / "report" / stamp


def check_inputs(paths: list[Path]) -> None:
    """Refuse paths that do not exist (or are not directories)."""
    missing = [str(p) for p in paths if not p.is_dir()]
    if missing:
        raise ReportError(f"no such directory: {', '.join(missing)}")


def make_out_dir(out_dir: Path) -> None:
    """Create the report directory; refuse one that exists, so an earlier report stays as it was."""
    try:
        out_dir.mkdir(parents=True, exist_ok=False)
    except FileExistsError as err:
        raise ReportError(
            f"{out_dir} already exists: choose another --out (reports are never overwritten)"
        ) from err


def write_outputs(out_dir: Path, agg: Aggregate, paper: PaperResults, inputs: list[Path]) -> str:
    """Figures, report.md, report.tex and summary.json into ``out_dir``; returns the Markdown."""
    bench = collect_benchmark(agg)
    figures = draw_figures(agg.cells, out_dir, tts_apart=frozenset(benchmark_cells(agg, bench)))
    sections = []
    if bench.points or bench.failed:
        draw_benchmark(bench, out_dir, figures)
        sections.append(render_benchmark(bench, figures.written))
    markdown = render_markdown(agg, paper, figures.written, figures.notes, sections)
    write_new(out_dir / "report.md", markdown)
    write_new(out_dir / "report.tex", render_latex(agg, paper))
    doc = summary(agg, paper, inputs, figures.written, figures.notes)
    if bench.points or bench.failed:
        doc["tts_benchmark"] = benchmark_record(bench)
    write_new(out_dir / "summary.json", json.dumps(doc, indent=2) + "\n")
    return markdown


def build_report(paths: list[Path], out_dir: Path | None = None) -> Report:
    """Aggregate the runs under ``paths`` and write the report; raises :class:`ReportError` when it cannot."""
    check_inputs(paths)
    runs, failed = collect(paths)
    if not runs and not failed:
        raise ReportError(f"no run directory (metrics.json or .hydra job) under {', '.join(map(str, paths))}")
    out_dir = out_dir or default_out_dir(paths[0])
    if out_dir.exists():
        raise ReportError(f"{out_dir} already exists: choose another --out (reports are never overwritten)")
    agg = aggregate(runs, failed)
    paper = load_paper_results()
    make_out_dir(out_dir)
    return Report(out_dir=out_dir, markdown=write_outputs(out_dir, agg, paper, paths), aggregate=agg)

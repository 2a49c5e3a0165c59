"""The report's tables as Markdown (report.md, printed) and LaTeX (report.tex).

One table per (dataset, test_dataset); one row per cell, named by its strategy plus the loss, CoT and
model columns that vary within that table. Metric columns hold ``mean ± std`` over folds, marked
``(n/m folds)`` when folds are missing; the paper's numbers stand beside each row, ``–`` where it has none.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ambig.metrics import METRIC_DIRECTIONS
from ambig.report.aggregate import Aggregate, Cell, Stat
from ambig.report.claims import render_claims
from ambig.report.collect import CellKey, FailedRun
from ambig.report.paper import PAPER_METRICS, PaperResults
from ambig.results import ARROWS

STRATEGY_ORDER = ("base", "audio_reasoner", "sft", "dpo", "grpo", "grpoz")
METRIC_NAMES = {"js": "JS", "bc": "BC", "r2": "R2", "brier": "Brier"}
ROW_FIELDS = ("loss", "cot", "model")
FIELD_TITLES = {"strategy": "Strategy", "loss": "Loss", "cot": "CoT", "model": "Model"}

_LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def escape_latex(text: str) -> str:
    """Text made safe for LaTeX (its ten special characters escaped)."""
    return "".join(_LATEX_SPECIALS.get(ch, ch) for ch in text)


def escape_markdown(text: str) -> str:
    """Text made safe inside a Markdown table cell."""
    return text.replace("|", r"\|")


@dataclass(frozen=True)
class Style:
    """How one output format writes the table's symbols and escapes names."""

    plus_minus: str
    missing: str
    arrows: dict[str, str]
    arrow_to: str
    escape: Callable[[str], str]


MARKDOWN = Style(" ± ", "–", ARROWS, " → ", escape_markdown)
LATEX = Style(
    r" $\pm$ ", "--", {"down": r"$\downarrow$", "up": r"$\uparrow$"}, r" $\rightarrow$ ", escape_latex
)


def strategy_rank(strategy: str) -> tuple[int, str]:
    """Sort key putting strategies in the paper's order, unknown ones after, alphabetically."""
    if strategy in STRATEGY_ORDER:
        return (STRATEGY_ORDER.index(strategy), "")
    return (len(STRATEGY_ORDER), strategy)


def row_sort_key(cell: Cell) -> tuple:
    """Order of rows within a table: strategy (paper order), then loss, CoT and model."""
    key = cell.key
    return (strategy_rank(key.strategy), key.loss, key.cot, key.model)


def group_tables(cells: list[Cell]) -> dict[tuple[str, str], list[Cell]]:
    """Cells by (dataset, test_dataset), in-domain tables before cross-domain ones; rows sorted."""
    groups: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.key.group, []).append(cell)
    order = sorted(groups, key=lambda g: (g[0], g[0] != g[1], g[1]))
    return {g: sorted(groups[g], key=row_sort_key) for g in order}


def varying_fields(keys: list[CellKey]) -> list[str]:
    """Which of loss, CoT and model take more than one value among these cells."""
    return [name for name in ROW_FIELDS if len({getattr(k, name) for k in keys}) > 1]


def group_title(group: tuple[str, str], style: Style) -> str:
    """A table's title: the dataset, or 'train → test' when testing on another corpus."""
    dataset, test_dataset = group
    if dataset == test_dataset:
        return style.escape(dataset)
    return style.escape(dataset) + style.arrow_to + style.escape(test_dataset)


def format_stat(stat: Stat, cell: Cell, style: Style) -> str:
    """``mean ± std`` to three decimals; ``(n/m folds)`` appended when the cell misses folds."""
    std = style.missing if stat.std is None else f"{stat.std:.3f}"
    text = f"{stat.mean:.3f}{style.plus_minus}{std}"
    if not cell.complete:
        text += f" ({len(cell.folds)}/{len(cell.expected_folds)} folds)"
    return text


def header(fields: list[str], style: Style) -> list[str]:
    """Column titles: row-naming fields, our four metrics with their direction, folds, the paper's four."""
    names = [FIELD_TITLES[f] for f in ["strategy", *fields]]
    ours = [f"{METRIC_NAMES[m]} {style.arrows[METRIC_DIRECTIONS[m]]}" for m in PAPER_METRICS]
    paper = [f"Paper {METRIC_NAMES[m]}" for m in PAPER_METRICS]
    return [*names, *ours, "Folds", *paper]


def row(cell: Cell, fields: list[str], paper: PaperResults, style: Style) -> list[str]:
    """One table row for a cell."""
    names = [style.escape(getattr(cell.key, f)) for f in ["strategy", *fields]]
    ours = [format_stat(cell.stats[m], cell, style) for m in PAPER_METRICS]
    published = paper.lookup(cell.key)
    theirs = [style.missing if published is None else f"{published[m]:.2f}" for m in PAPER_METRICS]
    return [*names, *ours, f"{len(cell.folds)}/{len(cell.expected_folds)}", *theirs]


def markdown_table(cells: list[Cell], paper: PaperResults) -> str:
    """One Markdown table for the cells of one (dataset, test_dataset)."""
    fields = varying_fields([c.key for c in cells])
    head = header(fields, MARKDOWN)
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    lines += ["| " + " | ".join(row(c, fields, paper, MARKDOWN)) + " |" for c in cells]
    return "\n".join(lines)


def latex_table(group: tuple[str, str], cells: list[Cell], paper: PaperResults) -> str:
    """One LaTeX table (a ``tabular`` in a ``table`` float) for the cells of one (dataset, test_dataset)."""
    fields = varying_fields([c.key for c in cells])
    head = header(fields, LATEX)
    spec = "l" * (1 + len(fields)) + "r" * (len(head) - 1 - len(fields))
    body = [" & ".join(row(c, fields, paper, LATEX)) + r" \\" for c in cells]
    return "\n".join(
        [
            r"\begin{table}[t]",
            r"\centering",
            rf"\caption{{{group_title(group, LATEX)}}}",
            rf"\begin{{tabular}}{{{spec}}}",
            r"\hline",
            " & ".join(head) + r" \\",
            r"\hline",
            *body,
            r"\hline",
            r"\end{tabular}",
            r"\end{table}",
        ]
    )


def cell_label(key: CellKey, fold: int | None = None) -> str:
    """A cell (and optionally a fold) in words, for the report's lists."""
    text = f"{key.data_label} / {key.strategy} (model={key.model}, loss={key.loss}, cot={key.cot})"
    return text if fold is None else f"{text}, fold {fold}"


def folds_text(folds: tuple[int, ...] | list[int]) -> str:
    """Folds as a comma-separated list."""
    return ", ".join(str(f) for f in folds)


def incomplete_lines(agg: Aggregate) -> list[str]:
    """The Incomplete section's items: cells missing folds, and cells with no finished fold at all."""
    lines = [
        f"- {cell_label(c.key)}: {len(c.folds)}/{len(c.expected_folds)} folds; "
        f"missing fold(s) {folds_text(c.missing_folds)}"
        for c in agg.incomplete
    ]
    lines += [
        f"- {cell_label(key)}: 0/{len(folds)} folds (only failed or unfinished jobs); "
        f"missing fold(s) {folds_text(folds)}"
        for key, folds in agg.unstarted
    ]
    return lines


def failed_line(job: FailedRun, agg: Aggregate) -> str:
    """One failed or unfinished job: where, why, its overrides, its cell (when known) and whether another
    run of that cell and fold finished."""
    overrides = " ".join(job.overrides) if job.overrides else "(none)"
    text = f"- `{job.path}`: {job.reason}; overrides: `{overrides}`"
    if job.cell is not None:
        text += f"; {cell_label(job.cell, job.fold)}"
    finished = agg.finished_run(job.cell, job.fold)
    if finished is not None:
        text += f"; a finished run of this cell and fold is averaged instead: `{finished.path}`"
    return text


def section(title: str, lines: list[str]) -> str:
    """A Markdown section; 'None.' when it has no items."""
    return f"## {title}\n\n" + ("\n".join(lines) if lines else "None.")


def render_markdown(
    agg: Aggregate,
    paper: PaperResults,
    figures: list[Path],
    notes: list[str],
    sections: list[str] | tuple[str, ...] = (),
) -> str:
    """The whole Markdown report: tables, the paper's claims checked on them, any further ``sections``
    (Markdown, e.g. the test-time-scaling benchmark's), then incomplete, failed, superseded, figures and
    notes."""
    n_runs = sum(len(c.runs) for c in agg.cells)
    intro = (
        f"# Results\n\n{n_runs} run(s) averaged into {len(agg.cells)} cell(s); "
        f"{len(agg.failed)} failed or unfinished; {len(agg.superseded)} superseded.\n"
        "Metrics: mean ± sample std over folds (ddof=1; – with one fold); "
        f"paper numbers: {paper.source} (– where the paper has no such row)."
    )
    tables = [
        f"## {group_title(g, MARKDOWN)}\n\n{markdown_table(cells, paper)}"
        for g, cells in group_tables(agg.cells).items()
    ]
    superseded = [
        f"- `{s.run.path}` ({cell_label(s.run.cell, s.run.fold)}): replaced by newer `{s.by.path}`"
        for s in agg.superseded
    ]
    claims = render_claims(agg.cells, paper).rstrip()
    parts = [
        intro,
        *tables,
        *([claims] if claims else []),
        *sections,
        section("Incomplete", incomplete_lines(agg)),
        section("Failed or unfinished runs", [failed_line(j, agg) for j in agg.failed]),
        section("Superseded runs", superseded),
        section("Figures", [f"- {f.name}" for f in figures]),
        section("Notes", [f"- {n}" for n in notes]),
    ]
    return "\n\n".join(parts) + "\n"


def render_latex(agg: Aggregate, paper: PaperResults) -> str:
    """The tables as LaTeX, one ``table`` per (dataset, test_dataset)."""
    head = (
        "% Generated by python -m ambig.report. Metrics: mean $\\pm$ sample std over folds;\n"
        f"% paper numbers: {paper.source}.\n"
    )
    tables = [latex_table(g, cells, paper) for g, cells in group_tables(agg.cells).items()]
    return head + "\n\n".join(tables) + "\n"

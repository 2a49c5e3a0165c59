"""The report's figures (matplotlib, Agg): Figure 2 of the paper, per-cell reliability and examples.

Plotting is kept apart from the numbers it plots: :func:`reliability_bins`, :func:`human_entropy`,
:func:`select_examples` and :func:`fig2_bars` are pure and tested on their own.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ambig.report.aggregate import Cell
from ambig.report.collect import CellKey, Prediction, load_predictions
from ambig.report.render import cell_label, group_tables, varying_fields

FIG2_STRATEGIES = ("sft", "dpo")
FIG2_LOSSES = ("ce_only", "ambiguity")
FIG2_LOSS_NAMES = {"ce_only": "CE only", "ambiguity": "CE + KL"}
N_BINS = 10
N_EXAMPLES = 4


@dataclass
class Figures:
    """Figures written (paths) and notes on what was skipped and why."""

    written: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ReliabilityBins:
    """Non-empty bins of one class: mean predicted q, mean human p, and how many utterances fell in each."""

    mean_q: np.ndarray
    mean_p: np.ndarray
    count: np.ndarray


def reliability_bins(q: np.ndarray, p: np.ndarray, n_bins: int = N_BINS) -> ReliabilityBins:
    """Bin predicted ``q`` into ``n_bins`` equal-width bins on [0, 1] (q = 1 in the last); per non-empty bin,
    the mean q and the mean human ``p`` of the utterances in it."""
    q = np.asarray(q, dtype=float)
    p = np.asarray(p, dtype=float)
    index = np.clip(np.floor(q * n_bins).astype(int), 0, n_bins - 1)
    count = np.bincount(index, minlength=n_bins)
    sum_q = np.bincount(index, weights=q, minlength=n_bins)
    sum_p = np.bincount(index, weights=p, minlength=n_bins)
    used = count > 0
    return ReliabilityBins(
        mean_q=sum_q[used] / count[used], mean_p=sum_p[used] / count[used], count=count[used]
    )


def human_entropy(p: tuple[float, ...]) -> float:
    """Shannon entropy (nats) of a human distribution, with 0 log 0 = 0."""
    return -sum(x * math.log(x) for x in p if x > 0)


def select_examples(predictions: list[Prediction], k: int = N_EXAMPLES) -> list[Prediction]:
    """The ``k`` utterances with the highest human entropy; ties (to 1e-9) broken by id."""
    return sorted(predictions, key=lambda pr: (-round(human_entropy(pr.p), 9), pr.id))[:k]


def fig2_bars(cells: list[Cell]) -> dict[str, dict[tuple[str, str], Cell]]:
    """Figure 2's data: for each group (a dataset, plus whatever else separates the cells), the cell of
    each (strategy, loss) in {sft, dpo} x {ce_only, ambiguity}; groups with none are left out."""
    chosen = [c for c in cells if c.key.strategy in FIG2_STRATEGIES and c.key.loss in FIG2_LOSSES]
    extra = [f for f in ("cot", "model") if len({getattr(c.key, f) for c in chosen}) > 1]
    groups: dict[str, dict[tuple[str, str], Cell]] = {}
    for cell in sorted(chosen, key=lambda c: (c.key.dataset, c.key.test_dataset != c.key.dataset, c.key)):
        key = cell.key
        label = "\n".join([key.data_label, *(f"{f}={getattr(key, f)}" for f in extra)])
        groups.setdefault(label, {})[(key.strategy, key.loss)] = cell
    return groups


def draw_fig2(cells: list[Cell], out_dir: Path, figures: Figures) -> None:
    """fig2_kl.png: JS (mean, std error bars) of SFT and DPO, CE only vs CE + KL, a group per dataset."""
    groups = fig2_bars(cells)
    if not groups:
        figures.notes.append(
            "fig2_kl.png skipped: no cell with strategy in {sft, dpo} and loss in {ce_only, ambiguity}"
        )
        return
    bars = [(s, loss) for s in FIG2_STRATEGIES for loss in FIG2_LOSSES]
    width = 0.8 / len(bars)
    fig = new_figure(2.2 + 1.8 * len(groups), 3.6)
    ax = fig.subplots()
    x = np.arange(len(groups))
    for i, (strategy, loss) in enumerate(bars):
        found = [group.get((strategy, loss)) for group in groups.values()]
        means = [np.nan if c is None else c.stats["js"].mean for c in found]
        errors = [0.0 if c is None or c.stats["js"].std is None else c.stats["js"].std for c in found]
        ax.bar(
            x + (i - (len(bars) - 1) / 2) * width,
            means,
            width,
            yerr=errors,
            capsize=3,
            label=f"{strategy.upper()}, {FIG2_LOSS_NAMES[loss]}",
        )
    ax.set_xticks(x, list(groups))
    ax.set_ylabel("JS divergence (lower is better)")
    ax.set_title("Figure 2: CE only vs CE + KL (loss=ambiguity)")
    ax.legend(fontsize="small")
    save(fig, out_dir / "fig2_kl.png", figures)


def new_figure(width: float, height: float) -> Figure:
    """A figure drawn by the Agg backend, outside pyplot's global state (nothing to close)."""
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: Path, figures: Figures) -> None:
    """Write a figure as PNG, never over an existing file."""
    fig.tight_layout()
    with open(path, "xb") as fh:
        fig.savefig(fh, format="png", dpi=110)
    figures.written.append(path)


def figure_stem(key: CellKey, fields: list[str]) -> str:
    """``<dataset>_<strategy>`` (``<dataset>_to_<test>`` across corpora), plus the fields that separate
    this cell from others of its strategy in its table; only filename-safe characters."""
    data = key.dataset if key.dataset == key.test_dataset else f"{key.dataset}_to_{key.test_dataset}"
    parts = [data, key.strategy, *(getattr(key, f) for f in fields)]
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "_".join(parts))


def cell_predictions(cell: Cell, figures: Figures) -> tuple[tuple[str, ...], list[Prediction]]:
    """Class names and the predictions of all the cell's folds; unusable files are noted and skipped."""
    classes = cell.runs[0].classes
    predictions: list[Prediction] = []
    for run in cell.runs:
        if run.classes != classes:
            figures.notes.append(
                f"{run.path}: classes {run.classes} differ from the cell's {classes}; skipped"
            )
            continue
        try:
            predictions.extend(load_predictions(run))
        except (OSError, ValueError) as err:
            figures.notes.append(f"predictions of {run.path} not plotted: {err}")
    return classes, predictions


def draw_reliability(
    classes: tuple[str, ...], predictions: list[Prediction], title: str, path: Path, figures: Figures
) -> None:
    """Per-class reliability: mean human p_k against mean predicted q_k in 10 bins, with the diagonal."""
    p = np.array([pr.p for pr in predictions])
    q = np.array([pr.q for pr in predictions])
    ncols = min(len(classes), 4)
    nrows = math.ceil(len(classes) / ncols)
    fig = new_figure(3 * ncols, 3 * nrows + 0.4)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for k, name in enumerate(classes):
        ax = axes.flat[k]
        bins = reliability_bins(q[:, k], p[:, k])
        ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1)
        ax.plot(bins.mean_q, bins.mean_p, marker="o")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=name, xlabel="mean predicted q", ylabel="mean human p")
    for ax in list(axes.flat)[len(classes) :]:
        ax.axis("off")
    fig.suptitle(f"{title} ({len(predictions)} utterances)")
    save(fig, path, figures)


def draw_examples(
    classes: tuple[str, ...], predictions: list[Prediction], title: str, path: Path, figures: Figures
) -> None:
    """Human p vs predicted q per class for the most ambiguous utterances (highest human entropy)."""
    examples = select_examples(predictions)
    fig = new_figure(3.2 * len(examples), 3.6)
    axes = fig.subplots(1, len(examples), squeeze=False)
    x = np.arange(len(classes))
    for ax, example in zip(axes.flat, examples, strict=True):
        ax.bar(x - 0.2, example.p, 0.4, label="human p")
        ax.bar(x + 0.2, example.q, 0.4, label="predicted q")
        ax.set_xticks(x, classes, rotation=45, ha="right")
        ax.set(ylim=(0, 1), title=example.id)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(title)
    save(fig, path, figures)


def draw_cell_figures(cell: Cell, fields: list[str], out_dir: Path, figures: Figures) -> None:
    """The reliability and examples figures of one cell, when it has predictions."""
    classes, predictions = cell_predictions(cell, figures)
    stem = figure_stem(cell.key, fields)
    if not predictions or not classes:
        figures.notes.append(f"no predictions for {stem}: reliability and examples figures skipped")
        return
    title = cell_label(cell.key)
    draw_reliability(classes, predictions, title, out_dir / f"reliability_{stem}.png", figures)
    draw_examples(classes, predictions, title, out_dir / f"examples_{stem}.png", figures)


def tts_points(cells: list[Cell]) -> dict[tuple[str, str], list[tuple[float, float, int]]]:
    """Test-time scaling runs (`ambig.evaluate`): per (data, tts strategy), sorted points (generated tokens
    per clip, JS, N), each averaged over the cell's folds; tokens are read from the runs' metrics.json."""
    lines: dict[tuple[str, str], list[tuple[float, float, int]]] = {}
    for cell in cells:
        docs = [json.loads((run.path / "metrics.json").read_text()) for run in cell.runs]
        if not docs or "tts" not in docs[0] or "compute" not in docs[0]:
            continue
        tokens = float(np.mean([d["compute"]["generated_tokens_per_clip"] for d in docs]))
        name, n = docs[0]["tts"]["name"], int(docs[0]["tts"]["n"])
        line = (cell.key.data_label, f"{cell.key.model} {name}")
        lines.setdefault(line, []).append((tokens, cell.stats["js"].mean, n))
    return {k: sorted(v) for k, v in lines.items()}


def draw_tts(cells: list[Cell], out_dir: Path, figures: Figures) -> None:
    """tts_compute.png: test JS against generated tokens per clip, a line per test-time scaling strategy."""
    lines = tts_points(cells)
    if not lines:
        return
    fig = new_figure(6.0, 4.0)
    ax = fig.subplots()
    for (data, label), points in lines.items():
        xs, ys, ns = zip(*points, strict=True)
        ax.plot(xs, ys, marker="o", label=f"{label} ({data})")
        for x, y, n in points:
            ax.annotate(f"N={n}", (x, y), fontsize="x-small", textcoords="offset points", xytext=(3, 3))
    ax.set_xlabel("generated tokens per clip")
    ax.set_ylabel("JS divergence (lower is better)")
    ax.set_title("Test-time scaling: quality vs compute")
    ax.legend(fontsize="small")
    save(fig, out_dir / "tts_compute.png", figures)


def draw_figures(cells: list[Cell], out_dir: Path, tts_apart: frozenset[CellKey] = frozenset()) -> Figures:
    """All figures of the report into ``out_dir``; tts_compute.png leaves out the cells in ``tts_apart``
    (the test-time-scaling benchmark's, drawn per model: ambig.report.tts_benchmark)."""
    figures = Figures()
    draw_fig2(cells, out_dir, figures)
    draw_tts([c for c in cells if c.key not in tts_apart], out_dir, figures)
    for group_cells in group_tables(cells).values():
        for cell in group_cells:
            same_strategy = [c.key for c in group_cells if c.key.strategy == cell.key.strategy]
            draw_cell_figures(cell, varying_fields(same_strategy), out_dir, figures)
    return figures

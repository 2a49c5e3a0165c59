"""The test-time-scaling benchmark (`experiment=tts_benchmark`) in a report: tables, figures, trajectories.

Its runs are the report's `ambig.evaluate` cells (`<trained>+<tts>-n<N>`) whose metrics.json names the
experiment. Per dataset, a table with a row per model and a column per strategy: the JS at the N with the
lowest JS (ties: fewer generated tokens, then the smaller N) and the generated tokens per clip that run
took, both averaged over the cell's folds. Per model, `tts_compute_<model>.png`: JS against generated tokens
per clip, a panel per dataset, a line per strategy through its N. Per model and dataset, the share of test
trajectories that wrote `Answer:` and the share the budget cut (metrics.json's `answered_share` and
`truncated_share`, weighted by each run's `trajectories`, over every strategy and N).

The tables' rows, columns and datasets are every model, strategy and dataset that the benchmark's runs and
its failed or unfinished jobs name; a table cell without a finished run is shown as missing (`–`) and listed
with the jobs that failed there, and a benchmark strategy that no run or job names is listed too.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ambig.report.aggregate import Aggregate, Cell
from ambig.report.collect import JOB_CONFIG_FILE, METRICS_FILE, FailedRun
from ambig.report.figures import Figures, new_figure, save
from ambig.tts.strategies import BENCHMARK_NAMES, SAMPLED

EXPERIMENT = "tts_benchmark"
STRATEGIES = ("cot_greedy", *SAMPLED)  # the benchmark's, in the tables' column order
MISSING = "–"


@dataclass(frozen=True)
class Point:
    """One benchmark cell: a model (as trained) x dataset x strategy x N, averaged over its folds."""

    data: str
    model: str  # the row: the model, with the strategy that trained it when not `base`
    strategy: str
    n: int
    js: float
    tokens: float  # generated tokens per clip
    forwards: float  # forward passes per clip
    folds: tuple[int, ...]
    expected_folds: tuple[int, ...]
    trajectories: int  # test trajectories, summed over folds
    answered: float | None  # of them, how many wrote `Answer:` (None: the runs did not count)
    truncated: float | None  # of them, how many the budget cut
    runs: tuple[Path, ...]

    @property
    def complete(self) -> bool:
        return set(self.expected_folds) <= set(self.folds)


@dataclass(frozen=True)
class FailedSlot:
    """A failed or unfinished benchmark job: its table cell and N, as far as its Hydra config tells."""

    data: str
    model: str
    strategy: str
    n: int | None
    path: Path


@dataclass(frozen=True)
class Shares:
    """Test trajectories of one model on one dataset, over all its benchmark runs."""

    trajectories: int
    answered_share: float | None
    truncated_share: float | None


@dataclass
class Benchmark:
    """The benchmark's runs in a report: the cells (points), failed jobs, and the grid they span."""

    points: list[Point]
    failed: list[FailedSlot] = field(default_factory=list)

    def _names(self, attr: str) -> list[str]:
        return sorted({getattr(p, attr) for p in [*self.points, *self.failed]})

    @property
    def datasets(self) -> list[str]:
        return self._names("data")

    @property
    def models(self) -> list[str]:
        return self._names("model")

    @property
    def strategies(self) -> list[str]:
        """The strategies the runs and jobs name: the benchmark's in its order, any other after them."""
        seen = set(self._names("strategy"))
        return [s for s in STRATEGIES if s in seen] + sorted(seen - set(STRATEGIES))

    @property
    def unnamed_strategies(self) -> list[str]:
        """Benchmark strategies no run or job of this report names."""
        seen = set(self._names("strategy"))
        return [s for s in STRATEGIES if s not in seen]

    def curve(self, data: str, model: str, strategy: str) -> list[Point]:
        """The points of one table cell, by N."""
        found = [p for p in self.points if (p.data, p.model, p.strategy) == (data, model, strategy)]
        return sorted(found, key=lambda p: p.n)

    def best(self, data: str, model: str, strategy: str) -> Point | None:
        """The point with the lowest JS (ties: fewer tokens, then smaller N); None when none finished."""
        finite = [p for p in self.curve(data, model, strategy) if math.isfinite(p.js)]
        return min(finite, key=lambda p: (p.js, p.tokens, p.n), default=None)

    def failed_at(self, data: str, model: str, strategy: str) -> list[FailedSlot]:
        return [f for f in self.failed if (f.data, f.model, f.strategy) == (data, model, strategy)]

    def missing(self) -> list[tuple[str, str, str]]:
        """Table cells (dataset, model, strategy) with no finished run."""
        return [
            (d, m, s)
            for d in self.datasets
            for m in self.models
            for s in self.strategies
            if self.best(d, m, s) is None
        ]

    def shares(self, data: str, model: str) -> Shares | None:
        """Trajectory shares of a model on a dataset, weighted by trajectories; None without runs."""
        points = [p for p in self.points if (p.data, p.model) == (data, model)]
        if not points:
            return None
        n = sum(p.trajectories for p in points)
        counted = [p for p in points if p.answered is not None and p.trajectories]
        total = sum(p.trajectories for p in counted)

        def share(attr: str) -> float | None:
            if not total:
                return None
            return sum(getattr(p, attr) for p in counted) / total

        return Shares(trajectories=n, answered_share=share("answered"), truncated_share=share("truncated"))


def row_label(model: str, trained: str | None) -> str:
    """The table row: the model as released (`base`), or `<model> (<strategy that trained it>)`."""
    return model if trained in (None, "base") else f"{model} ({trained})"


def read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def point_of(cell: Cell) -> Point | None:
    """The cell as a benchmark point, or None when its runs are not the benchmark's."""
    docs = [read_json(run.path / METRICS_FILE) for run in cell.runs]
    if not docs or any(d is None for d in docs):
        return None
    first = docs[0]
    if first.get("experiment_name") != EXPERIMENT or not first.get("tts") or "compute" not in first:
        return None
    trajectories = [int(d.get("trajectories") or 0) for d in docs]

    def counted(key: str) -> float | None:
        if any(d.get(key) is None for d, t in zip(docs, trajectories, strict=True) if t):
            return None
        return sum(float(d[key]) * t for d, t in zip(docs, trajectories, strict=True) if t)

    trained = first.get("initialised_from_strategy") or first.get("strategy")
    return Point(
        data=cell.key.data_label,
        model=row_label(cell.key.model, trained),
        strategy=str(first["tts"]["name"]),
        n=int(first["tts"]["n"]),
        js=cell.stats["js"].mean,
        tokens=float(np.mean([d["compute"]["generated_tokens_per_clip"] for d in docs])),
        forwards=float(np.mean([d["compute"]["forward_passes_per_clip"] for d in docs])),
        folds=cell.folds,
        expected_folds=cell.expected_folds,
        trajectories=sum(trajectories),
        answered=counted("answered_share"),
        truncated=counted("truncated_share"),
        runs=tuple(run.path for run in cell.runs),
    )


def trained_by(checkpoint: object) -> str | None:
    """The strategy that trained an `ambig.evaluate` job's `checkpoint` (None: the model as released)."""
    if not checkpoint:
        return None
    from ambig.checkpoints import RUN_PREFIX, run_strategy  # (imports Lightning: only for such a job)

    text = str(checkpoint)
    if text.startswith(RUN_PREFIX):
        return text[len(RUN_PREFIX) :]
    return run_strategy(text) or "trained"


def failed_slot(job: FailedRun) -> FailedSlot | None:
    """A failed or unfinished job of the benchmark as its table cell, from its saved Hydra config."""
    try:
        config = yaml.safe_load((job.path / JOB_CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None
    if not isinstance(config, dict) or config.get("experiment_name") != EXPERIMENT:
        return None
    tts, dataset, model = (config.get(k) for k in ("tts", "dataset", "model"))
    if not all(isinstance(x, dict) and x.get("name") for x in (tts, dataset, model)):
        return None
    test = config.get("test_dataset")
    data = dataset["name"]
    if isinstance(test, dict) and test.get("name") not in (None, data):
        data = f"{data} → {test['name']}"
    n = tts.get("n")
    return FailedSlot(
        data=str(data),
        model=row_label(str(model["name"]), trained_by(config.get("checkpoint"))),
        strategy=str(tts["name"]),
        n=n if isinstance(n, int) and not isinstance(n, bool) else None,
        path=job.path,
    )


def collect_benchmark(agg: Aggregate) -> Benchmark:
    """The benchmark's points and failed jobs among a report's cells (empty when it has none)."""
    points = [p for p in map(point_of, agg.cells) if p is not None]
    failed = [f for f in map(failed_slot, agg.failed) if f is not None]
    return Benchmark(points=points, failed=failed)


def benchmark_cells(agg: Aggregate, bench: Benchmark) -> set:
    """The CellKeys of the report's cells that are the benchmark's (so other figures can leave them out)."""
    paths = {path for p in bench.points for path in p.runs}
    return {cell.key for cell in agg.cells if any(run.path in paths for run in cell.runs)}


# --- Markdown ---------------------------------------------------------------------------------------------


def format_point(point: Point | None) -> str:
    """`0.412 (N=8, 310 tok)`; `(2/5 folds)` appended when folds are missing; `–` for no run."""
    if point is None:
        return MISSING
    text = f"{point.js:.3f} (N={point.n}, {point.tokens:.0f} tok)"
    if not point.complete:
        text += f" ({len(point.folds)}/{len(point.expected_folds)} folds)"
    return text


def strategy_title(strategy: str) -> str:
    """A column title: the `tts=` name, with the benchmark's own name where it has one."""
    name = BENCHMARK_NAMES.get(strategy)
    return f"{strategy} ({name})" if name else strategy


def format_share(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def dataset_table(bench: Benchmark, data: str) -> str:
    head = ["Model", *map(strategy_title, bench.strategies)]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for model in bench.models:
        cells = [format_point(bench.best(data, model, s)) for s in bench.strategies]
        lines.append("| " + " | ".join([model.replace("|", r"\|"), *cells]) + " |")
    return "\n".join(lines)


def shares_table(bench: Benchmark) -> str:
    head = ["Model", "Dataset", "Trajectories", "Reached `Answer:`", "Cut by the budget"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for model in bench.models:
        for data in bench.datasets:
            shares = bench.shares(data, model)
            if shares is None:
                row = [model, data, "0", MISSING, MISSING]
            else:
                answered, cut = map(format_share, (shares.answered_share, shares.truncated_share))
                row = [model, data, str(shares.trajectories), answered, cut]
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def missing_lines(bench: Benchmark) -> list[str]:
    lines = []
    for data, model, strategy in bench.missing():
        jobs = bench.failed_at(data, model, strategy)
        text = f"- {data} / {model} / {strategy}: no finished run"
        if jobs:
            text += "; failed or unfinished: " + ", ".join(
                f"`{j.path}`" + ("" if j.n is None else f" (N={j.n})") for j in jobs
            )
        lines.append(text)
    if bench.unnamed_strategies:
        unnamed = ", ".join(bench.unnamed_strategies)
        lines.append(f"- not run at all (no run or job in this report): {unnamed}")
    return lines


def render_benchmark(bench: Benchmark, figures: list[Path]) -> str:
    """The report's section on the benchmark: a table per dataset, the trajectory shares, what is missing."""
    names = [f.name for f in figures if f.name.startswith("tts_compute_")]
    intro = (
        "## Test-time-scaling benchmark\n\n"
        f"{len(bench.points)} cell(s) of `experiment={EXPERIMENT}`. Each table cell: test JS (lower is "
        "better) at the N with the lowest JS, with the generated tokens per clip that run took (means over "
        f"folds); {MISSING}: no finished run. Quality against compute: "
        + (", ".join(names) if names else "no figure")
        + "."
    )
    tables = [f"### {data}\n\n{dataset_table(bench, data)}" for data in bench.datasets]
    shares = (
        "### Trajectories: reached `Answer:`, cut by the budget\n\n"
        "Shares of the test trajectories of every strategy and N (weighted by trajectories); the others were "
        "read by the fallback after appending `Answer:`.\n\n" + shares_table(bench)
    )
    missing = missing_lines(bench)
    gaps = "### Missing cells\n\n" + ("\n".join(missing) if missing else "None.")
    return "\n\n".join([intro, *tables, shares, gaps])


# --- summary.json -----------------------------------------------------------------------------------------


def point_record(point: Point) -> dict:
    return {
        "n": point.n,
        "js": point.js,
        "generated_tokens_per_clip": point.tokens,
        "forward_passes_per_clip": point.forwards,
        "folds": list(point.folds),
        "expected_folds": list(point.expected_folds),
        "runs": [str(r) for r in point.runs],
    }


def benchmark_record(bench: Benchmark) -> dict:
    """summary.json's `tts_benchmark`: per dataset, model and strategy the best point (null: missing) and
    every N's; per model and dataset the trajectory shares; the missing cells."""
    tables = {
        data: {
            model: {
                s: {
                    "best": None if (b := bench.best(data, model, s)) is None else point_record(b),
                    "points": [point_record(p) for p in bench.curve(data, model, s)],
                }
                for s in bench.strategies
            }
            for model in bench.models
        }
        for data in bench.datasets
    }
    shares = []
    for model in bench.models:
        for data in bench.datasets:
            found = bench.shares(data, model)
            counts = asdict(found) if found else {"trajectories": 0}
            shares.append({"model": model, "dataset": data, **counts})
    return {
        "datasets": bench.datasets,
        "models": bench.models,
        "strategies": bench.strategies,
        "tables": tables,
        "trajectories": shares,
        "missing": [{"dataset": d, "model": m, "strategy": s} for d, m, s in bench.missing()],
        "not_run": bench.unnamed_strategies,
    }


# --- figures ----------------------------------------------------------------------------------------------


def figure_name(model: str) -> str:
    """`tts_compute_<model>.png`, only filename-safe characters."""
    return "tts_compute_" + re.sub(r"[^A-Za-z0-9_.-]+", "_", model).strip("_") + ".png"


def draw_benchmark(bench: Benchmark, out_dir: Path, figures: Figures) -> None:
    """Per model, tts_compute_<model>.png: JS against generated tokens per clip (log scale), a panel per
    dataset, a line per strategy through its N (annotated)."""
    for model in bench.models:
        datasets = [d for d in bench.datasets if any(bench.curve(d, model, s) for s in bench.strategies)]
        if not datasets:
            figures.notes.append(f"{figure_name(model)} skipped: no finished benchmark run of {model}")
            continue
        fig = new_figure(1.0 + 4.6 * len(datasets), 4.2)
        axes = fig.subplots(1, len(datasets), squeeze=False)
        for ax, data in zip(axes.flat, datasets, strict=True):
            for strategy in bench.strategies:
                points = sorted(bench.curve(data, model, strategy), key=lambda p: (p.tokens, p.n))
                if not points:
                    continue
                xs, ys = [p.tokens for p in points], [p.js for p in points]
                ax.plot(xs, ys, marker="o", label=strategy)
                for p in points:
                    at = (p.tokens, p.js)
                    ax.annotate(f"N={p.n}", at, fontsize="x-small", textcoords="offset points", xytext=(3, 3))
            if all(p.tokens > 0 for s in bench.strategies for p in bench.curve(data, model, s)):
                ax.set_xscale("log", base=2)  # N doubles from point to point
            ax.set(title=data, xlabel="generated tokens per clip", ylabel="JS divergence (lower is better)")
            ax.legend(fontsize="x-small")
        fig.suptitle(f"Test-time scaling, {model}: quality vs compute")
        save(fig, out_dir / figure_name(model), figures)

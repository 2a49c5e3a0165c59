"""Find run directories under some paths and read them: finished runs, and failed or unfinished jobs.

A finished run is a directory holding ``metrics.json`` (written by :func:`ambig.results.write_results`).
A Hydra job directory (``.hydra/overrides.yaml``) without ``metrics.json`` is a failed or unfinished job;
so is a run whose ``metrics.json`` cannot be read or lacks a key the report needs.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ambig.results import COLUMNS

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.jsonl"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
JOB_CONFIG_FILE = Path(".hydra") / "config.yaml"
IDENTITY_KEYS = ("dataset", "strategy", "model", "loss", "cot", "fold")


@dataclass(frozen=True, order=True)
class CellKey:
    """What a table row stands for: one training set-up, averaged over its folds."""

    dataset: str
    test_dataset: str
    strategy: str
    model: str
    loss: str
    cot: str

    @property
    def group(self) -> tuple[str, str]:
        """The (dataset, test_dataset) pair whose table holds this cell."""
        return (self.dataset, self.test_dataset)

    @property
    def data_label(self) -> str:
        """The dataset, or 'train → test' when the cell tests on another corpus."""
        if self.dataset == self.test_dataset:
            return self.dataset
        return f"{self.dataset} → {self.test_dataset}"

    def as_dict(self) -> dict[str, str]:
        """The key's fields by name (for JSON)."""
        return {
            "dataset": self.dataset,
            "test_dataset": self.test_dataset,
            "strategy": self.strategy,
            "model": self.model,
            "loss": self.loss,
            "cot": self.cot,
        }


@dataclass(frozen=True)
class Run:
    """A finished run: one fold of one cell."""

    path: Path
    cell: CellKey
    fold: int
    metrics: dict[str, float]
    classes: tuple[str, ...]
    mtime: float


@dataclass(frozen=True)
class FailedRun:
    """A job without usable results; ``cell`` and ``fold`` come from its Hydra config when readable."""

    path: Path
    reason: str
    overrides: tuple[str, ...]
    cell: CellKey | None = None
    fold: int | None = None


@dataclass(frozen=True)
class Prediction:
    """One test utterance of a run: the human distribution ``p`` and the predicted ``q``."""

    id: str
    p: tuple[float, ...]
    q: tuple[float, ...]
    fold: int


class InvalidRun(ValueError):
    """A metrics.json the report cannot use; the message says why."""


def find_run_dirs(paths: list[Path]) -> tuple[list[Path], list[Path]]:
    """Directories under ``paths`` with a metrics.json, and job directories without one; both sorted."""
    finished: set[Path] = set()
    jobs: set[Path] = set()
    for root in paths:
        for here, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d != ".hydra")
            here_path = Path(here)
            if METRICS_FILE in files:
                finished.add(here_path)
            elif (here_path / OVERRIDES_FILE).is_file():
                jobs.add(here_path)
    return sorted(finished), sorted(jobs)


def read_overrides(job_dir: Path) -> tuple[str, ...]:
    """The command-line overrides of a Hydra job (empty when the file is missing or unreadable)."""
    try:
        data = yaml.safe_load((job_dir / OVERRIDES_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return ()
    if not isinstance(data, list):
        return ()
    return tuple(str(item) for item in data)


def _name_of(config: dict, group: str) -> str | None:
    """``config[group].name`` of a resolved-free Hydra config, or None."""
    node = config.get(group)
    if isinstance(node, dict) and node.get("name") is not None:
        return str(node["name"])
    return None


def job_identity(job_dir: Path) -> tuple[CellKey | None, int | None]:
    """The cell and fold a job was started for, read from its saved Hydra config; (None, None) if unknown."""
    try:
        config = yaml.safe_load((job_dir / JOB_CONFIG_FILE).read_text())
    except (OSError, yaml.YAMLError):
        return None, None
    if not isinstance(config, dict):
        return None, None
    names = {group: _name_of(config, group) for group in ("dataset", "strategy", "model", "loss", "cot")}
    fold = config.get("fold")
    if any(v is None for v in names.values()) or not isinstance(fold, int) or isinstance(fold, bool):
        return None, None
    test_dataset = _name_of(config, "test_dataset") or names["dataset"]
    cell = CellKey(test_dataset=test_dataset, **names)
    return cell, fold


def failed_job(job_dir: Path, reason: str) -> FailedRun:
    """A :class:`FailedRun` for ``job_dir``, with its overrides and (when known) its cell and fold."""
    cell, fold = job_identity(job_dir)
    return FailedRun(path=job_dir, reason=reason, overrides=read_overrides(job_dir), cell=cell, fold=fold)


def _metric_value(data: dict, name: str) -> float:
    """A metric from metrics.json as a float; raises :class:`InvalidRun` when it is not a number."""
    value = data[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidRun(f"metric {name!r} is not a number: {value!r}")
    return float(value)


def parse_metrics(data: object) -> tuple[CellKey, int, dict[str, float], tuple[str, ...]]:
    """Cell, fold, metrics and class names of a loaded metrics.json; raises :class:`InvalidRun`."""
    if not isinstance(data, dict):
        raise InvalidRun("metrics.json does not hold a JSON object")
    missing = [k for k in (*COLUMNS, *IDENTITY_KEYS) if k not in data]
    if missing:
        raise InvalidRun(f"metrics.json lacks required key(s): {', '.join(missing)}")
    fold = data["fold"]
    if isinstance(fold, bool) or not isinstance(fold, int):
        raise InvalidRun(f"fold is not an integer: {fold!r}")
    metrics = {name: _metric_value(data, name) for name in COLUMNS}
    dataset = str(data["dataset"])
    test_dataset = data.get("test_dataset") or dataset
    cell = CellKey(
        dataset=dataset,
        test_dataset=str(test_dataset),
        strategy=strategy_label(data),
        model=str(data["model"]),
        loss=str(data["loss"]),
        cot=str(data["cot"]),
    )
    classes = tuple(str(c) for c in data.get("classes") or ())
    return cell, fold, metrics, classes


def strategy_label(data: dict) -> str:
    """The strategy, with the test-time scaling strategy and N of an `ambig.evaluate` run: `base+vote-n4`, or
    `sft+vote-n4` when it evaluated the weights of an SFT run (checkpoint=...)."""
    tts = data.get("tts")
    if not tts:
        return str(data["strategy"])
    trained = data.get("initialised_from_strategy") or data["strategy"]
    return f"{trained}+{tts['name']}-n{tts['n']}"


def read_run(run_dir: Path) -> Run | FailedRun:
    """Read one directory holding metrics.json: a :class:`Run`, or a :class:`FailedRun` saying why not."""
    path = run_dir / METRICS_FILE
    try:
        mtime = path.stat().st_mtime
        data = json.loads(path.read_text())
        cell, fold, metrics, classes = parse_metrics(data)
    except (OSError, UnicodeDecodeError) as err:
        return failed_job(run_dir, f"metrics.json unreadable: {err}")
    except json.JSONDecodeError as err:
        return failed_job(run_dir, f"metrics.json is not valid JSON: {err}")
    except InvalidRun as err:
        return failed_job(run_dir, str(err))
    return Run(path=run_dir, cell=cell, fold=fold, metrics=metrics, classes=classes, mtime=mtime)


def collect(paths: list[Path]) -> tuple[list[Run], list[FailedRun]]:
    """All finished runs and all failed or unfinished jobs under ``paths``."""
    finished, jobs = find_run_dirs(paths)
    runs: list[Run] = []
    failed: list[FailedRun] = []
    for run_dir in finished:
        item = read_run(run_dir)
        (runs if isinstance(item, Run) else failed).append(item)
    failed.extend(failed_job(job_dir, "no metrics.json (failed or unfinished)") for job_dir in jobs)
    failed.sort(key=lambda f: str(f.path))
    return runs, failed


def _distribution(value: object, n_classes: int) -> tuple[float, ...]:
    """A list of ``n_classes`` finite numbers as floats; raises ValueError otherwise."""
    if not isinstance(value, list) or len(value) != n_classes:
        raise ValueError(f"expected a list of {n_classes} probabilities, got {value!r}")
    out = tuple(float(x) for x in value)
    if not all(math.isfinite(x) for x in out):
        raise ValueError(f"non-finite probability in {value!r}")
    return out


def load_predictions(run: Run) -> list[Prediction]:
    """The run's predictions.jsonl; raises OSError or ValueError (with the line number) when unusable."""
    predictions = []
    n_classes = len(run.classes)
    with open(run.path / PREDICTIONS_FILE) as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                p = _distribution(row["p"], n_classes)
                q = _distribution(row["q"], n_classes)
                predictions.append(Prediction(id=str(row["id"]), p=p, q=q, fold=run.fold))
            except (ValueError, KeyError, TypeError) as err:
                raise ValueError(f"{run.path / PREDICTIONS_FILE}:{line_no}: {err}") from err
    return predictions

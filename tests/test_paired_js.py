"""scripts/paired_js.py: the per-clip comparison of two runs' test JS, on hand-made runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("paired_js", ROOT / "scripts" / "paired_js.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def js_by_hand(p, q) -> float:
    """JS in bits from its definition (not scipy's)."""
    p, q = np.asarray(p, float), np.asarray(q, float)
    m = (p + q) / 2

    def kl(a, b):
        keep = a > 0
        return float(np.sum(a[keep] * np.log2(a[keep] / b[keep])))

    return (kl(p, m) + kl(q, m)) / 2


def write_run(path: Path, rows: list[tuple[str, list[float], list[float]]], js: float | None = None) -> Path:
    path.mkdir(parents=True)
    lines = [json.dumps({"id": i, "p": p, "q": q, "cot": None}) for i, p, q in rows]
    (path / "predictions.jsonl").write_text("\n".join(lines) + "\n")
    mean = np.mean([js_by_hand(p, q) for _, p, q in rows]) if js is None else js
    (path / "metrics.json").write_text(json.dumps({"js": float(mean)}))
    return path


P = [[0.7, 0.3, 0.0], [0.2, 0.2, 0.6], [1.0, 0.0, 0.0], [0.1, 0.8, 0.1]]
GOOD = [[0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.9, 0.05, 0.05], [0.2, 0.7, 0.1]]
BAD = [[0.1, 0.1, 0.8], [0.8, 0.1, 0.1], [0.2, 0.4, 0.4], [0.6, 0.2, 0.2]]


def test_a_better_run_is_lower_on_every_clip_and_the_means_are_the_definitions(tmp_path):
    script = load_script()
    ids = [f"c{i}" for i in range(4)]
    good = write_run(tmp_path / "good", list(zip(ids, P, GOOD, strict=True)))
    backwards = zip(reversed(ids), reversed(P), reversed(BAD), strict=True)  # another order of the clips
    bad = write_run(tmp_path / "bad", list(backwards))
    r = script.compare(good, bad)
    by_hand = [js_by_hand(p, g) - js_by_hand(p, b) for p, g, b in zip(P, GOOD, BAD, strict=True)]
    assert r["n"] == 4 and r["a_lower"] == 4
    assert r["diff"] == pytest.approx(np.mean(by_hand), abs=1e-12)
    assert r["low"] <= r["diff"] <= r["high"] < 0
    assert min(by_hand) <= r["low"] and r["high"] <= max(by_hand)
    assert r["wilcoxon_p"] == pytest.approx(0.125)  # exact two-sided signed-rank p for 4 of 4 negative


def test_identical_runs_differ_by_nothing(tmp_path):
    script = load_script()
    rows = list(zip(["a", "b", "c", "d"], P, GOOD, strict=True))
    r = script.compare(write_run(tmp_path / "a", rows), write_run(tmp_path / "b", rows))
    assert (r["diff"], r["low"], r["high"], r["wilcoxon_p"], r["a_lower"]) == (0.0, 0.0, 0.0, 1.0, 0)


def test_predictions_that_are_not_the_metrics_runs_stop_it(tmp_path):
    script = load_script()
    rows = list(zip(["a", "b", "c", "d"], P, GOOD, strict=True))
    wrong = write_run(tmp_path / "wrong", rows, js=0.5)
    with pytest.raises(SystemExit, match="is not the JS of metrics.json"):
        script.compare(wrong, write_run(tmp_path / "ok", rows))
    other = write_run(tmp_path / "other", list(zip(["a", "b", "c", "e"], P, GOOD, strict=True)))
    with pytest.raises(SystemExit, match="different clips"):
        script.compare(write_run(tmp_path / "ok2", rows), other)

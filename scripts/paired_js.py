"""Is one run's test JS lower than another's by more than the clips' noise? A paired comparison per clip.

    .venv/bin/python scripts/paired_js.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

For each pair of run directories (each with `predictions.jsonl` and `metrics.json`, e.g. two rows of a
`make mini-paper` study, tested on the same clips), prints the mean test JS of each, the mean of the per-clip
differences JS(A) - JS(B) with a 95% paired bootstrap interval (10,000 resamples of the clips, seed 0), the
Wilcoxon signed-rank p-value (scipy) and how many clips A scored lower. JS per clip is scipy's
`jensenshannon(p, q, base=2) ** 2`; its mean must equal the run's own `metrics.json` JS (else the script
stops: the predictions are not the ones the metric was computed on). A report over one fold has no spread
over folds; this is the noise of its test clips.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from scipy.spatial.distance import jensenshannon
from scipy.stats import wilcoxon

RESAMPLES = 10_000


def clip_js(run: Path) -> dict[str, float]:
    """Per clip id, JS(p, q) of the run's test predictions, checked against the run's metrics.json."""
    rows = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines() if line]
    js = {r["id"]: float(jensenshannon(r["p"], r["q"], base=2) ** 2) for r in rows}
    if len(js) != len(rows):
        raise SystemExit(f"{run}: predictions.jsonl repeats a clip id")
    reported = json.loads((run / "metrics.json").read_text())["js"]
    if abs(np.mean(list(js.values())) - reported) > 1e-5:
        raise SystemExit(
            f"{run}: the mean JS of predictions.jsonl ({np.mean(list(js.values())):.6f}) is not the JS of "
            f"metrics.json ({reported:.6f})"
        )
    return js


def compare(run_a: Path, run_b: Path) -> dict[str, float]:
    a, b = clip_js(run_a), clip_js(run_b)
    if set(a) != set(b):
        raise SystemExit(f"{run_a} and {run_b} were tested on different clips ({len(a)} and {len(b)} ids)")
    ids = sorted(a)
    diff = np.array([a[i] - b[i] for i in ids])
    rng = np.random.default_rng(0)
    means = diff[rng.integers(0, len(diff), size=(RESAMPLES, len(diff)))].mean(1)
    low, high = np.quantile(means, [0.025, 0.975])
    p = float(wilcoxon(diff).pvalue) if np.any(diff != 0) else 1.0
    return {
        "n": len(ids),
        "js_a": float(np.mean([a[i] for i in ids])),
        "js_b": float(np.mean([b[i] for i in ids])),
        "diff": float(diff.mean()),
        "low": float(low),
        "high": float(high),
        "wilcoxon_p": p,
        "a_lower": int((diff < 0).sum()),
    }


def main(argv: list[str]) -> None:
    if not argv or len(argv) % 2:
        raise SystemExit(__doc__)
    for run_a, run_b in zip(argv[::2], argv[1::2], strict=True):
        r = compare(Path(run_a), Path(run_b))
        print(
            f"{run_a} vs {run_b}: JS {r['js_a']:.4f} vs {r['js_b']:.4f}; A - B = {r['diff']:+.4f} "
            f"[{r['low']:+.4f}, {r['high']:+.4f}] (95% paired bootstrap, {r['n']} clips); "
            f"Wilcoxon p = {r['wilcoxon_p']:.3g}; A lower on {r['a_lower']} of {r['n']}"
        )


if __name__ == "__main__":
    main(sys.argv[1:])

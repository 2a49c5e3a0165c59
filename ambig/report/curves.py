"""`python -m ambig.report.curves <run dir> [--against <run dir>]`: what a training run did, in numbers.

A test JS can look fine while the policy does something else, so this prints, from the run's
`logs/metrics.csv` (logger=csv), the shares that reveal it: per logged training quantity (rewards, the share
of rollouts that wrote "Answer:", the share the budget cut, DPO's margin and implicit rewards, KL) the mean
over the first third of the steps and over the last third, and the run's test metrics (with `--against`:
beside another run's, e.g. the SFT run it started from, as a ratio).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

# The training quantities worth watching, in the order printed (those the run logged).
WATCHED = (
    "train/reward/mean",
    "train/reward/distribution_mean",
    "train/reward/format_mean",
    "train/rollouts/answered",
    "train/rollouts/truncated",
    "train/rollouts/well_formed",
    "train/rollouts/tokens",
    "train/rewards/margin",
    "train/rewards/chosen",
    "train/rewards/rejected",
    "train/rewards/accuracy",
    "train/negatives/share",
    "train/kl",
    "train/clip_fraction",
    "train/loss",
)
TEST_KEYS = ("js", "bc", "r2", "brier", "answered_share", "truncated_share")


def series(csv_path: Path) -> dict[str, list[tuple[int, float]]]:
    """{key: [(step, value), ...]} of every training value the CSV logger wrote."""
    out: dict[str, list[tuple[int, float]]] = {}
    with open(csv_path, newline="") as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key.startswith("train/") and value not in ("", None):
                    out.setdefault(key, []).append((int(row["step"]), float(value)))
    return out


def thirds(points: list[tuple[int, float]]) -> tuple[float, float, int]:
    """Mean of the first and of the last third of the logged steps (at least one step each), and the count."""
    values = [v for _, v in sorted(points)]
    k = max(1, len(values) // 3)
    return sum(values[:k]) / k, sum(values[-k:]) / k, len(values)


def summary(run_dir: Path, curves_needed: bool = True) -> dict:
    run_dir = Path(run_dir)
    csv_path = run_dir / "logs" / "metrics.csv"
    if curves_needed and not csv_path.is_file():
        raise FileNotFoundError(f"{csv_path} is missing: the run needs logger=csv (the default)")
    logged = series(csv_path) if csv_path.is_file() else {}
    metrics_file = run_dir / "metrics.json"
    if not curves_needed and not metrics_file.is_file():
        raise FileNotFoundError(f"{metrics_file} is missing: give a finished run directory")
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
    curves = {}
    for key in WATCHED:
        if key in logged:
            first, last, n = thirds(logged[key])
            curves[key] = {"first_third": first, "last_third": last, "steps": n}
    return {"run": str(run_dir), "curves": curves, "test": {k: metrics.get(k) for k in TEST_KEYS}}


def format_summary(s: dict, against: dict | None = None) -> str:
    lines = [f"run: {s['run']}", f"  {'training':32s} {'first third':>12s} {'last third':>12s} {'steps':>6s}"]
    for key, c in s["curves"].items():
        lines.append(f"  {key:32s} {c['first_third']:12.4f} {c['last_third']:12.4f} {c['steps']:6d}")
    lines.append("  test " + "  ".join(f"{k} {_fmt(v)}" for k, v in s["test"].items()))
    if against is not None:
        js, ref = s["test"].get("js"), against["test"].get("js")
        ratio = js / ref if js is not None and ref else math.nan
        lines.append(f"  against {against['run']}: test JS {_fmt(js)} vs {_fmt(ref)} (x{ratio:.2f})")
    return "\n".join(lines)


def _fmt(value) -> str:
    return "-" if value is None else f"{value:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run", type=Path)
    parser.add_argument("--against", type=Path, default=None, help="another run to compare test JS with")
    args = parser.parse_args(argv)
    try:
        s = summary(args.run)
        other = summary(args.against, curves_needed=False) if args.against else None
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(s, other))
    return 0


if __name__ == "__main__":
    sys.exit(main())

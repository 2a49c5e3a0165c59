"""`make bench`: measured figures, printed and written to runs/bench/<timestamp>/bench.json.

    python -m ambig.bench [--fold 1] [--only train]

`train`: wall time of the default job (`python -m ambig.train`: SFT, tiny model, synthetic corpus, CPU) and
its test JS against the untrained base model's JS on the same fold (the foundation's target: at most half).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path


def timed_run(args: list[str], runs_dir: Path) -> tuple[float, dict]:
    """Wall time and metrics.json of one `python -m ambig.train` run."""
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ambig.train",
            f"paths.runs_dir={runs_dir}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ambig.train {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    (metrics_file,) = sorted(runs_dir.glob("**/metrics.json"), key=lambda p: p.stat().st_mtime)[-1:]
    return seconds, json.loads(metrics_file.read_text())


def bench_train(out: Path, fold: int) -> dict:
    base_s, base = timed_run(["strategy=base", f"fold={fold}"], out / "base")
    sft_s, sft = timed_run([f"fold={fold}"], out / "sft")
    return {
        "fold": fold,
        "base_js": base["js"],
        "sft_js": sft["js"],
        "sft_over_base_js": sft["js"] / base["js"],
        "sft_wall_s": sft_s,
        "base_wall_s": base_s,
        "sft": {k: sft[k] for k in ("js", "bc", "r2", "brier", "kl", "accuracy", "n")},
        "base": {k: base[k] for k in ("js", "bc", "r2", "brier", "kl", "accuracy", "n")},
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--only", choices=["train"], default=None)
    args = parser.parse_args()
    out = Path("runs/bench") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=False)
    results = {"train": bench_train(out, args.fold)}
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    t = results["train"]
    print(f"default job (make train), fold {t['fold']}: {t['sft_wall_s']:.0f} s wall")
    print(
        f"  test JS  base (untrained) {t['base_js']:.4f}   SFT {t['sft_js']:.4f}   "
        f"ratio {t['sft_over_base_js']:.2f} (target <= 0.50)"
    )
    for name in ("base", "sft"):
        m = t[name]
        print(
            f"  {name:5s} JS {m['js']:.4f}  BC {m['bc']:.4f}  R2 {m['r2']:.4f}  Brier {m['brier']:.4f}  "
            f"KL {m['kl']:.4f}  Acc {m['accuracy']:.4f}  n={m['n']}"
        )
    print(f"written: {out / 'bench.json'}")


if __name__ == "__main__":
    main()

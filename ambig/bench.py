"""`make bench`: measured figures, printed and written to runs/bench/<timestamp>/bench.json.

    python -m ambig.bench [--fold 1] [--only train]

`features`: log-mel feature extraction in clips/s over the synthetic corpus, cold (empty cache) and
cached, for the tiny model's 4 s window and Qwen2-Audio's 30 s window.

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


def bench_features(out: Path, n_clips: int = 300) -> dict:
    from transformers import WhisperFeatureExtractor

    from ambig.data.features import FeatureStore
    from ambig.data.synthetic import SyntheticSpec, load_synthetic

    records = load_synthetic(out / "data", SyntheticSpec(n_utterances=n_clips))
    results = {}
    for window in (4, 30):
        extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=window)
        rates = {}
        for label in ("cold", "cached"):
            store = FeatureStore(extractor, sample_rate=16000, max_seconds=30, cache_dir=out / "features")
            start = time.perf_counter()
            for record in records:
                store.get(record.audio_path)
            rates[label] = len(records) / (time.perf_counter() - start)
        results[f"{window}s"] = {**rates, "speedup": rates["cached"] / rates["cold"], "clips": len(records)}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument("--only", choices=["features", "train"], default=None)
    args = parser.parse_args()
    out = Path("runs/bench") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=False)
    results = {}
    if args.only in (None, "features"):
        results["features"] = bench_features(out)
        for window, r in results["features"].items():
            print(
                f"feature extraction, {window} window, {r['clips']} clips: cold {r['cold']:.0f} clips/s, "
                f"cached {r['cached']:.0f} clips/s ({r['speedup']:.1f}x)"
            )
    if args.only in (None, "train"):
        results["train"] = bench_train(out, args.fold)
        print_train(results["train"])
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out / 'bench.json'}")


def print_train(t: dict) -> None:
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


if __name__ == "__main__":
    main()

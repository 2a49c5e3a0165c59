"""`python -m ambig.mini_paper [override ...]` (`make mini-paper`): the paper's comparison on model=mini.

1. `python -m ambig.train -m experiment=mini_paper <overrides>`: the rows base, SFT, SFT CE only, SFT without
   CoT, then DPO, GRPO and GRPOz from that SFT run (conf/experiment/mini_paper.yaml, conf/cell/mini_paper/).
2. `python -m ambig.evaluate -m experiment=mini_paper_tts checkpoint=run:sft <overrides>`: self-consistency
   and weighted best-of-N at N = 4 on the SFT run's weights.
3. `ambig.report` over both sweeps: the table, and for each of the paper's claims whether it held here.

The overrides go to both sweeps (e.g. `fold=2`, `scale=smoke`). Each stage's wall time is printed and written
with the report (`mini_paper.json` beside report.md); a failed stage stops the rest and says which.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from ambig.report.build import build_report

STAGES = (
    ("train", ["-m", "ambig.train", "-m", "experiment=mini_paper"]),
    ("tts", ["-m", "ambig.evaluate", "-m", "experiment=mini_paper_tts", "checkpoint=run:sft"]),
)


def runs_dir() -> Path:
    """Where the sweeps write (conf/train.yaml: paths.runs_dir)."""
    return Path(os.environ.get("AMBIG_RUNS_DIR", "runs"))


def _sweeps() -> set[Path]:
    return set((runs_dir() / "multirun").glob("*"))


def run_stage(name: str, args: list[str], overrides: list[str]) -> tuple[Path, float]:
    """One sweep as a child process; (its multirun directory, wall seconds). Raises on failure."""
    before = _sweeps()
    cmd = [sys.executable, *args, *overrides]
    print(f"[mini_paper] {name}: {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    code = subprocess.run(cmd).returncode
    wall = time.perf_counter() - start
    new = sorted(_sweeps() - before)
    if code != 0:
        raise RuntimeError(f"the {name} stage failed (exit {code}) after {wall:.0f} s: see its output above")
    if len(new) != 1:
        raise RuntimeError(f"the {name} stage wrote {len(new)} multirun directories under {runs_dir()}")
    print(f"[mini_paper] {name}: {new[0]} in {wall:.0f} s", flush=True)
    return new[0], wall


def main(argv: list[str] | None = None) -> int:
    overrides = list(sys.argv[1:] if argv is None else argv)
    started = datetime.now().isoformat(timespec="seconds")
    sweeps, walls = [], {}
    try:
        for name, args in STAGES:
            sweep, walls[name] = run_stage(name, args, overrides)
            sweeps.append(sweep)
    except RuntimeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    report = build_report(sweeps)
    record = {
        "command": "python -m ambig.mini_paper " + " ".join(overrides),
        "started": started,
        "sweeps": [str(s) for s in sweeps],
        "wall_seconds": {**walls, "total": sum(walls.values())},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    (report.out_dir / "mini_paper.json").write_text(json.dumps(record, indent=2) + "\n")
    print(report.markdown)
    print(f"[mini_paper] report: {report.out_dir} (wall: {record['wall_seconds']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

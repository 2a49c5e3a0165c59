"""`python -m ambig.mini_paper [study=<dir>] [override ...]` (`make mini-paper`): the paper's comparison on
model=mini, as one study that survives a crash or a closed session.

The rows are the sweeps of two experiments, expanded from their own `hydra.sweeper.params` (one source):
1. `experiment=mini_paper`: base, SFT, SFT CE only, SFT without CoT, then DPO, GRPO and GRPOz started from
   this study's SFT run (`init_from=<its directory>`; conf/experiment/mini_paper.yaml, conf/cell/mini_paper/);
2. `experiment=mini_paper_tts`: self-consistency and weighted best-of-N at N = 4 on that SFT run's weights.
3. `ambig.report` over exactly those runs: the table, and for each of the paper's claims whether it held here.

Every row runs in this process into `<study>/<row>/<timestamp>/` (its train.log beside its results). The
study directory (default `<runs_dir>/mini_paper/<the overrides>`, e.g. `runs/mini_paper/default`) keeps a
ledger (`ledger.json`): a rerun of the same command keeps each finished row whose composed config is
unchanged, resumes a row that was cut off (its `checkpoints/last.ckpt`, `resume=true`) and runs the rest; a
row whose config changed runs again into a new directory (the old one is kept). The overrides go to every
row (`fold=2`, `scale=smoke`, ...). Wall times per row and in all are written with the report
(`mini_paper.json`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import platform
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import DictConfig, OmegaConf

from ambig.cli import USER_ERRORS, one_line
from ambig.report.build import build_report

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
LEDGER = "ledger.json"


@dataclass(frozen=True)
class Row:
    """One row of the study: the config it composes from (`train` or `evaluate`) and its overrides."""

    name: str
    config_name: str
    overrides: tuple[str, ...]


def runs_dir() -> Path:
    """Where studies live by default (conf/train.yaml: paths.runs_dir)."""
    return Path(os.environ.get("AMBIG_RUNS_DIR", "runs"))


def sweep_overrides(config_name: str, experiment: str, overrides: list[str]) -> list[tuple[str, ...]]:
    """The experiment's `hydra.sweeper.params`, expanded into one override tuple per job (their product, in
    Hydra's order: the last parameter varies fastest)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            config_name, overrides=[f"experiment={experiment}", *overrides], return_hydra_config=True
        )
    params = OmegaConf.to_container(cfg.hydra.sweeper.params) or {}
    parser = OverridesParser.create()
    axes = []
    for key, value in params.items():
        (override,) = parser.parse_overrides([f"{key}={value}"])
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [str(value)]
        axes.append([f"{key}={v}" for v in values])
    return [tuple(job) for job in itertools.product(*axes)]


def rows(overrides: list[str]) -> tuple[list[Row], list[Row]]:
    """(training rows, test-time-scaling rows) of the study."""
    train = [
        Row(job[0].split("/", 1)[-1], "train", ("experiment=mini_paper", *job))
        for job in sweep_overrides("train", "mini_paper", overrides)
    ]
    tts = []
    for job in sweep_overrides("evaluate", "mini_paper_tts", overrides):
        values = dict(o.split("=", 1) for o in job)
        tts.append(
            Row(f"sft+{values['tts']}-n{values['tts.n']}", "evaluate", ("experiment=mini_paper_tts", *job))
        )
    return train, tts


def compose_row(row: Row, overrides: list[str], extra: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(row.config_name, overrides=[*row.overrides, *overrides, *extra])


def config_key(cfg: DictConfig) -> str:
    """What decides whether a finished row can be kept: the composed config (not `resume`)."""
    data = OmegaConf.to_container(cfg, resolve=True)
    data.pop("resume", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_study(overrides: list[str]) -> Path:
    slug = "_".join(overrides) or "default"
    slug = re.sub(r"[^A-Za-z0-9.,+_-]+", "-", slug)
    if len(slug) > 80:
        slug = hashlib.sha256(slug.encode()).hexdigest()[:12]
    return runs_dir() / "mini_paper" / slug


class Ledger:
    """`<study>/ledger.json`: per row, the config key it ran with, its directory, status and wall time;
    rewritten atomically after every change, so a kill at any moment leaves the last good state."""

    def __init__(self, study: Path, overrides: list[str]):
        self.path = study / LEDGER
        self.doc = json.loads(self.path.read_text()) if self.path.is_file() else {"rows": {}}
        self.doc["overrides"] = overrides

    def get(self, name: str) -> dict | None:
        return self.doc["rows"].get(name)

    def set(self, name: str, **entry) -> None:
        self.doc["rows"][name] = entry
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.doc, indent=2) + "\n")
        tmp.replace(self.path)


def finished(entry: dict | None, key: str) -> bool:
    return bool(
        entry
        and entry.get("status") == "finished"
        and entry.get("config") == key
        and (Path(entry["run"]) / "metrics.json").is_file()
    )


def resumable(entry: dict | None, key: str) -> bool:
    """A row started with this config and cut off after writing a checkpoint."""
    return bool(
        entry
        and entry.get("status") == "started"
        and entry.get("config") == key
        and (Path(entry["run"]) / "checkpoints" / "last.ckpt").is_file()
    )


def execute(row: Row, cfg: DictConfig, run_dir: Path) -> None:
    """Run one row in this process, its log also written to `<run_dir>/train.log`."""
    from ambig.evaluate import evaluate
    from ambig.train import run

    run_dir.mkdir(parents=True, exist_ok=False)
    handler = logging.FileHandler(run_dir / "train.log")
    handler.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(min(old_level, logging.INFO) if old_level else logging.INFO)
    try:
        (evaluate if row.config_name == "evaluate" else run)(cfg, run_dir)
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()


def study_start(row: Row, overrides: list[str], done: dict[str, Path]) -> list[str]:
    """A row whose config starts from `run:<row>` (the RL cells' `strategy.starts_from`) starts from that row
    of this study: its directory as `init_from`, not the newest such run anywhere under runs/."""
    init_from = compose_row(row, overrides, []).get("init_from")
    if not (isinstance(init_from, str) and init_from.startswith("run:")):
        return []
    source = init_from.removeprefix("run:")
    if source not in done:
        raise RuntimeError(
            f"row {row.name} starts from {init_from}, but this study has no earlier {source} row"
        )
    return [f"init_from={_quoted(done[source])}"]


def _new_run_dir(study: Path, row: Row) -> Path:
    run_dir = study / row.name.replace("+", "_") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if run_dir.exists():  # two starts within a second
        time.sleep(1.0)
        return _new_run_dir(study, row)
    return run_dir


def run_row(
    row: Row, overrides: list[str], extra: list[str], study: Path, ledger: Ledger
) -> tuple[Path, bool]:
    """(the row's run directory, whether it ran now). Raises on failure (the ledger says `started`). A resumed
    row's wall time counts from the resume."""
    cfg = compose_row(row, overrides, extra)
    key = config_key(cfg)
    entry = ledger.get(row.name)
    if finished(entry, key):
        print(
            f"[mini_paper] {row.name}: kept {entry['run']} ({entry['wall_s']:.0f} s, {entry['ended']})",
            flush=True,
        )
        return Path(entry["run"]), False
    resume = resumable(entry, key)
    if resume:
        cfg = compose_row(row, overrides, [*extra, "resume=true"])
    elif entry:
        print(
            f"[mini_paper] {row.name}: its config changed or it did not finish; running it again", flush=True
        )
    run_dir = _new_run_dir(study, row)
    how = f"resuming {entry['run']}" if resume else "running"
    print(f"[mini_paper] {row.name}: {how} into {run_dir}", flush=True)
    ledger.set(row.name, status="started", config=key, run=str(run_dir), started=_now())
    start = time.perf_counter()
    execute(row, cfg, run_dir)
    wall = time.perf_counter() - start
    ledger.set(
        row.name, status="finished", config=key, run=str(run_dir), wall_s=wall, ended=_now(), resumed=resume
    )
    print(f"[mini_paper] {row.name}: finished in {wall:.0f} s", flush=True)
    return run_dir, True


def _quoted(path: Path) -> str:
    """A path as a Hydra override value (quoted: a path may hold '=' or ',')."""
    return "'" + str(path).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _now() -> str:
    return datetime.now().isoformat(timespec="seconds")


def parse_args(argv: list[str]) -> tuple[Path | None, list[str]]:
    study, overrides = None, []
    for arg in argv:
        if arg.startswith("study="):
            study = Path(arg.split("=", 1)[1])
        else:
            overrides.append(arg)
    return study, overrides


def main(argv: list[str] | None = None) -> int:
    study, overrides = parse_args(list(sys.argv[1:] if argv is None else argv))
    study = study or default_study(overrides)
    study.mkdir(parents=True, exist_ok=True)
    started = _now()
    ledger = Ledger(study, overrides)
    print(f"[mini_paper] study {study} (ledger: {ledger.path})", flush=True)
    done: dict[str, Path] = {}
    ran: list[str] = []
    try:
        train_rows, tts_rows = rows(overrides)
        for row in train_rows:
            extra = study_start(row, overrides, done)
            done[row.name], now = run_row(row, overrides, extra, study, ledger)
            ran += [row.name] if now else []
        if tts_rows and "sft" not in done:
            raise RuntimeError(
                "the tts rows evaluate this study's sft row, and experiment=mini_paper has none"
            )
        for row in tts_rows:
            extra = [f"checkpoint={_quoted(done['sft'])}"]
            done[row.name], now = run_row(row, overrides, extra, study, ledger)
            ran += [row.name] if now else []
    except (*USER_ERRORS, RuntimeError) as err:
        print(
            f"error: {one_line(err)} (finished rows are kept: rerun the same command to go on)",
            file=sys.stderr,
        )
        return 1
    report = build_report(
        list(done.values()), out_dir=study / "report" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    )
    walls = {name: ledger.get(name)["wall_s"] for name in done}
    record = {
        "command": "python -m ambig.mini_paper " + " ".join(overrides),
        "study": str(study),
        "started": started,
        "rows": {name: str(path) for name, path in done.items()},
        "ran_now": ran,
        "wall_seconds": {**walls, "total": sum(walls.values())},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    }
    (report.out_dir / "mini_paper.json").write_text(json.dumps(record, indent=2) + "\n")
    print(report.markdown)
    total = record["wall_seconds"]["total"]
    print(f"[mini_paper] report: {report.out_dir} (the rows' wall time in all: {total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

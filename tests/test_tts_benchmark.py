"""The test-time-scaling benchmark (`python -m ambig.evaluate -m experiment=tts_benchmark`): the sweep it
composes (the releases; at scale=smoke their tiny twins), its report (per dataset models x strategies at the
best N with their compute, per model quality-vs-compute figures, trajectory shares), and the smoke sweep end
to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hydra import compose, initialize_config_dir

from ambig.tts.strategies import SAMPLED

ROOT = Path(__file__).resolve().parents[1]
TWINS = ("tiny", "tiny_omni", "tiny_audio_flamingo_3", "tiny_voxtral", "tiny_qwen3_omni", "tiny_gemma3n")


def compose_evaluate(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("evaluate", overrides=list(overrides), return_hydra_config=True)


def model_configs() -> dict[str, dict]:
    return {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "conf" / "model").glob("*.yaml"))}


def test_the_benchmark_sweeps_every_release_dataset_sampled_strategy_and_n():
    cfg = compose_evaluate("experiment=tts_benchmark")
    params = cfg.hydra.sweeper.params
    releases = {name for name, model in model_configs().items() if model.get("hub_id")}
    assert releases >= {"qwen2_audio_7b_instruct", "audio_reasoner", "qwen2_5_omni_7b", "audio_flamingo_3"}
    assert "qwen3_omni_30b_a3b_instruct" in releases
    assert set(params["model"].split(",")) == releases
    assert params["dataset"] == "iemocap,crema_d,msp_podcast"
    assert params["tts"].split(",") == list(SAMPLED)
    assert params["tts.n"] == "1,2,4,8,16"
    assert cfg.experiment_name == "tts_benchmark" and cfg.fold == 1 and cfg.strategy.name == "base"
    assert cfg.trainer.accelerator == "gpu" and not cfg.fixture_corpora
    # cot_greedy once per model and dataset: the swept tts and N replaced on the command line
    greedy = compose_evaluate("experiment=tts_benchmark", "tts=cot_greedy", "tts.n=1")
    assert greedy.tts.name == "cot_greedy" and greedy.tts.n == 1


def test_at_smoke_scale_the_benchmark_sweeps_one_tiny_twin_per_release_family():
    smoke = compose_evaluate("experiment=tts_benchmark", "scale=smoke")
    full = compose_evaluate("experiment=tts_benchmark")
    assert smoke.hydra.sweeper.params["model"] == ",".join(TWINS)
    configs = model_configs()
    releases = full.hydra.sweeper.params["model"].split(",")
    assert {configs[t]["family"] for t in TWINS} == {configs[r]["family"] for r in releases}
    for key in ("dataset", "tts", "tts.n"):
        assert smoke.hydra.sweeper.params[key] == full.hydra.sweeper.params[key]
    assert smoke.fixture_corpora and smoke.trainer.accelerator == "cpu" and smoke.model.name == "tiny"
    # smoke.yaml itself is untouched: another experiment at smoke scale composes exactly as before
    other = compose_evaluate("experiment=tts_sweep", "scale=smoke")
    assert "benchmark" not in other and "model" not in other.hydra.sweeper.params


# --- the report, on hand-made runs ------------------------------------------------------------------------

CLASSES = ["neutral", "happy", "sad", "angry"]
PREDICTIONS = [{"id": "u1", "p": [0.25, 0.25, 0.25, 0.25], "q": [0.1, 0.6, 0.2, 0.1], "cot": "x"}]


def job_config(model: str, dataset: str, tts: str, n: int, experiment: str, checkpoint: str | None) -> dict:
    """The parts of .hydra/config.yaml the report reads, as `ambig.evaluate` saves it."""
    names = {"dataset": dataset, "strategy": "base", "model": model, "loss": "ambiguity", "cot": "structured"}
    return {
        **{group: {"name": name} for group, name in names.items()},
        "tts": {"name": tts, "n": n},
        "fold": 1,
        "experiment_name": experiment,
        "checkpoint": checkpoint,
    }


def write_job(sweep: Path, num: int, model: str, dataset: str, tts: str, n: int, **kw) -> Path:
    """A job directory of the sweep as Hydra leaves it (`<num>-<dataset>-<model>-<tts>-n<N>-fold1/.hydra`)."""
    experiment, checkpoint = kw.get("experiment", "tts_benchmark"), kw.get("checkpoint")
    job = sweep / f"{num}-{dataset}-{model}-{tts}-n{n}-fold1"
    (job / ".hydra").mkdir(parents=True)
    overrides = [
        f"model={model}",
        f"dataset={dataset}",
        f"tts={tts}",
        f"tts.n={n}",
        f"experiment={experiment}",
    ]
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    config = job_config(model, dataset, tts, n, experiment, checkpoint)
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    return job


def write_tts_run(sweep: Path, num: int, model: str, dataset: str, tts: str, n: int, js: float, tokens: float,
                  trajectories: int, answered: float, truncated: float, **kw) -> Path:  # fmt: skip
    """A finished `ambig.evaluate` job: metrics.json (as ambig.train.run writes it) and predictions.jsonl."""
    job = write_job(sweep, num, model, dataset, tts, n, **kw)
    metrics = {"js": js, "bc": 0.5, "r2": 0.0, "brier": 0.1, "kl": 1.0, "accuracy": 0.5, "n": 4}
    metrics |= {"dataset": dataset, "test_dataset": dataset, "strategy": "base", "model": model}
    metrics |= {"loss": "ambiguity", "cot": "structured", "fold": 1, "seed": 0, "classes": CLASSES}
    metrics |= {"experiment_name": kw.get("experiment", "tts_benchmark")}
    metrics |= {"initialised_from_strategy": kw.get("trained"), "max_new_tokens": 272}
    metrics |= {"trajectories": trajectories, "answered_share": answered, "truncated_share": truncated}
    metrics["tts"] = {"name": tts, "n": n}
    metrics["compute"] = {"generated_tokens_per_clip": tokens, "forward_passes_per_clip": tokens + n}
    metrics["compute"]["test_wall_s"] = 1.0
    (job / "metrics.json").write_text(json.dumps(metrics))
    (job / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PREDICTIONS))
    return job


QWEN, OMNI = "qwen2_audio_7b_instruct", "qwen2_5_omni_7b"


def hand_made_benchmark(sweep: Path) -> dict[str, Path]:
    """Runs with known JS, compute and trajectory shares; returns the jobs a test looks for by name."""
    # (model, dataset, tts, N, JS, tokens per clip, trajectories, answered share, truncated share)
    runs = [
        (QWEN, "iemocap", "vote", 1, 0.40, 100.0, 40, 0.5, 0.25),
        (QWEN, "iemocap", "vote", 2, 0.35, 200.0, 80, 0.75, 0.25),  # best: ties N=4 on JS with fewer tokens
        (QWEN, "iemocap", "vote", 4, 0.35, 400.0, 160, 1.0, 0.0),
        (QWEN, "iemocap", "best_of_n", 1, 0.50, 90.0, 40, 0.5, 0.5),
        (QWEN, "iemocap", "best_of_n", 2, 0.45, 190.0, 80, 0.25, 0.75),
        (QWEN, "iemocap", "cot_greedy", 1, 0.42, 110.0, 40, 1.0, 0.0),
        (OMNI, "iemocap", "vote", 1, 0.30, 50.0, 40, 0.0, 1.0),
        (OMNI, "iemocap", "vote", 2, 0.31, 101.0, 80, 0.0, 1.0),
        (OMNI, "iemocap", "cot_greedy", 1, 0.60, 70.0, 40, 0.5, 0.5),
        (QWEN, "crema_d", "vote", 1, 0.20, 10.4, 10, 0.2, 0.8),
    ]
    for num, run in enumerate(runs):
        write_tts_run(sweep, num, *run)
    jobs = {"omni_best_of_n_failed": write_job(sweep, 20, OMNI, "iemocap", "best_of_n", 2)}
    # the weights of an SFT run (checkpoint=run:sft): a row of their own
    write_tts_run(sweep, 21, QWEN, "crema_d", "vote", 1, 0.15, 12.0, 10, 1.0, 0.0, trained="sft")
    # another experiment's tts run: in tts_compute.png and the main tables, not in the benchmark's
    write_tts_run(sweep, 22, "tiny", "iemocap", "vote", 2, 0.7, 6.0, 8, 0.0, 1.0, experiment="tts_sweep")
    return jobs


def table(markdown: str, title: str) -> dict[str, list[str]]:
    """A `### title` table of the benchmark section: header and rows by their first cell."""
    body = markdown.split(f"### {title}\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [
        [c.strip() for c in line.strip("|").split("|")] for line in body.splitlines() if line.startswith("|")
    ]
    return {row[0]: row[1:] for row in [rows[0], *rows[2:]]}


def test_report_of_hand_made_benchmark_runs_best_n_shares_and_figures(tmp_path):
    from ambig.report.build import build_report

    jobs = hand_made_benchmark(tmp_path / "sweep")
    report = build_report([tmp_path / "sweep"], tmp_path / "out")
    md = report.markdown
    section = md.split("## Test-time-scaling benchmark\n", 1)[1].split("\n## ", 1)[0]

    iemocap = table(section, "iemocap")
    assert iemocap["Model"] == ["cot_greedy (chain-of-thought prompting)", "vote", "best_of_n (Best-of-N)"]
    assert iemocap[QWEN] == ["0.420 (N=1, 110 tok)", "0.350 (N=2, 200 tok)", "0.450 (N=2, 190 tok)"]
    assert iemocap[OMNI] == ["0.600 (N=1, 70 tok)", "0.300 (N=1, 50 tok)", "–"]  # best_of_n: only failed
    assert iemocap[f"{QWEN} (sft)"] == ["–", "–", "–"]
    crema = table(section, "crema_d")
    assert crema[QWEN] == ["–", "0.200 (N=1, 10 tok)", "–"]
    assert crema[f"{QWEN} (sft)"] == ["–", "0.150 (N=1, 12 tok)", "–"]
    assert crema[OMNI] == ["–", "–", "–"]
    assert "tiny" not in iemocap  # tts_sweep's run is not the benchmark's

    # answered / cut: weighted by trajectories over every strategy and N (by hand: 320 / 440, 110 / 440)
    lines = section.split("### Trajectories", 1)[1].splitlines()
    assert f"| {QWEN} | iemocap | 440 | 0.73 | 0.25 |" in lines
    assert f"| {OMNI} | iemocap | 160 | 0.12 | 0.88 |" in lines  # (0 + 0 + 20) / 160, (40 + 80 + 20) / 160
    assert f"| {OMNI} | crema_d | 0 | – | – |" in lines

    missing = section.split("### Missing cells\n\n", 1)[1]
    assert f"- iemocap / {OMNI} / best_of_n: no finished run; failed or unfinished: " in missing
    assert f"`{jobs['omni_best_of_n_failed']}` (N=2)" in missing
    assert "not run at all (no run or job in this report): self_consistency, weighted_best_of_n" in missing

    summary = json.loads((report.out_dir / "summary.json").read_text())["tts_benchmark"]
    best = summary["tables"]["iemocap"][QWEN]["vote"]["best"]
    assert (best["n"], best["js"], best["generated_tokens_per_clip"]) == (2, 0.35, 200.0)
    assert [p["n"] for p in summary["tables"]["iemocap"][QWEN]["vote"]["points"]] == [1, 2, 4]
    assert summary["tables"]["iemocap"][OMNI]["best_of_n"]["best"] is None
    assert {"dataset": "iemocap", "model": OMNI, "strategy": "best_of_n"} in summary["missing"]
    shares = {(s["model"], s["dataset"]): s for s in summary["trajectories"]}
    assert abs(shares[(QWEN, "iemocap")]["answered_share"] - 320 / 440) < 1e-12

    for model in (QWEN, OMNI, f"{QWEN}_sft"):
        assert (report.out_dir / f"tts_compute_{model}.png").read_bytes()[:4] == b"\x89PNG"
        assert f"tts_compute_{model}.png" in summary_figures(report.out_dir)
    # tts_compute.png still draws the other tts runs, without the benchmark's
    assert (report.out_dir / "tts_compute.png").is_file()


def summary_figures(out_dir: Path) -> list[str]:
    return json.loads((out_dir / "summary.json").read_text())["figures"]


def test_a_report_without_benchmark_runs_has_no_benchmark_section(tmp_path):
    from ambig.report.build import build_report

    write_tts_run(
        tmp_path / "sweep", 0, "tiny", "iemocap", "vote", 2, 0.7, 6.0, 8, 0.0, 1.0, experiment="tts_sweep"
    )
    report = build_report([tmp_path / "sweep"], tmp_path / "out")
    assert "Test-time-scaling benchmark" not in report.markdown
    assert (report.out_dir / "tts_compute.png").is_file()
    assert not list(report.out_dir.glob("tts_compute_*.png"))


# --- the smoke sweep end to end ---------------------------------------------------------------------------

# Every trajectory is cut at 6 tokens: the sweep checks that each cell runs and is reported, not its value.
SMOKE = ["scale=smoke", "logger=none", "decoding.max_new_tokens=6", "decoding.refuse_short_budget=false"]
SMOKE += ["eval_batch_size=2"]  # one test batch (scale=smoke) of two clips per job
FILLED = re.compile(r"^\d\.\d{3} \(N=\d+, \d+ tok\)$")


def smoke_sweep(root: Path, sweep_dir: Path, *args: str) -> None:
    """`python -m ambig.evaluate -m experiment=tts_benchmark scale=smoke ...` into `sweep_dir`."""
    env = {**os.environ, "AMBIG_RUNS_DIR": str(root / "runs"), "AMBIG_CACHE_DIR": str(root / "cache")}
    cmd = [sys.executable, "-m", "ambig.evaluate", "-m", "experiment=tts_benchmark", *SMOKE, *args]
    cmd.append(f"hydra.sweep.dir={sweep_dir}")
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def benchmark_tables(markdown: str, datasets: list[str]) -> dict[str, dict[str, list[str]]]:
    section = markdown.split("## Test-time-scaling benchmark\n", 1)[1].split("\n## ", 1)[0]
    return {data: table(section, data) for data in datasets}


@pytest.mark.slow
def test_the_smoke_benchmark_runs_every_twin_and_the_report_fills_every_cell(tmp_path):
    """Every twin through `ambig.evaluate` on one corpus (IEMOCAP's fixture), the sampled sweep and
    cot_greedy: each cell of its table filled. (A table per dataset, and the other corpora, are checked on
    hand-made runs above and in tests/test_msp_podcast_runs.py; a second corpus here doubled the suite's
    slowest test.)"""
    from ambig.report.build import build_report

    sweep = tmp_path / "tts_benchmark"
    smoke_sweep(tmp_path, sweep / "sampled", "dataset=iemocap", "tts=vote", "tts.n=1")
    smoke_sweep(tmp_path, sweep / "cot_greedy", "dataset=iemocap", "tts=cot_greedy", "tts.n=1")
    report = build_report([sweep])
    assert not report.aggregate.failed and len(report.aggregate.cells) == len(TWINS) * (1 + 1)
    summary = json.loads((report.out_dir / "summary.json").read_text())["tts_benchmark"]
    assert summary["models"] == sorted(TWINS) and summary["datasets"] == ["iemocap"]
    assert summary["strategies"] == ["cot_greedy", "vote"] and not summary["missing"]
    rows = benchmark_tables(report.markdown, summary["datasets"])["iemocap"]
    assert sorted(rows) == sorted(["Model", *TWINS])
    for model in TWINS:
        assert all(FILLED.match(cell) for cell in rows[model]), (model, rows[model])
        assert "(N=1," in rows[model][0]  # cot_greedy: one trajectory
    for shares in summary["trajectories"]:  # 6 tokens: no trajectory reaches Answer:, the budget cuts all
        assert shares["trajectories"] > 0 and shares["truncated_share"] == 1.0, shares
    assert {shares["model"] for shares in summary["trajectories"]} == set(TWINS)
    for model in TWINS:
        assert (report.out_dir / f"tts_compute_{model}.png").read_bytes()[:4] == b"\x89PNG"


def test_every_benchmark_strategy_gets_its_column_in_order(tmp_path):
    """One run per strategy (hand-made): the table's columns are every strategy, in the benchmark's order.
    (Every strategy itself runs through `ambig.evaluate` in tests/test_tts.py and on every twin in
    tests/model/test_family_twins.py.)"""
    from ambig.report.build import build_report
    from ambig.report.tts_benchmark import STRATEGIES

    for num, name in enumerate(STRATEGIES):
        n = 1 if name == "cot_greedy" else 2
        write_tts_run(tmp_path / "sweep", num, OMNI, "crema_d", name, n, 0.3 + num / 100, 20.0, 8, 1.0, 0.0)
    report = build_report([tmp_path / "sweep"], tmp_path / "out")
    rows = benchmark_tables(report.markdown, ["crema_d"])["crema_d"]
    assert [title.split(" ")[0] for title in rows["Model"]] == list(STRATEGIES)
    assert rows[OMNI] == [
        f"{0.3 + num / 100:.3f} (N={1 if num == 0 else 2}, 20 tok)" for num in range(len(STRATEGIES))
    ]

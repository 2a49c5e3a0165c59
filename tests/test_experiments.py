"""The paper's experiments: each config composes as documented, and each runs as a smoke multirun whose
report has every cell filled (`python -m ambig.train -m experiment=<name> scale=smoke`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from ambig.checkpoints import find_run, resolve_init_from
from ambig.report.build import build_report

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ("table2", "fig2_kl", "table3_cot")


def compose_cfg(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_composes_with_and_without_smoke(name):
    full, smoke = compose_cfg(f"experiment={name}"), compose_cfg(f"experiment={name}", "scale=smoke")
    assert full.experiment_name == smoke.experiment_name == name
    assert full.hydra.sweeper.params["fold"] == "1,2,3,4,5"
    assert not full.fixture_corpora and smoke.fixture_corpora and smoke.model.name == "tiny"
    assert smoke.trainer.limit_train_batches == 2


def test_table2_sweeps_the_papers_grid_and_chains_rl_after_sft():
    cfg = compose_cfg("experiment=table2")
    params = cfg.hydra.sweeper.params
    assert params["strategy"] == "base,audio_reasoner,sft,dpo,grpo,grpoz"
    assert params["dataset"] == "iemocap,crema_d"
    for strategy, init in [
        ("base", None),
        ("sft", None),
        ("dpo", "run:sft"),
        ("grpo", "run:sft"),
        ("grpoz", "run:sft"),
    ]:
        assert compose_cfg("experiment=table2", f"strategy={strategy}").init_from == init
    reasoner = compose_cfg("experiment=table2", "strategy=audio_reasoner")
    assert (
        reasoner.model.hub_id == "zhifeixie/Audio-Reasoner"
        and reasoner.model.output_format == "audio_reasoner"
    )
    assert reasoner.strategy._target_.endswith("BaseStrategy") and reasoner.model.lora is None


def test_fig2_and_table3_grids():
    fig2 = compose_cfg("experiment=fig2_kl").hydra.sweeper.params
    assert (fig2["loss"], fig2["strategy"]) == ("ce_only,ambiguity", "sft,dpo")
    table3 = compose_cfg("experiment=table3_cot")
    assert (
        table3.dataset.name == "crema_d" and table3.strategy.name == "sft" and table3.loss.name == "ambiguity"
    )
    assert table3.hydra.sweeper.params["cot"] == "structured,none"
    assert table3.hydra.sweeper.params["test_dataset"].startswith("same,iemocap")
    assert not compose_cfg("experiment=table3_cot", "test_dataset=same").test_dataset  # = in-domain


def write_finished(root: Path, name: str, **fields) -> Path:
    run = root / name
    (run / "checkpoints").mkdir(parents=True)
    ckpt = run / "checkpoints" / "best.ckpt"
    ckpt.write_text("x")
    metrics = {"dataset": "iemocap", "fold": 2, "model": "tiny", "loss": "ambiguity", "cot": "structured"}
    metrics |= {"seed": 0, "experiment_name": "table2"}
    metrics |= {"strategy": "sft", "best_checkpoint": str(ckpt), **fields}
    (run / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_init_from_run_finds_the_newest_matching_finished_run(tmp_path):
    want = {"dataset": "iemocap", "fold": 2, "model": "tiny", "loss": "ambiguity", "cot": "structured"}
    want |= {"seed": 0, "experiment_name": "table2"}
    old = write_finished(tmp_path, "a/old")
    new = write_finished(tmp_path, "multirun/x/7-iemocap-sft-fold2")
    write_finished(tmp_path, "b/other_fold", fold=3)
    write_finished(tmp_path, "b/other_loss", loss="ce_only")
    write_finished(tmp_path, "b/dpo", strategy="dpo")
    # Newer than `new`, but of another seed or another experiment: never picked.
    write_finished(tmp_path, "c/other_seed", seed=1)
    write_finished(tmp_path, "c/other_experiment", experiment_name="fig2_kl")
    os.utime(old / "metrics.json", (time.time() - 100, time.time() - 100))
    os.utime(new / "metrics.json", (time.time() - 50, time.time() - 50))
    assert find_run(tmp_path, "sft", want) == new
    assert find_run(tmp_path, "sft", {**want, "seed": 1}) == tmp_path / "c/other_seed"
    assert resolve_init_from("run:sft", tmp_path, want) == str(new)
    assert resolve_init_from("/some/run", tmp_path, want) == "/some/run"
    with pytest.raises(
        FileNotFoundError, match="no finished sft run with dataset=iemocap, fold=2.*run it first"
    ):
        find_run(tmp_path, "sft", {**want, "model": "qwen2_audio_7b_instruct"})


def run_and_cache_dirs(root: Path) -> dict:
    return {"AMBIG_RUNS_DIR": root / "runs", "AMBIG_CACHE_DIR": root / "cache"}


@pytest.fixture
def smoke_env(tmp_path):
    """Run and cache directories of one test (its own: `make test` runs the slow tests in parallel)."""
    return run_and_cache_dirs(tmp_path)


def run_module(env: dict, *args: str) -> subprocess.CompletedProcess:
    """`python -m <args>` in the repository with the smoke run and cache directories; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={**os.environ, **{k: str(v) for k, v in env.items()}},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_smoke_multirun_fills_every_cell_of_the_report(smoke_env, name):
    before = set((smoke_env["AMBIG_RUNS_DIR"] / "multirun").glob("*"))
    run_module(smoke_env, "ambig.train", "-m", f"experiment={name}", "scale=smoke", "fold=1", "logger=none")
    (sweep,) = set((smoke_env["AMBIG_RUNS_DIR"] / "multirun").glob("*")) - before
    report = build_report([sweep])
    agg = report.aggregate
    assert not agg.failed and not agg.incomplete
    cells = {(c.key.dataset, c.key.test_dataset, c.key.strategy, c.key.loss, c.key.cot) for c in agg.cells}
    if name == "table2":
        assert cells == {
            (d, d, s, "ambiguity", "structured")
            for d in ("iemocap", "crema_d")
            for s in ("base", "audio_reasoner", "sft", "dpo", "grpo", "grpoz")
        }
        for strategy in ("dpo", "grpo", "grpoz"):  # each started from this sweep's SFT run of its dataset
            for run_dir in sweep.glob(f"*-{strategy}-fold1"):
                init = json.loads((run_dir / "metrics.json").read_text())["initialised_from"]
                dataset = run_dir.name.split("-")[1]
                assert init.startswith(str(next(sweep.glob(f"*-{dataset}-sft-fold1"))))
    elif name == "fig2_kl":
        assert cells == {
            (d, d, s, loss, "structured")
            for d in ("iemocap", "crema_d")
            for s in ("sft", "dpo")
            for loss in ("ce_only", "ambiguity")
        }
        assert (report.out_dir / "fig2_kl.png").read_bytes()[:4] == b"\x89PNG"
    else:
        assert cells == {
            ("crema_d", t, "sft", "ambiguity", c)
            for t in ("crema_d", "iemocap")
            for c in ("structured", "none")
        }
    assert "| grpoz |" in report.markdown or name != "table2"


@pytest.mark.parametrize("launcher", ["slurm", "local"])
def test_launcher_configs_compose(launcher):
    cfg = compose_cfg("experiment=table2", f"hydra/launcher={launcher}")
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher" if launcher == "slurm" else "LocalLauncher")
    if launcher == "slurm":
        assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.array_parallelism == 20


@pytest.mark.slow
def test_local_submitit_launcher_runs_a_tiny_sweep(smoke_env):
    before = set((smoke_env["AMBIG_RUNS_DIR"] / "multirun").glob("*"))
    args = ["strategy=base", "fold=1,2", "logger=none", "dataset.corpus.n_utterances=30"]
    args += [
        "trainer.limit_test_batches=1",
        "decoding.max_new_tokens=8",
        "decoding.refuse_short_budget=false",
        "trainer.enable_progress_bar=false",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "ambig.train", "-m", "hydra/launcher=local", *args],
        cwd=ROOT,
        env={**os.environ, **{k: str(v) for k, v in smoke_env.items()}},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (sweep,) = set((smoke_env["AMBIG_RUNS_DIR"] / "multirun").glob("*")) - before
    assert (sweep / ".submitit").is_dir()  # the jobs went through submitit, not the basic launcher
    folds = sorted(json.loads(p.read_text())["fold"] for p in sweep.glob("*/metrics.json"))
    assert folds == [1, 2]


MINI_ROWS = ("base", "sft", "sft_ce_only", "sft_no_cot", "dpo", "grpo", "grpoz")
MINI_TTS_ROWS = ("sft+self_consistency-n4", "sft+weighted_best_of_n-n4")


@pytest.fixture(scope="module")
def mini_study(tmp_path_factory):
    """python -m ambig.mini_paper scale=smoke: every row (tiny model) into one study, then the report."""
    env = run_and_cache_dirs(tmp_path_factory.mktemp("mini_study"))
    study = env["AMBIG_RUNS_DIR"] / "study"
    proc = run_module(env, "ambig.mini_paper", f"study={study}", "scale=smoke", "logger=none")
    return study, proc, env


def _record(study: Path) -> tuple[Path, dict]:
    (record_file,) = sorted(study.glob("report/*/mini_paper.json"))[-1:]
    return record_file, json.loads(record_file.read_text())


@pytest.mark.slow
def test_mini_paper_runs_every_row_and_reports_the_papers_claims(mini_study):
    study, proc, _ = mini_study
    assert "## The paper's claims" in proc.stdout
    record_file, record = _record(study)
    assert set(record["rows"]) == set(MINI_ROWS + MINI_TTS_ROWS) and record["ran_now"] == [
        *MINI_ROWS,
        *MINI_TTS_ROWS,
    ]
    assert set(record["wall_seconds"]) == {*record["rows"], "total"} and record["machine"]["cpus"] >= 1
    summary = json.loads((record_file.parent / "summary.json").read_text())
    rows = {(c["strategy"], c["loss"], c["cot"]) for c in summary["cells"]}
    assert rows == {
        ("base", "ambiguity", "structured"),
        ("sft", "ambiguity", "structured"),
        ("sft", "ce_only", "structured"),
        ("sft", "ambiguity", "none"),
        ("dpo", "ambiguity", "structured"),
        ("grpo", "ambiguity", "structured"),
        ("grpoz", "ambiguity", "structured"),
        ("sft+self_consistency-n4", "ambiguity", "structured"),
        ("sft+weighted_best_of_n-n4", "ambiguity", "structured"),
    }
    assert not summary["failed"] and not summary["incomplete"]
    # every claim measured on this study's cells, with a verdict
    assert len(summary["claims"]) == 6 and all(c["held"] in (True, False) for c in summary["claims"])
    # the RL rows and the tts rows started from this study's SFT run, against the original model (pi_ref)
    sft_run = record["rows"]["sft"]
    for name in ("dpo", "grpo", "grpoz", *MINI_TTS_ROWS):
        metrics = json.loads((Path(record["rows"][name]) / "metrics.json").read_text())
        assert metrics["initialised_from"].startswith(sft_run), name
        assert Path(record["rows"][name]).parent.parent == study
    for name in ("dpo", "grpo", "grpoz"):
        config = (Path(record["rows"][name]) / "config.yaml").read_text()
        assert "reference: base" in config, name
    assert (Path(record["rows"]["sft"]) / "train.log").read_text().count("fold 1:") == 1


@pytest.mark.slow
def test_mini_paper_rerun_keeps_finished_rows_and_resumes_a_cut_off_one(mini_study):
    study, _, env = mini_study
    ledger_file = study / "ledger.json"
    ledger = json.loads(ledger_file.read_text())
    cut = ledger["rows"]["grpoz"]
    assert (Path(cut["run"]) / "checkpoints" / "last.ckpt").is_file()
    # as if the process had been killed while grpoz trained: started, a checkpoint written, no results yet
    (Path(cut["run"]) / "metrics.json").rename(Path(cut["run"]) / "metrics.json.cut")
    ledger["rows"]["grpoz"] = {k: cut[k] for k in ("config", "run")} | {"status": "started"}
    ledger_file.write_text(json.dumps(ledger))
    proc = run_module(env, "ambig.mini_paper", f"study={study}", "scale=smoke", "logger=none")
    _, record = _record(study)
    assert record["ran_now"] == ["grpoz"]
    kept = [line for line in proc.stdout.splitlines() if ": kept " in line]
    assert len(kept) == len(MINI_ROWS) + len(MINI_TTS_ROWS) - 1
    new = json.loads((Path(record["rows"]["grpoz"]) / "metrics.json").read_text())
    assert new["resumed_from"].startswith(cut["run"]) and record["rows"]["grpoz"] != cut["run"]
    assert (Path(cut["run"]) / "metrics.json.cut").is_file()  # the cut-off run's directory is left as it was
    assert json.loads(ledger_file.read_text())["rows"]["grpoz"]["status"] == "finished"


def test_mini_paper_row_key_follows_the_config_not_resume():
    from ambig.mini_paper import compose_row, config_key, rows

    train, tts = rows(["scale=smoke"])
    assert [r.name for r in train] == list(MINI_ROWS) and [r.name for r in tts] == list(MINI_TTS_ROWS)
    sft = train[1]
    key = config_key(compose_row(sft, ["scale=smoke"], []))
    assert config_key(compose_row(sft, ["scale=smoke"], ["resume=true"])) == key
    assert config_key(compose_row(sft, ["scale=smoke"], ["trainer.max_epochs=3"])) != key
    assert config_key(compose_row(train[2], ["scale=smoke"], [])) != key


def test_every_mini_paper_training_row_saves_last_ckpt_before_it_ends():
    """A study killed mid-row resumes that row from its last.ckpt: each training row, at the study's own
    scale, writes one before the row ends: at an epoch's end when it has more than one (the SFT rows), else
    inside its epoch (the RL rows run one of 24 steps; the default cadence, 50 steps, would never save)."""
    from ambig.mini_paper import compose_row, rows

    train, _ = rows([])
    for row in train:
        cfg = compose_row(row, [], [])
        if row.name == "base":
            continue  # no training
        steps = cfg.trainer.limit_train_batches
        if not isinstance(steps, int):  # a whole epoch of the training split
            steps = -(-180 // cfg.batch_size)  # the synthetic corpus' fold 1: 180 training clips
        if cfg.trainer.max_epochs == 1:
            assert 0 < cfg.checkpoint_every_n_steps < steps, (row.name, cfg.checkpoint_every_n_steps, steps)
        else:
            assert cfg.trainer.max_epochs > 1 and row.name.startswith("sft"), row.name


def test_the_mini_paper_rl_rows_checkpoint_activations_and_the_others_do_not():
    """The RL rows backprop over all of a step's rollouts at once (GRPOz: 4 clips x 5 trajectories of ~370
    tokens): without activation checkpointing one step took a process to 22.4 GB, and the study was OOM-killed
    on a 24 GiB machine. The SFT rows (4 rows a step) keep the faster path."""
    from ambig.mini_paper import compose_row, rows

    train, _ = rows([])
    flags = {row.name: bool(compose_row(row, [], []).model.get("gradient_checkpointing")) for row in train}
    assert flags == {name: name in {"dpo", "grpo", "grpoz"} for name in MINI_ROWS}


def test_a_study_wide_mini_paper_knob_composes_for_every_row():
    """`python -m ambig.mini_paper mini_paper.rl.train_batches=48` (the README's longer CPU run) passes the
    override to every row, the tts rows included: each composes, and the RL rows take it."""
    from ambig.mini_paper import compose_row, rows

    overrides = ["mini_paper.rl.train_batches=48"]
    train, tts = rows(overrides)
    steps = {row.name: compose_row(row, overrides, []).trainer.get("limit_train_batches") for row in train}
    assert {name: steps[name] for name in ("dpo", "grpo", "grpoz")} == {"dpo": 48, "grpo": 48, "grpoz": 48}
    assert [compose_row(row, overrides, []).tts.n for row in tts] == [4, 4]

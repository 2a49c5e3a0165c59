"""The test-time-scaling benchmark (`python -m ambig.evaluate -m experiment=tts_benchmark`): the sweep it
composes (the releases; at scale=smoke their tiny twins), its report (per dataset models x strategies at the
best N with their compute, per model quality-vs-compute figures, trajectory shares), and the smoke sweep end
to end."""

from __future__ import annotations

from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir

from ambig.tts.strategies import SAMPLED

ROOT = Path(__file__).resolve().parents[1]
TWINS = ("tiny", "tiny_omni", "tiny_audio_flamingo_3")


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

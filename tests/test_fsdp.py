"""trainer=fsdp_cpu: torch FSDP through Lightning (ambig.distributed), on two CPU processes over gloo.

- SFT: the checkpoint FSDP writes is complete (the LoRA weights of the wrapped layers too) and one process
  loading it gets the test metrics the two sharded processes reported.
- GRPO: rollouts are sampled from sharded weights and pi_ref (reference=init) is swapped into the shards;
  each step's KL, reward and completion length equal those of the same run under DDP (whole weights on
  every process).
  A reference that kept the wrong weights would show at the second step's KL (0.0158 here).
"""

from __future__ import annotations

import csv
import importlib.util
import json

import pytest
import torch
from test_ddp import ROOT, train

from ambig.distributed import FSDPWithCPU, clean_name, deepspeed, fsdp, layer_classes, shards_weights

# GRPOz: the random tiny model's short rollouts never answer, so they all earn the unanswered reward and
# plain GRPO's advantages would be 0 (nothing to learn); the curated member gives each group a signal.
GRPO = [
    "strategy=grpoz",
    "model.learning_rates.grpo=1e-3",  # a step large enough that pi visibly leaves pi_ref after one step
    "strategy.num_generations=2",
    "trainer.limit_train_batches=2",
    "trainer.log_every_n_steps=1",
]


def step_logs(run_dir) -> list[dict[str, float]]:
    rows = list(csv.DictReader((run_dir / "logs" / "metrics.csv").open()))
    # Not the loss: its advantage term divides reward gaps by the group's std (+1e-4), so with G=2 and
    # near-equal rewards the 1e-7 rounding differences of sharded reductions become 1e-4 (measured).
    keys = ("train/kl", "train/reward/mean", "train/completion_length")
    return [{k: float(row[k]) for k in keys} for row in rows if row.get("train/kl")]


@pytest.mark.slow
def test_fsdp_checkpoint_gives_the_same_test_metrics_in_one_process(tmp_path):
    cache = tmp_path / "cache"
    sharded, _ = train(tmp_path / "fsdp", cache, "trainer=fsdp_cpu", "trainer.limit_train_batches=2")
    state = torch.load(sharded["best_checkpoint"], weights_only=False)["state_dict"]
    assert any(".lora_A." in k for k in state) and not any("_fsdp_wrapped_module" in k for k in state)
    single, _ = train(
        tmp_path / "single", cache, f"init_from={sharded['best_checkpoint']}", "trainer.max_epochs=0"
    )
    assert sharded["n"] == single["n"] == 6
    for key in ("js", "bc", "r2", "brier", "kl", "accuracy"):
        assert abs(sharded[key] - single[key]) <= 1e-5, (key, sharded[key], single[key])


@pytest.mark.slow
def test_grpo_under_fsdp_takes_the_steps_ddp_takes(tmp_path):
    cache = tmp_path / "cache"
    _, fsdp_dir = train(tmp_path / "fsdp", cache, "trainer=fsdp_cpu", *GRPO, "logger=csv")
    _, ddp_dir = train(tmp_path / "ddp", cache, "trainer=ddp_cpu", *GRPO, "logger=csv")
    sharded, whole = step_logs(fsdp_dir), step_logs(ddp_dir)
    assert len(sharded) == len(whole) == 2
    assert whole[0]["train/kl"] == 0.0 and whole[1]["train/kl"] > 1e-3  # pi moved away from pi_ref
    for step_sharded, step_whole in zip(sharded, whole, strict=True):
        for key, value in step_whole.items():
            assert step_sharded[key] == pytest.approx(value, abs=1e-6), key
    ref = torch.load(next(fsdp_dir.glob("checkpoints/last*.ckpt")), weights_only=False)["reference_weights"]
    assert len(ref["per_process"]) == 2  # each process's shards of pi_ref, for a resume on 2 processes


def test_config_errors_name_the_setting():
    with pytest.raises(ValueError, match="sharding_strategy='HALF'"):
        fsdp(sharding_strategy="HALF")
    with pytest.raises(ValueError, match="cannot import the layer class 'transformers.NoSuchLayer'"):
        layer_classes(["transformers.NoSuchLayer"])
    strategy = fsdp(wrap=["transformers.models.qwen2.modeling_qwen2.Qwen2DecoderLayer"])
    assert isinstance(strategy, FSDPWithCPU) and shards_weights(strategy)
    assert not shards_weights(fsdp(sharding_strategy="NO_SHARD"))
    name = "model._fsdp_wrapped_module.layers.0._checkpoint_wrapped_module.q_proj.lora_A.default.weight"
    assert clean_name(name) == "model.layers.0.q_proj.lora_A.default.weight"
    assert json.dumps(sorted(c.__name__ for c in layer_classes(["torch.nn.Linear"]))) == '["Linear"]'
    with pytest.raises(ValueError, match="ZeRO stage 2 or 3"):
        deepspeed(stage=1)


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is not None, reason="deepspeed is installed here")
def test_deepspeed_without_the_package_says_how_to_install_it():
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'ambig\[deepspeed\]'"):
        deepspeed(stage=3)


@pytest.mark.parametrize(
    "model", ["qwen2_audio_7b_instruct", "audio_reasoner", "qwen2_5_omni_7b", "tiny_omni"]
)
def test_fsdp_wraps_each_model_family_by_its_own_layers(model):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}", "trainer=fsdp"])
    classes = layer_classes(cfg.trainer.strategy.wrap)
    assert len(classes) == 2 and all(issubclass(c, torch.nn.Module) for c in classes)
    family = "qwen2_5_omni" if "omni" in model else "qwen2"
    assert all(c.__module__.startswith(f"transformers.models.{family}") for c in classes)
    assert isinstance(instantiate(cfg.trainer.strategy), FSDPWithCPU)

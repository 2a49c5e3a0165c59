"""model.train_audio_tower: the audio tower (and projector) train beside LoRA, checkpoints carry them, pi_ref
=base keeps the original tower, encode_once / audio_cache step aside; a tower made trainable by accident is
refused naming what did it."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import ADAMW, AMBIGUITY_LOSS
from omegaconf import OmegaConf

from ambig.checkpoints import load_init
from ambig.model.audio_encoding import audio_tower_frozen
from ambig.model.load import load_model
from ambig.strategies.grpo import GRPOStrategy
from ambig.strategies.sft import SFTStrategy


def tower_cfg(tiny_cfg_factory, **lora):
    cfg = OmegaConf.to_container(tiny_cfg_factory(lora=True))
    cfg["lora"] = {**cfg["lora"], "modules_to_save": ["embed_tokens", "lm_head"], **lora}
    cfg["train_audio_tower"] = True
    return OmegaConf.create(cfg)


def tower_outputs(model, batch):
    tower = model.get_base_model().model.audio_tower
    with torch.no_grad():
        return tower(batch["input_features"]).last_hidden_state


def sft(model, builder):
    return SFTStrategy(
        model, builder, optim=ADAMW, decoding={"max_new_tokens": 4}, loss=AMBIGUITY_LOSS, name="sft"
    )


def test_the_tower_and_projector_train_and_checkpoints_carry_them(
    tiny_cfg_factory, builder, examples, tmp_path
):
    torch.manual_seed(0)
    model, _ = load_model(tower_cfg(tiny_cfg_factory))
    assert not audio_tower_frozen(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(".audio_tower.modules_to_save." in n for n in trainable)
    assert any(".multi_modal_projector.modules_to_save." in n for n in trainable)
    strategy = sft(model, builder)
    batch = builder(examples[:4])
    before = tower_outputs(model, batch)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        loss, _ = strategy.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = tower_outputs(model, batch)
    assert (after - before).abs().max() > 1e-3  # the tower itself moved
    with model.disable_adapter():  # the original tower is untouched: pi_ref=base is the model as loaded
        torch.testing.assert_close(tower_outputs(model, batch), before)
    # A checkpoint holds the trained tower; a fresh model given it computes the trained tower's outputs.
    checkpoint = {"state_dict": strategy.state_dict()}
    strategy.on_save_checkpoint(checkpoint)
    assert any(".audio_tower.modules_to_save." in k for k in checkpoint["state_dict"])
    (tmp_path / "checkpoints").mkdir()
    torch.save(checkpoint, tmp_path / "checkpoints" / "last.ckpt")
    torch.manual_seed(1)
    fresh, _ = load_model(tower_cfg(tiny_cfg_factory))
    load_init(sft(fresh, builder), tmp_path)
    torch.testing.assert_close(tower_outputs(fresh, batch), after)


def test_encode_once_and_the_audio_cache_step_aside(tiny_cfg_factory, builder, examples, caplog):
    torch.manual_seed(0)
    model, _ = load_model(tower_cfg(tiny_cfg_factory))
    strategy = GRPOStrategy(
        model, builder, optim=ADAMW, decoding={"max_new_tokens": 4}, loss=AMBIGUITY_LOSS, name="grpo",
        num_generations=2, epsilon_low=0.2, epsilon_high=0.2, beta=0.04, loss_type="grpo",
        scale_rewards="group", num_iterations=1, w_dist=1.0, w_fmt=0.5, include_gold=True,
        rollout={"max_new_tokens": 4, "temperature": 1.0, "top_p": 1.0}, max_completion_length=4,
        encode_once=True, reference="base", audio_cache="memory",
    )  # fmt: skip
    with caplog.at_level("INFO", logger="ambig.strategies.base"):
        strategy.on_fit_start()
    assert any("encode_once and audio_cache=memory step aside" in r.getMessage() for r in caplog.records)
    batch = builder(examples[:2])
    shared = strategy.shared_audio(batch)
    assert "encoded_audio" not in shared and "input_features" in shared  # every pass runs the tower
    loss, _ = strategy.training_loss(batch)
    loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if ".audio_tower.modules_to_save." in n]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # the loss reaches the tower
    assert strategy._audio_store is None


@pytest.mark.parametrize(
    ("lora", "message"),
    [
        ({"target_modules": ".*(q_proj|v_proj)"}, r"LoRA target regex '.*' matched the audio tower"),
        ({"modules_to_save": ["lm_head", "audio_tower"]}, "entry .audio_tower. makes the audio"),
    ],
)  # fmt: skip
def test_a_tower_made_trainable_by_accident_names_the_cause(tiny_cfg_factory, lora, message):
    cfg = copy.deepcopy(OmegaConf.to_container(tiny_cfg_factory(lora=True)))
    cfg["lora"].update(lora)
    with pytest.raises(ValueError, match=message):
        load_model(OmegaConf.create(cfg))


def test_a_tower_without_lora_is_refused(tiny_cfg_factory):
    with pytest.raises(ValueError, match="train_audio_tower=true trains the tower beside a LoRA adapter"):
        load_model(tiny_cfg_factory(lora=False, train_audio_tower=True))


def test_the_tower_learns_at_its_own_learning_rate_scale(tiny_cfg_factory, builder):
    from types import SimpleNamespace

    torch.manual_seed(0)
    model, _ = load_model(tower_cfg(tiny_cfg_factory))
    strategy = SFTStrategy(
        model, builder, optim={**ADAMW, "audio_tower_lr_scale": 0.03}, decoding={"max_new_tokens": 4},
        loss=AMBIGUITY_LOSS, name="sft",
    )  # fmt: skip
    strategy._trainer = SimpleNamespace(estimated_stepping_batches=10)
    opt = strategy.configure_optimizers()["optimizer"]
    rest, tower = opt.param_groups
    tower_ids = {id(p) for n, p in model.named_parameters() if p.requires_grad and ".audio_tower." in n}
    assert {id(p) for p in tower["params"]} == tower_ids and tower_ids
    assert not tower_ids & {id(p) for p in rest["params"]}
    assert tower["initial_lr"] == pytest.approx(0.03 * rest["initial_lr"])

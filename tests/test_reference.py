"""pi_ref for DPO and GRPO (ambig.strategies.reference): `base` = adapter off, `init` = the weights training
started from, kept across checkpoints, swapped in and out without touching the policy."""

from __future__ import annotations

import pytest
import torch
from test_grpo import make_grpo

from ambig.model.inputs import completion_batch
from ambig.model.load import load_model
from ambig.strategies.reference import ReferencePolicy

SAVE = ["embed_tokens", "lm_head", "multi_modal_projector"]  # as conf/model/tiny.yaml


@pytest.fixture
def fresh(tiny_cfg_factory):
    torch.manual_seed(0)
    cfg = tiny_cfg_factory(lora=True)
    cfg.lora.modules_to_save = SAVE
    return load_model(cfg)[0].eval()


def nudge(model, scale: float, seed: int) -> None:
    """Move every trainable weight (what SFT or an RL step would do)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(scale * torch.randn(p.shape, generator=gen))


@pytest.fixture
def seqs(builder, examples):
    batch = builder(examples[:2])
    return completion_batch(builder, batch, [[builder.newline_ids[0], builder.end_id]] * 2)


def logps(strategy, seqs, reference: bool = False) -> torch.Tensor:
    with torch.no_grad():
        if reference:
            return strategy.reference_token_logps(seqs)
        return strategy.policy_token_logps(seqs)


def test_unknown_reference_is_refused(fresh):
    with pytest.raises(ValueError, match="strategy.reference='sft'"):
        ReferencePolicy(fresh, "sft", "grpo")


def test_init_without_init_from_is_the_adapter_off_model(fresh, builder, seqs):
    """A fresh adapter is the identity: pi_ref(init) == pi_ref(base) == the policy."""
    init, base = make_grpo(fresh, builder, reference="init"), make_grpo(fresh, builder, reference="base")
    init.reference.snapshot()
    torch.testing.assert_close(logps(init, seqs, True), logps(base, seqs, True), atol=1e-6, rtol=0)
    torch.testing.assert_close(logps(init, seqs, True), logps(init, seqs), atol=1e-6, rtol=0)


def test_init_keeps_the_starting_weights_while_the_policy_moves(fresh, builder, seqs):
    strategy = make_grpo(fresh, builder, reference="init")
    base = make_grpo(fresh, builder, reference="base")
    nudge(fresh, 0.05, seed=1)  # init_from: the run starts from trained weights
    at_start = logps(strategy, seqs)
    strategy.on_fit_start()  # takes the snapshot (and sets train mode)
    fresh.eval()
    nudge(fresh, 0.05, seed=2)  # training moves the policy
    moved = logps(strategy, seqs)
    assert (moved - at_start).abs().max() > 1e-3
    torch.testing.assert_close(logps(strategy, seqs, True), at_start, atol=1e-6, rtol=0)
    torch.testing.assert_close(logps(strategy, seqs), moved)  # swapped back after the reference pass
    assert (logps(base, seqs, True) - at_start).abs().max() > 1e-3  # base would be the untrained model


def test_reference_passes_run_without_dropout_and_restore_the_mode(fresh, builder, seqs):
    strategy = make_grpo(fresh, builder, reference="init")
    strategy.on_fit_start()
    assert fresh.training
    first, second = logps(strategy, seqs, True), logps(strategy, seqs, True)
    assert torch.equal(first, second) and fresh.training


def test_init_reference_survives_a_checkpoint(tiny_cfg_factory, fresh, builder, seqs):
    strategy = make_grpo(fresh, builder, reference="init")
    nudge(fresh, 0.05, seed=1)
    strategy.on_fit_start()
    want = logps(strategy, seqs, True)
    checkpoint = {"state_dict": strategy.state_dict()}
    strategy.on_save_checkpoint(checkpoint)
    assert set(checkpoint["reference_weights"]) == {n for n, p in fresh.named_parameters() if p.requires_grad}

    torch.manual_seed(5)
    cfg = tiny_cfg_factory(lora=True)
    cfg.lora.modules_to_save = SAVE
    other = load_model(cfg)[0].eval()
    resumed = make_grpo(other, builder, reference="init")
    resumed.on_load_checkpoint(checkpoint)  # Lightning restores before on_fit_start
    resumed.load_state_dict(checkpoint["state_dict"], strict=False)
    resumed.on_fit_start()  # must not replace the restored reference with the resumed weights
    torch.testing.assert_close(logps(resumed, seqs, True), want, atol=1e-6, rtol=0)


def test_init_before_the_snapshot_is_an_error(fresh, builder, seqs):
    strategy = make_grpo(fresh, builder, reference="init")
    with pytest.raises(RuntimeError, match="no initial weights yet"):
        logps(strategy, seqs, True)

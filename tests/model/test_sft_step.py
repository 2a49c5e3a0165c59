"""SFT on a fixed batch: AdamW on the LoRA weights lowers both the CE and the KL part of the loss."""

import torch


def test_sft_steps_lower_ce_and_kl(tiny_cfg_factory, builder, examples, make_sft):
    from ambig.model.load import load_model

    torch.manual_seed(0)
    model, _ = load_model(tiny_cfg_factory(lora=True))
    sft = make_sft(model, builder, lr=1e-2)
    batch = builder(examples[:2])
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)

    def evaluate():
        model.eval()
        with torch.no_grad():
            loss, parts = sft.training_loss(batch)
        return float(loss), float(parts["ce"]), float(parts["kl"])

    loss0, ce0, kl0 = evaluate()
    assert abs(loss0 - (ce0 + kl0)) < 1e-4
    model.train()
    for _ in range(20):
        opt.zero_grad()
        loss, _ = sft.training_loss(batch)
        loss.backward()
        assert all(p.grad is not None for p in params)
        opt.step()
    loss1, ce1, kl1 = evaluate()
    assert loss1 < loss0
    assert ce1 < ce0, (ce0, ce1)
    assert kl1 < kl0, (kl0, kl1)
    # Only the adapter moved: every frozen weight (audio tower, embeddings, base projections) is untouched.
    for name, p in model.named_parameters():
        if name in frozen:
            assert torch.equal(p, frozen[name]), name


def test_fit_puts_the_whole_model_in_training_mode(tiny_cfg_factory, builder, make_sft):
    from ambig.model.load import load_model

    model, _ = load_model(tiny_cfg_factory(lora=True))
    sft = make_sft(model, builder, lr=1e-3)
    assert not all(m.training for m in model.modules()), (
        "from_pretrained hands the base model over in eval mode"
    )
    sft.on_fit_start()
    assert all(m.training for m in model.modules())

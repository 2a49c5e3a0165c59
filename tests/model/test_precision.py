"""The GPU options, exercised on CPU: gradient checkpointing (model.gradient_checkpointing) recomputes the
activations in backward and must not change the loss or any LoRA gradient; bf16 autocast (the
trainer's precision=bf16-mixed) must give the fp32 loss within bf16 rounding."""

import pytest
import torch


def loss_and_grads(model, sft, batch):
    model.train()
    for module in model.modules():  # dropout off: both runs must see the same function
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    loss, _ = sft.training_loss(batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


@pytest.mark.parametrize("modules_to_save", [None, "tiny"], ids=["lora-only-as-the-7b", "tiny-config"])
def test_gradient_checkpointing_keeps_the_loss_and_every_lora_gradient(
    tiny_cfg_factory, builder, examples, make_sft, modules_to_save
):
    from ambig.model.load import load_model

    batch = builder(examples[:2])
    results = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        cfg = tiny_cfg_factory(lora=True, gradient_checkpointing=checkpointing)
        if modules_to_save is None:  # no trainable embeddings: no input of a checkpointed layer needs grad
            cfg.lora.modules_to_save = None
        model, _ = load_model(cfg)
        assert model.is_gradient_checkpointing == checkpointing
        results.append(loss_and_grads(model, make_sft(model, builder), batch))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss_ckpt, loss, atol=1e-6, rtol=0)
    assert grads.keys() == grads_ckpt.keys() and any(".lora_B." in n for n in grads)
    for name, grad in grads.items():
        assert grad.abs().sum() > 0 or ".lora_A." in name, name  # lora_A's grad is 0 while lora_B is 0
        torch.testing.assert_close(grads_ckpt[name], grad, atol=1e-6, rtol=1e-4, msg=name)


def test_bf16_autocast_matches_fp32_within_bf16_rounding(tiny_cfg_factory, builder, examples, make_sft):
    from ambig.model.load import load_model

    batch = builder(examples[:2])
    torch.manual_seed(0)
    model, _ = load_model(tiny_cfg_factory(lora=True))
    sft = make_sft(model, builder)
    model.eval()
    with torch.no_grad():
        fp32, _ = sft.training_loss(batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            bf16, _ = sft.training_loss(batch)
    assert torch.isfinite(bf16) and bf16.dtype == torch.float32  # the loss is reduced in fp32
    assert abs(float(bf16) - float(fp32)) <= 0.02 * abs(float(fp32)), (float(bf16), float(fp32))
    assert float(bf16) != float(fp32)  # autocast did run the matmuls in bf16

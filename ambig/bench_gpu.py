"""`make bench-gpu`: the Qwen2-Audio-7B architecture with random weights (config only, no download), bf16,
LoRA as `model=qwen2_audio_7b_instruct` sets it, on one GPU.

    python -m ambig.bench_gpu [--batch 4] [--text-tokens 256] [--group 8] [--new-tokens 256]
                              [--gradient-checkpointing] [--peak-tflops X]

Prints and writes runs/bench/<timestamp>/bench_gpu.json:

- SFT: training tokens/s (a batch of 30 s clips, 750 audio tokens each, plus `--text-tokens` of text; forward,
  backward, AdamW on the LoRA weights) and model-FLOPs utilisation, MFU = tokens/s x 6 N / peak bf16 FLOP/s,
  with N the language model's parameters (PaLM's convention; with the base frozen, about 4 N of the 6 N are
  executed, so hardware utilisation is about 2/3 of the MFU printed).
- GRPO rollouts: sampled tokens/s of `generate` for `--batch` clips x `--group` rollouts of `--new-tokens`.
- Peak GPU memory of each part.

Without a CUDA GPU it prints why it skipped and exits 0. `--arch tiny --device cpu` runs the same code on the
tiny model (the tests do, to keep this file working where no GPU is).
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime
from pathlib import Path

# Qwen/Qwen2-Audio-7B-Instruct's config.json: the sizes that matter for speed and memory.
QWEN2_AUDIO_7B = {
    "audio": {
        "d_model": 1280,
        "encoder_layers": 32,
        "encoder_attention_heads": 20,
        "encoder_ffn_dim": 5120,
        "num_mel_bins": 128,
        "max_source_positions": 1500,
    },
    "text": {
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 32,
        "vocab_size": 156032,
        "max_position_embeddings": 8192,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
    },
    "audio_token_id": 151646,
}
# Dense bf16 tensor-core peak (FLOP/s) by device name, from the vendors' data sheets.
PEAK_BF16 = {
    "H100 SXM": 989e12,
    "H100 NVL": 835e12,
    "H100 PCIe": 756e12,
    "H100": 989e12,
    "H200": 989e12,
    "A100": 312e12,
    "L40S": 362e12,
    "A10G": 70e12,
}


def skip_reason(device: str) -> str | None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        return (
            "no CUDA GPU visible (torch.cuda.is_available() is False): run `make bench-gpu` on a GPU machine"
        )
    return None


def build_model(arch: str, device: str, gradient_checkpointing: bool):
    """(model with LoRA, audio token id, mel frames per clip, audio tokens per clip): random weights."""
    import torch
    from omegaconf import OmegaConf
    from transformers import (
        Qwen2AudioConfig,
        Qwen2AudioEncoderConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2Config,
    )

    from ambig.model.load import apply_lora

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    if arch == "7b":
        sizes, dtype = QWEN2_AUDIO_7B, torch.bfloat16
        lora = OmegaConf.load(conf / "qwen2_audio_7b_instruct.yaml").lora
    else:
        tiny = OmegaConf.load(conf / "tiny.yaml")
        t = tiny.tiny
        sizes = {
            "audio": {
                "d_model": t.audio_d_model,
                "encoder_layers": t.audio_layers,
                "encoder_attention_heads": t.audio_heads,
                "encoder_ffn_dim": t.audio_ffn_dim,
                "num_mel_bins": t.num_mel_bins,
                "max_source_positions": 50 * t.chunk_length,
            },
            "text": {
                "hidden_size": t.hidden_size,
                "intermediate_size": t.intermediate_size,
                "num_hidden_layers": t.num_hidden_layers,
                "num_attention_heads": t.num_attention_heads,
                "num_key_value_heads": t.num_key_value_heads,
                "vocab_size": 1024,
            },
            "audio_token_id": 1000,
        }
        dtype, lora = torch.float32, tiny.lora
    config = Qwen2AudioConfig(
        audio_config=Qwen2AudioEncoderConfig(**sizes["audio"]),
        text_config=Qwen2Config(**sizes["text"]),
        audio_token_id=sizes["audio_token_id"],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen2AudioForConditionalGeneration._from_config(config, dtype=dtype)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()  # LoRA: the frozen embeddings' output must carry a gradient
    model = apply_lora(model, lora)
    frames = 2 * sizes["audio"]["max_source_positions"]  # the encoder's fixed window
    audio_tokens = sizes["audio"]["max_source_positions"] // 2  # after its stride-2 conv and pooling
    return model, sizes["audio_token_id"], frames, audio_tokens, sizes


def make_batch(batch: int, text_tokens: int, audio_id: int, frames: int, audio_tokens: int, sizes, device):
    import torch

    vocab = sizes["text"]["vocab_size"]
    g = torch.Generator().manual_seed(0)
    text = torch.randint(0, min(vocab, audio_id), (batch, text_tokens), generator=g)
    audio = torch.full((batch, audio_tokens), audio_id)
    ids = torch.cat([text[:, :8], audio, text[:, 8:]], dim=1).to(device)
    mels = torch.randn(batch, sizes["audio"]["num_mel_bins"], frames, generator=g)
    return {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "input_features": mels.to(device),
        "feature_attention_mask": torch.ones(batch, frames, dtype=torch.long, device=device),
    }


def synchronize(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def peak_memory_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None


def bench_sft(model, batch: dict, device: str, steps: int) -> dict:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    model.train()
    labels = batch["input_ids"].clone()
    times = []
    for step in range(steps + 1):  # step 0 warms up
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        if step:
            times.append(time.perf_counter() - start)
    seconds = sum(times) / len(times)
    tokens = batch["input_ids"].numel()
    return {
        "step_s": seconds,
        "tokens_per_step": tokens,
        "tokens_per_s": tokens / seconds,
        "loss": float(loss.detach()),
        "peak_gpu_gib": peak_memory_gib(device),
    }


def bench_rollouts(model, batch: dict, device: str, group: int, new_tokens: int) -> dict:
    import torch

    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    model.eval()
    rows = {k: v.repeat_interleave(group, dim=0) for k, v in batch.items()}
    from ambig.generation import pinned_config

    # Every knob pinned (nothing from the checkpoint's file); exactly new_tokens sampled per row.
    config = pinned_config(
        max_new_tokens=new_tokens, do_sample=True, temperature=1.0, top_p=1.0,
        pad_token_id=0, eos_token_id=0, suppress_tokens=[],
    )  # fmt: skip
    config.min_new_tokens = new_tokens
    times = []
    for _ in range(2):  # the first call warms up
        synchronize(device)
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(**rows, generation_config=config).sequences
        synchronize(device)
        times.append(time.perf_counter() - start)
    sampled = (out.shape[1] - rows["input_ids"].shape[1]) * out.shape[0]
    return {
        "rows": out.shape[0],
        "new_tokens": new_tokens,
        "seconds": times[-1],
        "tokens_per_s": sampled / times[-1],
        "peak_gpu_gib": peak_memory_gib(device),
    }


def peak_flops(name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    matches = [key for key in PEAK_BF16 if key in name]
    return PEAK_BF16[max(matches, key=len)] if matches else None


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", choices=["7b", "tiny"], default="7b")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--text-tokens", type=int, default=256)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak, if unknown"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/bench"))
    args = parser.parse_args(argv)

    reason = skip_reason(args.device)
    if reason:
        print(f"bench-gpu skipped: {reason}")
        return None
    import torch

    model, audio_id, frames, audio_tokens, sizes = build_model(
        args.arch, args.device, args.gradient_checkpointing
    )
    batch = make_batch(args.batch, args.text_tokens, audio_id, frames, audio_tokens, sizes, args.device)
    if args.arch == "7b":
        batch["input_features"] = batch["input_features"].to(torch.bfloat16)
    lm_params = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n)
    sft = bench_sft(model, batch, args.device, args.steps)
    rollouts = bench_rollouts(model, batch, args.device, args.group, args.new_tokens)
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    peak = peak_flops(name, args.peak_tflops)
    sft["mfu"] = sft["tokens_per_s"] * 6 * lm_params / peak if peak else None
    result = {
        "date": datetime.now().strftime("%Y-%m-%d"),
        "device": name,
        "arch": args.arch,
        "settings": {k: v for k, v in vars(args).items() if k != "out"}
        | {"audio_tokens_per_clip": audio_tokens},
        "language_model_params": lm_params,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "peak_bf16_flops": peak,
        "sft": sft,
        "rollouts": rollouts,
    }
    out = args.out / datetime.now().strftime("%Y-%m-%d_%H-%M-%S_gpu")
    out.mkdir(parents=True, exist_ok=False)
    (out / "bench_gpu.json").write_text(json.dumps(result, indent=2) + "\n")
    print_result(result)
    print(f"written: {out / 'bench_gpu.json'}")
    return result


def print_result(r: dict) -> None:
    s, g = r["sft"], r["rollouts"]
    mem = lambda x: f"{x:.1f} GiB" if x is not None else "n/a (CPU)"  # noqa: E731
    mfu = f"{100 * s['mfu']:.1f}%" if s["mfu"] is not None else "n/a (peak FLOP/s unknown: --peak-tflops)"
    lm, lora = r["language_model_params"] / 1e9, r["trainable_params"] / 1e6
    print(f"{r['arch']} architecture, random weights, on {r['device']} ({r['date']})")
    print(f"  language model {lm:.2f} B params, LoRA {lora:.1f} M trainable")
    step = f"{s['tokens_per_step']} tokens/step, {s['step_s']:.2f} s/step"
    print(f"  SFT   {s['tokens_per_s']:.0f} tokens/s ({step}), MFU {mfu}, peak {mem(s['peak_gpu_gib'])}")
    rows = f"{g['rows']} rows x {g['new_tokens']} tokens"
    print(f"  GRPO rollouts {g['tokens_per_s']:.0f} sampled tokens/s ({rows}), peak {mem(g['peak_gpu_gib'])}")


if __name__ == "__main__":
    main()

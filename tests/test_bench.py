"""`make bench`'s rollout sections run (small settings) and report what they claim to measure."""

from __future__ import annotations

from ambig.bench import bench_dpo, bench_grpo, bench_msp_labels, bench_strategies


def test_grpo_bench_reports_both_paths_and_the_audio_tower_rows(isolated):
    out = bench_grpo(isolated / "bench", batch_size=2, group_sizes=(2, 3), steps=1, max_new_tokens=4)
    assert set(out["groups"]) == {"G2", "G3"}
    for g, r in zip((2, 3), out["groups"].values(), strict=True):
        assert r["once_ms"] > 0 and r["per_rollout_ms"] > 0
        assert r["ratio"] == r["per_rollout_ms"] / r["once_ms"]
        assert r["once_tower_rows"] == 2  # one per clip for the whole step
        # per rollout: generation, policy and reference passes over every row (read-out fallbacks add more)
        assert r["per_rollout_tower_rows"] >= 3 * 2 * g
        assert r["cached_tower_rows"] == 0  # the warm-up step stored both clips' encodings
        assert r["cache_ratio"] == r["once_ms"] / r["cached_ms"]
    assert out["groups"]["G2"]["growth_vs_first"] == 1.0
    assert out["window_s"] == 4 and 0 < out["audio_tokens_per_clip"] <= 100  # 4 s at most: 100 tokens
    for r in out["groups"].values():  # the head ran on the completion positions only
        assert 0 < r["head_mib"] < r["full_logits_mib"] / 5


def test_dpo_bench_runs_both_feature_paths(isolated):
    out = bench_dpo(isolated / "bench", batch_size=2, rollouts=2, steps=1, max_new_tokens=4)
    assert out["reused_ms"] > 0 and out["recomputed_ms"] > 0 and out["same_losses"] in (True, False)


def test_strategy_bench_reports_throughput_for_every_strategy(isolated):
    out = bench_strategies(isolated / "bench", batch_size=2, steps=1, max_new_tokens=4)
    assert set(out["strategies"]) == {"sft", "dpo", "grpo", "grpoz"}
    for name, r in out["strategies"].items():
        assert r["step_ms"] > 0 and r["samples_per_s"] == 1000 * 2 / r["step_ms"] and r["peak_rss_mib"] > 0
        assert ("rollout_tokens_per_s" in r) == (name != "sft")  # SFT samples nothing


def test_gpu_bench_skips_without_a_gpu_and_runs_its_code_on_the_tiny_model(isolated, capsys):
    import torch

    from ambig.bench_gpu import main, peak_flops

    if not torch.cuda.is_available():
        assert main([]) is None
        assert "bench-gpu skipped: no CUDA GPU visible" in capsys.readouterr().out
    argv = ["--arch", "tiny", "--device", "cpu", "--batch", "2", "--text-tokens", "16", "--group", "2"]
    r = main([*argv, "--new-tokens", "4", "--steps", "1", "--out", str(isolated / "bench")])
    assert r["sft"]["tokens_per_step"] == 2 * (16 + 100)  # 100 audio tokens per 4 s clip of the tiny model
    assert r["sft"]["tokens_per_s"] > 0 and r["rollouts"]["rows"] == 4 and r["rollouts"]["tokens_per_s"] > 0
    assert r["sft"]["mfu"] is None  # no peak FLOP/s known for a CPU
    (written,) = (isolated / "bench").glob("*_gpu/bench_gpu.json")
    assert "GRPO rollouts" in capsys.readouterr().out and written.exists()
    assert peak_flops("NVIDIA H100 80GB HBM3", None) == 989e12
    assert peak_flops("NVIDIA H100 PCIe", None) == 756e12
    assert peak_flops("Some GPU", 100.0) == 100e12 and peak_flops("Some GPU", None) is None


def test_msp_labels_bench_reads_a_generated_release(isolated):
    out = bench_msp_labels(isolated / "bench", n_clips=500)
    assert out["clips"] == 500 and 5 * 500 <= out["annotations"] <= 7 * 500 and out["unparseable"] == 0
    assert out["parse_s"] > 0 and out["soft_labels_s"] > 0

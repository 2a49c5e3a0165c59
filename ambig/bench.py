"""`make bench`: measured figures, printed and written to runs/bench/<timestamp>/bench.json.

    python -m ambig.bench [--fold 1] [--only train]

`features`: log-mel feature extraction in clips/s over the synthetic corpus, cold (empty cache) and
cached, for the tiny model's 4 s window and Qwen2-Audio's 30 s window.

`train`: wall time of the default job (`python -m ambig.train`: SFT, tiny model, synthetic corpus, CPU) and
its test JS against the untrained base model's JS on the same fold (the foundation's target: at most half).

`dpo`: time of one DPO training step (M rollouts per utterance, loss, backward, AdamW) on the tiny model with
each utterance's audio features computed once and reused for its M rollouts, against a pipeline that runs the
feature extractor again for every rollout; same weights, same seeds, so both do the same work otherwise.

`strategies`: per training strategy on the tiny model (batch of 4, <= 48 rollout tokens): training samples/s,
rollout tokens/s (tokens sampled / time in sampling) and the process's peak resident memory so far (CPU; on
a GPU, the strategy's peak allocated GPU memory).

`msp_labels`: reading an MSP-Podcast release's label files at the real corpus's size (200,000 clips, 5-7
annotators each, generated in the release's CSV formats): seconds to parse labels_consensus.csv and
labels_detailed.csv, and to turn every clip's votes into its soft label.

`grpo`: time of one GRPO training step (G rollouts per utterance, rewards, policy and reference passes,
backward, AdamW) on the tiny model for G = 2, 4, 8, with `encode_once` (audio tower once per clip, each
group's prompt prefilled once) and without it (every rollout row runs the prompt and the audio tower itself),
and the rows the audio tower processed per step both ways; and with the run-long audio cache
(`strategy.audio_cache=memory`) on clips it has already encoded, as in every epoch after the first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

CONF = Path(__file__).resolve().parents[1] / "conf"


def timed_run(args: list[str], runs_dir: Path) -> tuple[float, dict]:
    """Wall time and metrics.json of one `python -m ambig.train` run."""
    start = time.perf_counter()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ambig.train",
            f"paths.runs_dir={runs_dir}",
            "logger=none",
            "trainer.enable_progress_bar=false",
            *args,
        ],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"ambig.train {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    (metrics_file,) = sorted(runs_dir.glob("**/metrics.json"), key=lambda p: p.stat().st_mtime)[-1:]
    return seconds, json.loads(metrics_file.read_text())


def bench_train(out: Path, fold: int) -> dict:
    base_s, base = timed_run(["strategy=base", f"fold={fold}"], out / "base")
    sft_s, sft = timed_run([f"fold={fold}"], out / "sft")
    return {
        "fold": fold,
        "base_js": base["js"],
        "sft_js": sft["js"],
        "sft_over_base_js": sft["js"] / base["js"],
        "sft_wall_s": sft_s,
        "base_wall_s": base_s,
        "sft": {k: sft[k] for k in ("js", "bc", "r2", "brier", "kl", "accuracy", "n")},
        "base": {k: base[k] for k in ("js", "bc", "r2", "brier", "kl", "accuracy", "n")},
    }


def bench_features(out: Path, n_clips: int = 300) -> dict:
    from transformers import WhisperFeatureExtractor

    from ambig.data.features import FeatureStore
    from ambig.data.synthetic import SyntheticSpec, load_synthetic

    records = load_synthetic(out / "data", SyntheticSpec(n_utterances=n_clips))
    results = {}
    for window in (4, 30):
        extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=window)
        rates = {}
        for label in ("cold", "cached"):
            store = FeatureStore(extractor, sample_rate=16000, max_seconds=30, cache_dir=out / "features")
            start = time.perf_counter()
            for record in records:
                store.get(record.audio_path)
            rates[label] = len(records) / (time.perf_counter() - start)
        results[f"{window}s"] = {**rates, "speedup": rates["cached"] / rates["cold"], "clips": len(records)}
    return results


def timed_steps(strategy, batch: dict, steps: int, seed: int, before_step=None) -> tuple[float, list[float]]:
    """Mean wall time (ms) of `steps` training steps (loss, backward, AdamW) after one warm-up step, and
    every step's loss. Step k is seeded with seed + k, so two strategies see the same random draws."""
    import torch

    opt = torch.optim.AdamW([p for p in strategy.parameters() if p.requires_grad], lr=strategy.optim["lr"])
    times, losses = [], []
    for step in range(steps + 1):  # step 0 warms up
        torch.manual_seed(seed + step)
        if before_step is not None:
            before_step()
        start = time.perf_counter()
        loss, _ = strategy.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step:
            times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return 1000 * sum(times) / len(times), losses


def bench_dpo(
    out: Path, batch_size: int = 4, rollouts: int = 4, steps: int = 5, max_new_tokens: int = 48
) -> dict:
    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir

    from ambig.data.audio import load_audio
    from ambig.data.features import extract
    from ambig.data.synthetic import SyntheticSpec, load_synthetic
    from ambig.model.inputs import Example
    from ambig.model.load import load_model
    from ambig.rollout import decode, expand
    from ambig.train import build_strategy

    overrides = [
        "strategy=dpo",
        "model.train_audio_tower=false",  # the frozen-tower path (model=tiny trains its tower by default)
        "strategy.audio_cache=none",  # the same batch every step: a run-long store would skip the tower
        f"strategy.num_rollouts={rollouts}",
        f"decoding.max_new_tokens={max_new_tokens}",
    ]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    torch.manual_seed(cfg.seed)
    model, processor = load_model(cfg.model)
    extractor, rate = processor.feature_extractor, cfg.model.sample_rate
    records = load_synthetic(out / "data", SyntheticSpec(n_utterances=batch_size))[:batch_size]
    waves = {r.id: load_audio(r.audio_path, rate, cfg.model.max_audio_seconds) for r in records}
    # The reused path gets each clip's features once, as the FeatureStore hands them to the batch builder.
    examples = [Example(r, features=extract(extractor, waves[r.id], rate)) for r in records]
    builder = cot_builder(cfg, processor)
    batch = builder(examples)
    strategy = build_strategy(cfg, model, builder)
    # Both paths run every rollout row through the model on its own, so only the features differ (the audio
    # tower and prompt sharing of encode_once is the `grpo` section's comparison).
    strategy.encode_once = False
    strategy.on_fit_start()  # train mode, and the reference snapshot (strategy.reference=init)
    start_state = {k: v.clone() for k, v in strategy.state_dict().items()}

    @torch.no_grad()
    def recomputing(batch: dict):
        """Rollouts of a pipeline that extracts the features again from the waveform for every rollout."""
        wide = expand(batch, strategy.num_rollouts)
        feats = [extract(extractor, waves[uid], rate) for uid in wide["ids"]]
        wide.update(builder.audio_format.collate(feats))
        strategy.model.eval()
        try:
            return decode(strategy.model, wide, builder, do_sample=True, **strategy.rollout)
        finally:
            strategy.model.train()

    reused_sampler = strategy.sample_rollouts
    results, losses = {}, {}
    for label, sampler in (("reused", reused_sampler), ("recomputed", recomputing)):
        strategy.load_state_dict(start_state)
        strategy.sample_rollouts = sampler
        results[f"{label}_ms"], losses[label] = timed_steps(strategy, batch, steps, cfg.seed)
    strategy.sample_rollouts = reused_sampler
    same = np.allclose(losses["reused"], losses["recomputed"], rtol=1e-4, atol=1e-5)
    return {
        "batch_size": batch_size,
        "rollouts": rollouts,
        "max_new_tokens": max_new_tokens,
        "steps": steps,
        **results,
        "ratio": results["recomputed_ms"] / results["reused_ms"],
        "same_losses": bool(same),
    }


def cot_builder(cfg, processor):
    """The batch builder of a CoT run of `cfg`'s model over the synthetic classes."""
    from ambig.data.synthetic import CLASSES
    from ambig.model.family import model_family
    from ambig.model.inputs import BatchBuilder

    return BatchBuilder(
        processor,
        CLASSES,
        cot=True,
        ce_answer_word=cfg.loss.ce_answer_word,
        sample_rate=cfg.model.sample_rate,
        family=model_family(cfg.model),
    )


def tiny_setup(out: Path, batch_size: int, overrides: list[str]):
    """(cfg, model, builder, batch): the composed config, its (tiny) model, a CoT batch builder and one batch
    of `batch_size` synthetic clips with their audio."""
    import torch
    from hydra import compose, initialize_config_dir

    from ambig.data.audio import load_audio
    from ambig.data.synthetic import SyntheticSpec, load_synthetic
    from ambig.model.inputs import Example
    from ambig.model.load import load_model

    # These sections measure the frozen-tower paths (encode_once, the audio cache); model=tiny trains its
    # random tower by default, which sets both aside.
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["model.train_audio_tower=false", *overrides])
    torch.manual_seed(cfg.seed)
    model, processor = load_model(cfg.model)
    rate = cfg.model.sample_rate
    records = load_synthetic(out / "data", SyntheticSpec(n_utterances=batch_size))[:batch_size]
    builder = cot_builder(cfg, processor)
    batch = builder(
        [Example(r, load_audio(r.audio_path, rate, cfg.model.max_audio_seconds)) for r in records]
    )
    return cfg, model, builder, batch


def bench_strategies(out: Path, batch_size: int = 4, steps: int = 3, max_new_tokens: int = 48) -> dict:
    import resource

    import torch
    from hydra import compose, initialize_config_dir

    from ambig.train import build_strategy

    base_cfg, model, builder, batch = tiny_setup(
        out, batch_size, [f"decoding.max_new_tokens={max_new_tokens}"]
    )
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    results = {}
    for name in ("sft", "dpo", "grpo", "grpoz"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(
                "train",
                # the same batch every step: per-step work, not a run-long store of the clips' encodings
                overrides=[
                    f"strategy={name}",
                    "model.train_audio_tower=false",
                    "++strategy.audio_cache=none",
                    f"decoding.max_new_tokens={max_new_tokens}",
                ],
            )
        model.load_state_dict(start_state)
        strategy = build_strategy(cfg, model, builder)
        strategy.on_fit_start()
        sampled = {"tokens": 0, "seconds": 0.0}
        policy_rollouts = strategy.policy_rollouts

        def counted(*args, _inner=policy_rollouts, _sampled=sampled, **kwargs):
            start = time.perf_counter()
            decoded = _inner(*args, **kwargs)
            _sampled["seconds"] += time.perf_counter() - start
            _sampled["tokens"] += sum(map(len, decoded.tokens))
            return decoded

        strategy.policy_rollouts = counted
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        ms, _ = timed_steps(strategy, batch, steps, cfg.seed)
        entry = {"step_ms": ms, "samples_per_s": 1000 * batch_size / ms}
        if sampled["tokens"]:
            entry["rollout_tokens_per_s"] = sampled["tokens"] / sampled["seconds"]
        if torch.cuda.is_available():
            entry["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
        entry["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        results[name] = entry
    model.load_state_dict(start_state)
    return {"batch_size": batch_size, "max_new_tokens": max_new_tokens, "steps": steps, "strategies": results}


class HeadMeter:
    """Per training step: the elements of the output head's results in scoring passes (more than one position
    per row), and what the same passes would produce with logits at every position (rows x length x vocab)."""

    def __init__(self, model):
        import ambig.scoring

        self.scoring = ambig.scoring
        self.inner = self.scoring.hidden_states
        self.head = self.scoring.transformers_model(model).lm_head
        self.vocab = (
            self.head.out_features if hasattr(self.head, "out_features") else self.head.weight.shape[0]
        )
        self.kept = self.full = 0

    def __enter__(self):
        def counted(*args, **kwargs):
            hidden = self.inner(*args, **kwargs)
            if hidden.shape[1] > 1:
                self.full += hidden.shape[0] * hidden.shape[1] * self.vocab
            return hidden

        self.scoring.hidden_states = counted
        self.handle = self.head.register_forward_hook(self._hook)
        return self

    def _hook(self, module, args, output):
        if output.dim() == 3 and output.shape[1] > 1:
            self.kept += output.numel()

    def __exit__(self, *exc):
        self.scoring.hidden_states = self.inner
        self.handle.remove()

    def clear(self):
        self.kept = self.full = 0


def bench_grpo(
    out: Path,
    batch_size: int = 4,
    group_sizes: tuple[int, ...] = (2, 4, 8),
    steps: int = 6,
    max_new_tokens: int = 48,
    window: int = 4,
) -> dict:
    """`window`: the audio window in seconds (4: the tiny model's; 30: Qwen2-Audio-7B's, 750 audio tokens per
    clip, the geometry where encoding the audio once and caching it matter)."""
    from ambig.model.inputs import audio_token_id
    from ambig.train import build_strategy

    cfg, model, builder, batch = tiny_setup(
        out,
        batch_size,
        ["strategy=grpo", f"decoding.max_new_tokens={max_new_tokens}", f"model.tiny.chunk_length={window}"],
    )
    start_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    tower_rows: list[int] = []
    tower = (model.get_base_model() if hasattr(model, "get_base_model") else model).model.audio_tower
    hook = tower.register_forward_hook(lambda mod, args, output: tower_rows.append(args[0].shape[0]))
    meter = HeadMeter(model)
    results = {}

    def before_step():
        tower_rows.clear()
        meter.clear()

    try:
        for g in group_sizes:
            # once: tower once per clip per step; per_rollout: once per rollout row and pass; cached: the
            # run-long store (audio_cache=memory), filled by the warm-up step, so a clip seen again (the next
            # epoch, or mu > 1) skips the tower.
            for label, once, cache in (
                ("once", True, "none"),
                ("per_rollout", False, "none"),
                ("cached", True, "memory"),
            ):
                model.load_state_dict(start_state)
                cfg.strategy.num_generations = g
                cfg.strategy.encode_once = once
                cfg.strategy.audio_cache = cache
                strategy = build_strategy(cfg, model, builder)
                strategy.on_fit_start()  # train mode, and the reference snapshot
                with meter:
                    ms, _ = timed_steps(strategy, batch, steps, cfg.seed, before_step=before_step)
                results.setdefault(f"G{g}", {})[f"{label}_ms"] = ms
                results[f"G{g}"][f"{label}_tower_rows"] = sum(tower_rows)
                if label == "once":  # the last step's scoring passes, float32 logits (4 bytes each)
                    results[f"G{g}"]["head_mib"] = 4 * meter.kept / 2**20
                    results[f"G{g}"]["full_logits_mib"] = 4 * meter.full / 2**20
    finally:
        hook.remove()
        model.load_state_dict(start_state)
    for r in results.values():
        r["ratio"] = r["per_rollout_ms"] / r["once_ms"]
        r["cache_ratio"] = r["once_ms"] / r["cached_ms"]
    first = f"G{group_sizes[0]}"
    for g in group_sizes:
        results[f"G{g}"]["growth_vs_first"] = results[f"G{g}"]["once_ms"] / results[first]["once_ms"]
    return {
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "steps": steps,
        "window_s": window,
        # the tower always runs over the whole window; the prompt holds as many audio tokens as the clip lasts
        "audio_tokens_per_clip": float(batch["prompt_ids"].eq(audio_token_id(builder)).sum(1).float().mean()),
        "groups": results,
    }


def bench_msp_labels(out: Path, n_clips: int = 200_000) -> dict:
    from ambig.data.fixtures.msp_podcast import write_release_labels
    from ambig.data.msp_podcast import MSPPodcastCorpus, read_labels

    release = out / "msp_podcast"
    write_release_labels(release / "Labels", n_clips)
    start = time.perf_counter()
    consensus, annotations, unparseable = read_labels(release)
    parsed = time.perf_counter() - start
    corpus = MSPPodcastCorpus(release)
    start = time.perf_counter()
    for votes in annotations.values():
        corpus.soft_votes(votes)
    labelled = time.perf_counter() - start
    size = sum(p.stat().st_size for p in (release / "Labels").iterdir())
    return {
        "clips": len(consensus),
        "annotations": sum(map(len, annotations.values())),
        "unparseable": len(unparseable),
        "label_megabytes": size / 1e6,
        "parse_s": parsed,
        "soft_labels_s": labelled,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fold", type=int, default=1)
    parser.add_argument(
        "--only",
        choices=["features", "msp_labels", "train", "dpo", "grpo", "grpo30", "strategies"],
        default=None,
    )
    args = parser.parse_args()
    out = Path("runs/bench") / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    out.mkdir(parents=True, exist_ok=False)
    results = {}
    if args.only in (None, "features"):
        results["features"] = bench_features(out)
        for window, r in results["features"].items():
            print(
                f"feature extraction, {window} window, {r['clips']} clips: cold {r['cold']:.0f} clips/s, "
                f"cached {r['cached']:.0f} clips/s ({r['speedup']:.1f}x)"
            )
    if args.only in (None, "msp_labels"):
        results["msp_labels"] = r = bench_msp_labels(out)
        print(
            f"MSP-Podcast labels, {r['clips']} clips ({r['annotations']} annotations, "
            f"{r['label_megabytes']:.0f} MB of CSV): parsed in {r['parse_s']:.1f} s, soft labels in "
            f"{r['soft_labels_s']:.1f} s"
        )
    if args.only in (None, "train"):
        results["train"] = bench_train(out, args.fold)
        print_train(results["train"])
    if args.only in (None, "dpo"):
        results["dpo"] = bench_dpo(out)
        print_dpo(results["dpo"])
    if args.only in (None, "strategies"):
        results["strategies"] = bench_strategies(out)
        print_strategies(results["strategies"])
    if args.only in (None, "grpo"):
        results["grpo"] = bench_grpo(out)
        print_grpo(results["grpo"])
    if args.only in (None, "grpo30"):
        results["grpo_30s"] = bench_grpo(out, group_sizes=(8,), steps=3, window=30)
        print_grpo(results["grpo_30s"])
        print_7b_scoring()
    (out / "bench.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out / 'bench.json'}")


def print_dpo(d: dict) -> None:
    print(
        f"DPO step (tiny, batch {d['batch_size']}, {d['rollouts']} rollouts, <= {d['max_new_tokens']} tokens "
        f"each): features reused {d['reused_ms']:.0f} ms, recomputed per rollout "
        f"{d['recomputed_ms']:.0f} ms, ratio {d['ratio']:.2f} (same losses both ways: {d['same_losses']})"
    )


def print_strategies(d: dict) -> None:
    print(
        f"training steps per strategy (tiny, batch {d['batch_size']}, "
        f"<= {d['max_new_tokens']} rollout tokens):"
    )
    for name, r in d["strategies"].items():
        tokens = (
            f"{r['rollout_tokens_per_s']:.0f} rollout tokens/s"
            if "rollout_tokens_per_s" in r
            else "no rollouts"
        )
        memory = (
            f"peak GPU {r['peak_gpu_mib']:.0f} MiB"
            if "peak_gpu_mib" in r
            else f"peak RSS {r['peak_rss_mib']:.0f} MiB"
        )
        print(
            f"  {name:6s} {r['step_ms']:6.0f} ms/step  {r['samples_per_s']:5.1f} samples/s  "
            f"{tokens}  {memory}"
        )


def print_grpo(d: dict) -> None:
    print(
        f"GRPO step (tiny, batch {d['batch_size']}, <= {d['max_new_tokens']} tokens per rollout, "
        f"the audio tower over a {d['window_s']} s window, {d['audio_tokens_per_clip']:.0f} audio tokens per "
        "clip in the prompt), "
        "audio encoded once per clip + prompt once per group vs once per rollout:"
    )
    for g, r in d["groups"].items():
        print(
            f"  {g}: once {r['once_ms']:.0f} ms ({r['once_tower_rows']} audio-tower rows), per rollout "
            f"{r['per_rollout_ms']:.0f} ms ({r['per_rollout_tower_rows']} rows), ratio {r['ratio']:.2f}; "
            f"step time x{r['growth_vs_first']:.2f} of the smallest G"
        )
    print("  scoring memory per step (output-head results of the policy and reference passes, float32):")
    for g, r in d["groups"].items():
        print(
            f"  {g}: {r['head_mib']:.1f} MiB on the completion positions; logits at every position would be "
            f"{r['full_logits_mib']:.1f} MiB (x{r['full_logits_mib'] / max(r['head_mib'], 1e-9):.1f})"
        )
    print("  run-long audio cache (audio_cache=memory, the clips seen before) vs encoding once per step:")
    for g, r in d["groups"].items():
        print(
            f"  {g}: cached {r['cached_ms']:.0f} ms ({r['cached_tower_rows']} audio-tower rows), "
            f"uncached {r['once_ms']:.0f} ms, ratio {r['cache_ratio']:.2f}"
        )


def print_7b_scoring(rows: int = 72, prompt: int = 330, completion: int = 217, vocab: int = 156_032) -> None:
    """What the same slicing means for Qwen2-Audio-7B: one scoring pass over G = 8 x batch 8 + gold rows."""
    full = rows * (prompt + completion) * vocab * 2 / 2**30
    kept = rows * completion * vocab * 2 / 2**30
    print(
        f"  Qwen2-Audio-7B geometry ({rows} rows, ~{prompt} prompt + {completion} completion positions, "
        f"vocab {vocab:,}): bf16 logits per scoring pass {full:.1f} GiB at every position, {kept:.1f} GiB "
        "on the completion positions (arithmetic, not measured); float32 log-softmax in chunks of <= 256 MB"
    )


def print_train(t: dict) -> None:
    print(f"default job (make train), fold {t['fold']}: {t['sft_wall_s']:.0f} s wall")
    print(
        f"  test JS  base (untrained) {t['base_js']:.4f}   SFT {t['sft_js']:.4f}   "
        f"ratio {t['sft_over_base_js']:.2f} (target <= 0.50)"
    )
    for name in ("base", "sft"):
        m = t[name]
        print(
            f"  {name:5s} JS {m['js']:.4f}  BC {m['bc']:.4f}  R2 {m['r2']:.4f}  Brier {m['brier']:.4f}  "
            f"KL {m['kl']:.4f}  Acc {m['accuracy']:.4f}  n={m['n']}"
        )


if __name__ == "__main__":
    main()

"""The run-long store of clip encodings (ambig.model.audio_cache): the tower runs once per clip per run, and
the stored encodings give what a fresh encoding gives."""

from __future__ import annotations

import pytest
import torch

from ambig.model.audio_cache import AudioEncodingCache
from ambig.model.audio_encoding import encode_audio, with_encoded_audio
from ambig.model.load import load_model
from ambig.scoring import full_logits


@pytest.fixture(scope="module")
def model(tiny_cfg_factory):
    torch.manual_seed(0)
    return load_model(tiny_cfg_factory(lora=True))[0].eval()


@pytest.fixture
def tower_rows(model):
    """Rows the audio tower processed since the fixture started."""
    rows: list[int] = []
    tower = model.get_base_model().model.audio_tower
    hook = tower.register_forward_hook(lambda mod, args, out: rows.append(args[0].shape[0]))
    yield rows
    hook.remove()


def test_stored_encodings_equal_fresh_ones_and_the_tower_runs_once(model, builder, examples, tower_rows):
    batch = builder(examples[:4])
    cache = AudioEncodingCache("memory")
    first = cache.encode(model, batch)
    assert sum(tower_rows) == 4 and (cache.encoded, cache.reused) == (4, 0)
    again = cache.encode(model, batch)
    assert sum(tower_rows) == 4 and (cache.encoded, cache.reused) == (4, 4)  # no second tower run
    fresh = encode_audio(model, batch["input_features"], batch["feature_attention_mask"])
    for enc in (first, again):
        assert torch.equal(enc.lengths, fresh.lengths)
        for i, length in enumerate(fresh.lengths.tolist()):  # stored trimmed to each clip's audio tokens
            torch.testing.assert_close(enc.hidden[i, :length], fresh.hidden[i, :length], atol=1e-6, rtol=0)
    with torch.no_grad():
        own = full_logits(model, batch)
        stored = full_logits(model, with_encoded_audio(model, batch, cache))
    torch.testing.assert_close(stored, own, atol=1e-5, rtol=0)


def test_a_batch_mixing_stored_and_new_clips_encodes_only_the_new(model, builder, examples, tower_rows):
    cache = AudioEncodingCache("memory")
    cache.encode(model, builder(examples[:2]))
    tower_rows.clear()
    mixed = builder([examples[3], examples[0], examples[2], examples[1]])
    encoded = cache.encode(model, mixed)
    assert sum(tower_rows) == 2  # clips 3 and 2
    fresh = encode_audio(model, mixed["input_features"], mixed["feature_attention_mask"])
    assert torch.equal(encoded.lengths, fresh.lengths)
    for i, length in enumerate(fresh.lengths.tolist()):
        torch.testing.assert_close(encoded.hidden[i, :length], fresh.hidden[i, :length], atol=1e-5, rtol=0)


def test_the_disk_store_keeps_one_file_per_clip_and_serves_a_new_instance(model, builder, examples, tmp_path):
    batch = builder(examples[:3])
    first = AudioEncodingCache("disk", tmp_path / "audio_cache").encode(model, batch)
    files = sorted((tmp_path / "audio_cache").iterdir())
    assert len(files) == 3 and all(f.suffix == ".pt" for f in files)  # no temporary file left behind
    second_store = AudioEncodingCache("disk", tmp_path / "audio_cache")
    second = second_store.encode(model, batch)
    assert (second_store.encoded, second_store.reused) == (0, 3)
    assert torch.equal(second.hidden, first.hidden) and torch.equal(second.lengths, first.lengths)


def test_grpo_with_the_store_takes_the_same_step_and_skips_the_tower_the_second_time(
    tiny_cfg_factory, builder, examples
):
    from hydra import compose, initialize_config_dir
    from test_train import ROOT

    from ambig.train import build_strategy

    batch = builder(examples[:2])
    losses, rows = {}, {}
    for store in ("none", "memory"):
        torch.manual_seed(0)
        model = load_model(tiny_cfg_factory(lora=True))[0]
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose(
                "train",
                overrides=["strategy=grpo", "strategy.num_generations=2", "decoding.max_new_tokens=4",
                           "decoding.refuse_short_budget=false", f"strategy.audio_cache={store}"],
            )  # fmt: skip
        strategy = build_strategy(cfg, model, builder)
        strategy.on_fit_start()
        counted: list[int] = []
        model.get_base_model().model.audio_tower.register_forward_hook(
            lambda mod, args, out, counted=counted: counted.append(args[0].shape[0])
        )
        step_losses = []
        for step in range(2):
            torch.manual_seed(step)
            step_losses.append(float(strategy.training_loss(batch)[0]))
        losses[store], rows[store] = step_losses, sum(counted)
    assert rows == {"none": 4, "memory": 2}  # 2 clips: once per step, or once per run
    assert losses["memory"] == pytest.approx(losses["none"], abs=1e-5)


def test_unknown_store_is_refused(tiny_cfg_factory, builder, make_sft):
    from ambig.strategies.sft import SFTStrategy

    model = load_model(tiny_cfg_factory(lora=True))[0]
    with pytest.raises(ValueError, match="strategy.audio_cache='ram'"):
        SFTStrategy(model, builder, optim={"lr": 1e-3}, decoding={"max_new_tokens": 4}, loss={}, name="sft",
                    audio_cache="ram")  # fmt: skip

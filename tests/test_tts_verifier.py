"""`tts.verifier_model`: another model checks the trajectories of `tts=verifier` / `verifier_best_of_n`
(ambig.tts.verifier), given each clip in its own family's prompt and audio format, loaded once per process."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from ambig.config import ConfigError
from ambig.data.audio import load_audio
from ambig.data.synthetic import CLASSES
from ambig.tts import verifier as verifier_module
from ambig.tts.strategies import run_tts

ROOT = Path(__file__).resolve().parents[1]
RATE = 16000
OTHER = "tiny_audio_flamingo_3"  # another family: its own chat template, audio inputs and 4 s window


def tts(name: str, n: int, **extra):
    return {"name": name, "n": n, "temperature": 1.0, "top_p": 1.0, "max_new_tokens": 6,
            "likelihood_temperature": 1.0, **extra}  # fmt: skip


@pytest.fixture(scope="module")
def other_verifier(synthetic_records, tmp_path_factory):
    cache = tmp_path_factory.mktemp("verifier-cache")
    return verifier_module.build_verifier(
        {"verifier_model": OTHER},
        paths={"cache_dir": str(cache)},
        records=synthetic_records,
        classes=CLASSES,
        prompt_classes=CLASSES,
        cot=True,
        cache_dir=None,
    )


def p_yes_by_hand(verifier, record, text: str) -> float:
    """The other model's p(yes) for one trajectory, from its processor's own encoding of the clip (one
    unbatched forward): prompt + audio, the trajectory's text in its tokenizer, its verification turn."""
    processor, builder = verifier.builder.processor, verifier.builder
    wav = load_audio(record.audio_path, RATE, float(processor.feature_extractor.chunk_length))
    text_in = builder.prompt_text(record.transcript)
    ref = processor(text=[text_in], audio=[wav], sampling_rate=RATE, return_tensors="pt")
    tail = processor.tokenizer(text, add_special_tokens=False).input_ids + builder.verification_ids()
    ids = torch.cat([ref["input_ids"], torch.tensor([tail])], dim=1)
    with torch.no_grad():
        logits = verifier.model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            input_features=ref["input_features"],
            input_features_mask=ref["input_features_mask"],
        ).logits[0, -1]
    yes = processor.tokenizer("yes", add_special_tokens=False).input_ids[0]
    no = processor.tokenizer("no", add_special_tokens=False).input_ids[0]
    return float(torch.softmax(logits[[yes, no]].float(), dim=-1)[0])


def test_another_family_verifies_the_trajectories_in_its_own_format(
    tiny_lora, builder, examples, other_verifier
):
    from ambig.rollout import sample

    model, _ = tiny_lora
    assert other_verifier.builder.family.name == "audio_flamingo3" != builder.family.name
    assert other_verifier.builder.audio_format.keys == ("input_features", "input_features_mask")
    batch = builder.for_evaluation()(examples[:2])
    torch.manual_seed(11)
    out = run_tts(model, batch, builder, tts("verifier", 3, verifier_model=OTHER), verifier=other_verifier)
    torch.manual_seed(11)  # the same trajectories, sampled again
    again = sample(model, batch, builder, n=3, max_new_tokens=6, temperature=1.0, top_p=1.0)
    q_all = (again.log_q.exp() / again.log_q.exp().sum(-1, keepdim=True)).float()
    for clip in range(2):
        record = examples[clip].record
        p = torch.tensor([p_yes_by_hand(other_verifier, record, again.texts[clip * 3 + j]) for j in range(3)])
        assert ((p > 0) & (p < 1)).all()
        expected = (p[:, None] * q_all[clip * 3 : clip * 3 + 3]).sum(0) / p.sum()
        torch.testing.assert_close(out.q[clip], expected, atol=1e-5, rtol=0)
    # verifier_best_of_n with the other model: the read-out of the trajectory it rates highest
    torch.manual_seed(11)
    best = run_tts(
        model, batch, builder, tts("verifier_best_of_n", 3, verifier_model=OTHER), verifier=other_verifier
    )
    scores = other_verifier.scores(batch["ids"], again.texts, 3)
    for clip in range(2):
        chosen = clip * 3 + int(scores[clip].argmax())
        torch.testing.assert_close(best.q[clip], q_all[chosen], atol=1e-5, rtol=0)
        assert best.texts[clip] == again.texts[chosen]
    assert not any(p.requires_grad for p in other_verifier.model.parameters())  # frozen, as released


def test_verifier_settings_that_cannot_hold_are_refused(tiny_lora, builder, examples, other_verifier):
    model, _ = tiny_lora
    batch = builder.for_evaluation()(examples[:1])
    with pytest.raises(ValueError, match="used by tts=verifier_best_of_n and tts=verifier only"):
        run_tts(model, batch, builder, tts("vote", 2, verifier_model=OTHER), verifier=other_verifier)
    with pytest.raises(ValueError, match="no verifier model was given"):
        run_tts(model, batch, builder, tts("verifier", 2, verifier_model=OTHER))
    with pytest.raises(ValueError, match="a verifier model was also given"):
        run_tts(model, batch, builder, tts("verifier", 2), verifier=other_verifier)
    with pytest.raises(ConfigError, match=r"no conf/model/tiny_nonesuch\.yaml; choose one of .*tiny_omni"):
        verifier_module.verifier_model_cfg("tiny_nonesuch", {"cache_dir": "/tmp"})
    with pytest.raises(ValueError, match="was given no record of the clips"):
        other_verifier.scores(["not-a-clip"], ["Answer: sad"], 1)
    with pytest.raises(ValueError, match="3 trajectories for 1 clips x n = 2"):
        other_verifier.scores([examples[0].record.id], ["a", "b", "c"], 2)


def test_ambig_evaluate_with_another_verifier_loads_it_once(isolated, monkeypatch):
    """`python -m ambig.evaluate model=tiny tts=verifier tts.verifier_model=tiny_audio_flamingo_3`, twice in
    one process (as a sweep's jobs): the verifier is loaded once and recorded in metrics.json."""
    import ambig.model.load as load_module
    from ambig.evaluate import evaluate

    monkeypatch.setattr(verifier_module, "_LOADED", {})
    loads = []
    real = load_module.load_model

    def counting(cfg):
        loads.append(cfg.name)
        return real(cfg)

    monkeypatch.setattr(load_module, "load_model", counting)
    overrides = ["dataset.corpus.n_utterances=30", "trainer.limit_test_batches=1", "eval_batch_size=2"]
    overrides += ["decoding.max_new_tokens=6", "decoding.refuse_short_budget=false", "logger=none"]
    overrides += ["model=tiny", "tts=verifier", "tts.n=2", f"tts.verifier_model={OTHER}"]
    for run in ("first", "second"):
        with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
            cfg = compose("evaluate", overrides=overrides)
        metrics = evaluate(cfg, isolated / run)
        assert metrics["tts"] == {"name": "verifier", "n": 2, "verifier_model": OTHER}
        assert metrics["n"] == 2 and metrics["trajectories"] == 4
        assert np.isfinite(metrics["js"])
    assert loads == [OTHER]  # the verifier once; the evaluated model does not go through this path
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        bad = compose("evaluate", overrides=[*overrides[:-3], "tts=vote", f"tts.verifier_model={OTHER}"])
    with pytest.raises(ConfigError, match="tts.verifier_model='tiny_audio_flamingo_3' is used by"):
        evaluate(bad, isolated / "bad")

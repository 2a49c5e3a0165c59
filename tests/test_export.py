"""`python -m ambig.export`: a trained run as a model directory (merged or adapter) that from_pretrained and
`ambig.predict` load, giving the run's own predictions; an existing directory is never overwritten."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_train import make_cfg

from ambig.config import ConfigError
from ambig.export import EXPORT_FILE, export, main
from ambig.predict import Predictor
from ambig.train import run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("export")
    old = {k: os.environ.get(k) for k in ("AMBIG_CACHE_DIR", "AMBIG_RUNS_DIR")}
    os.environ["AMBIG_CACHE_DIR"], os.environ["AMBIG_RUNS_DIR"] = str(root / "cache"), str(root / "runs")
    try:
        run(make_cfg(), root / "sft")
        yield root
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _q(predictor, path):
    return np.array(list(predictor.predict(path, transcript="Leave me alone.").distribution.values()))


@pytest.mark.parametrize("merge", [True, False])
def test_an_export_predicts_as_the_run_and_loads_with_from_pretrained(trained, synthetic_records, merge):
    out = export(trained / "sft", trained / f"out-{merge}", merge=merge)
    record = json.loads((out / EXPORT_FILE).read_text())
    assert record["merged"] is merge and record["family"] == "qwen2_audio"
    metrics = json.loads((trained / "sft" / "metrics.json").read_text())
    card = (out / "README.md").read_text()
    assert ", ".join(metrics["classes"]) in card and "Answer: <emotion>" in card
    assert f"| js | {metrics['js']:.4f} |" in card and "<|im_start|>system" in card
    if merge:
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        model = Qwen2AudioForConditionalGeneration.from_pretrained(out)
        assert not any("lora_" in n for n, _ in model.named_parameters())
        assert AutoProcessor.from_pretrained(out).tokenizer.get_vocab()
    else:
        assert (out / "adapter_config.json").is_file() and not (out / "model.safetensors").exists()
    clip = synthetic_records[0].audio_path
    np.testing.assert_allclose(
        _q(Predictor(out, max_new_tokens=12), clip), _q(Predictor(trained / "sft", max_new_tokens=12), clip),
        atol=1e-5,
    )  # fmt: skip


def test_an_existing_out_is_never_overwritten(trained, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="exists: exports never overwrite"):
        export(trained / "sft", out)
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".taken-")]  # no temporary left


def test_the_command_line_refuses_bad_arguments_in_one_line(trained, tmp_path, capsys):
    for argv, message in (
        ([f"run={trained / 'sft'}"], "missing out="),
        ([f"run={trained / 'sft'}", f"out={tmp_path / 'x'}", "merge=maybe"], "merge='maybe'"),
        ([f"run={tmp_path}", f"out={tmp_path / 'y'}"], "config.yaml is missing"),
        (["runs=a", "out=b"], "unknown argument 'runs=a'"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error:") and message in err and "\n" not in err

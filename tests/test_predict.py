"""Predictions for users' own audio: the Python API and `python -m ambig.predict` on a trained run."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from test_train import make_cfg

import ambig
from ambig.data.audio import load_audio
from ambig.predict import Predictor, format_prediction, main
from ambig.train import run


@pytest.fixture
def trained(isolated, synthetic_records):
    run(make_cfg(), isolated / "sft")
    folder = isolated / "clips"
    folder.mkdir()
    for record in synthetic_records[:2]:
        shutil.copy(record.audio_path, folder / f"{record.id}.wav")
    (folder / "broken.wav").write_bytes(b"not audio at all")
    return isolated


def test_predictor_gives_a_distribution_and_reasoning_for_a_path_or_an_array(trained, synthetic_records):
    assert ambig.Predictor is Predictor  # the package-level API
    predictor = Predictor(trained / "sft", max_new_tokens=12)
    path = trained / "clips" / f"{synthetic_records[0].id}.wav"
    pred = predictor.predict(path)
    assert list(pred.distribution) == list(predictor.classes)
    assert abs(sum(pred.distribution.values()) - 1) < 1e-5 and isinstance(pred.reasoning, str)
    wave = load_audio(path, 16000, 4.0)
    from_array = predictor.predict(wave, transcript=None)
    np.testing.assert_allclose(
        list(from_array.distribution.values()), list(pred.distribution.values()), atol=1e-5
    )
    with_text = predictor.predict(path, transcript="Stop it right now!")
    assert with_text.distribution != pred.distribution  # the transcript reaches the prompt
    shown = format_prediction(pred).splitlines()
    probs = [float(line.split()[1]) for line in shown[1 : 1 + len(predictor.classes)]]
    assert probs == sorted(probs, reverse=True)  # sorted, with a bar each


def test_cli_predicts_a_folder_and_reports_a_bad_file_without_stopping(trained, capsys):
    out = trained / "preds.jsonl"
    code = main(
        [f"checkpoint={trained / 'sft'}", f"audio={trained / 'clips'}", f"out={out}", "max_new_tokens=8"]
    )
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and sum("error" in r for r in rows) == 1
    assert [r["file"] for r in rows if "error" in r] == ["broken.wav"]
    printed = capsys.readouterr().out
    assert "broken.wav: error:" in printed and "1 file(s) failed" in printed
    before = out.read_text()
    assert main([f"checkpoint={trained / 'sft'}", f"audio={trained / 'clips'}", f"out={out}"]) == 2
    assert out.read_text() == before  # an earlier predictions file is never overwritten


def test_a_directory_that_is_not_a_run_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.yaml is missing"):
        Predictor(tmp_path)

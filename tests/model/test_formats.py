"""What a trajectory answered in words, per model output format (ambig.model.formats)."""

from __future__ import annotations

import pytest

from ambig.model.formats import parse_audio_reasoner, parse_output

CLASSES = ("neutral", "happy", "sad", "angry")

AUDIO_REASONER = (
    "<THINK><PLANNING>Listen to the tone.</PLANNING><CAPTION>A man speaks slowly.</CAPTION>"
    "<REASONING>Low pitch, slow: sad, maybe neutral.</REASONING><SUMMARY>Sad.</SUMMARY></THINK>"
    "<RESPONSE>The speaker sounds Sad, with some neutral delivery.</RESPONSE>"
)


def test_audio_reasoner_answer_is_the_first_class_in_its_response():
    parsed = parse_audio_reasoner(AUDIO_REASONER, CLASSES)
    assert parsed.answer == "sad" and parsed.well_formed
    assert parsed.reasoning.startswith("<PLANNING>Listen") and "RESPONSE" not in parsed.reasoning


def test_audio_reasoner_truncated_or_without_a_class():
    cut = parse_audio_reasoner("<THINK>Low pitch, slow. It could be angry", CLASSES)
    assert cut.answer is None and not cut.well_formed and cut.reasoning.startswith("Low pitch")
    none = parse_audio_reasoner("<THINK>x</THINK><RESPONSE>I cannot tell.</RESPONSE>", CLASSES)
    assert none.answer is None and not none.well_formed
    # a class word inside another word does not count
    assert parse_audio_reasoner("<THINK>x</THINK><RESPONSE>unhappy? sad</RESPONSE>", CLASSES).answer == "sad"


def test_ambig_format_uses_the_cot_parser():
    text = (
        "Keywords: low, slow\nStep 1: Text Analysis - plain words.\nStep 2: Audio Analysis - low pitch.\n"
        "Step 3: Synthesis - mostly sad.\nAnswer: sad"
    )
    parsed = parse_output(text, CLASSES, "ambig")
    assert parsed.answer == "sad" and parsed.well_formed and not parsed.reasoning.endswith("sad")
    assert parse_output("rambling", CLASSES, "ambig").answer is None


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="model.output_format='xml'"):
        parse_output("x", CLASSES, "xml")

"""The structured CoT format: format_cot, parse_cot's format rule, and the chat prompt."""

import pytest

from ambig.data.synthetic import CLASSES
from ambig.model.prompt import ANSWER_PREFIX, AUDIO_SEGMENT, chat_prompt, format_cot, parse_cot

BODY = format_cot(
    "loud, fast, 'hate'",
    "'hate' suggests angry; not ambiguous.",
    "loud volume, fast speed, harsh tone.",
    "mostly angry (80%) with some sad (20%).",
)
KW, STEP1, STEP2, STEP3 = BODY.split("\n")


def text(*lines: str) -> str:
    return "\n".join(lines)


def test_well_formed_trajectory():
    parsed = parse_cot(BODY + "\nAnswer: sad", CLASSES)
    assert parsed.well_formed, parsed.errors
    assert parsed.errors == ()
    assert parsed.answer == "sad"
    assert parsed.sections == {
        "keywords": "loud, fast, 'hate'",
        "text_analysis": "'hate' suggests angry; not ambiguous.",
        "audio_analysis": "loud volume, fast speed, harsh tone.",
        "synthesis": "mostly angry (80%) with some sad (20%).",
    }


def test_answer_punctuation_and_case_are_tolerated():
    parsed = parse_cot(BODY + "\nAnswer: Angry.", CLASSES)
    assert parsed.well_formed, parsed.errors
    assert parsed.answer == "angry"


def test_format_cot_layout():
    assert len(BODY.split("\n")) == 4
    assert KW.startswith("Keywords: ")
    assert STEP1.startswith("Step 1: Text Analysis - ")
    assert STEP2.startswith("Step 2: Audio Analysis - ")
    assert STEP3.startswith("Step 3: Synthesis - ")


@pytest.mark.parametrize(
    ("trajectory", "expected"),
    [
        (text(KW, STEP1, STEP3, "Answer: sad"), "missing section 'Step 2: Audio Analysis -'"),
        (text(KW, STEP2, STEP1, STEP3, "Answer: sad"), "sections out of order"),
        (text(KW, STEP1, STEP1, STEP2, STEP3, "Answer: sad"), "'Step 1: Text Analysis -' appears 2 times"),
        (text(KW, STEP1, STEP2, STEP3), "no 'Answer: <emotion>' line"),
        (text(KW, STEP1, STEP2, STEP3, "Answer: sad", "Answer: angry"), "2 answer lines"),
        (text(KW, STEP1, STEP2, STEP3, "Answer: bored"), "answer 'bored' is not one of"),
        (text(KW, STEP1, STEP2, STEP3, "Answer:"), "is not one of"),
        (text("Keywords:   ", STEP1, STEP2, STEP3, "Answer: sad"), "section 'Keywords:' is empty"),
        (text(KW, STEP1, STEP2, "Step 3: Synthesis -", "Answer: sad"), "Synthesis -' is empty"),
        (text(KW, STEP1, STEP2, "Answer: sad", STEP3), "a section follows the answer line"),
    ],
    ids=[
        "missing",
        "out-of-order",
        "duplicated",
        "no-answer",
        "two-answers",
        "answer-not-a-class",
        "answer-empty",
        "empty-first-section",
        "empty-last-section",
        "section-after-answer",
    ],
)
def test_malformed_trajectories(trajectory, expected):
    parsed = parse_cot(trajectory, CLASSES)
    assert not parsed.well_formed
    assert any(expected in e for e in parsed.errors), parsed.errors


def test_malformed_answer_is_not_returned():
    assert parse_cot(BODY + "\nAnswer: bored", CLASSES).answer is None
    assert parse_cot(BODY + "\nAnswer: sad\nAnswer: angry", CLASSES).answer is None


def test_answer_word_inside_a_section_is_not_an_answer_line():
    parsed = parse_cot(text(KW, STEP1, STEP2, "Step 3: Synthesis - so the Answer: sad"), CLASSES)
    assert "no 'Answer: <emotion>' line" in parsed.errors


@pytest.mark.parametrize(
    "parts",
    [
        ("a\nb", "t", "a", "s"),
        ("k", "t", "line one\nline two", "s"),
        ("", "t", "a", "s"),
        ("k", "   ", "a", "s"),
        ("k", "t", "a", ""),
    ],
)
def test_format_cot_rejects_multiline_or_empty(parts):
    with pytest.raises(ValueError, match="must be one non-empty line"):
        format_cot(*parts)


def test_chat_prompt_contents():
    transcript = "i just lost the report"
    for cot in (True, False):
        prompt = chat_prompt(CLASSES, transcript, cot)
        assert prompt.count("<|AUDIO|>") == 1
        assert prompt.count(AUDIO_SEGMENT) == 1
        for name in CLASSES:
            assert name in prompt
        assert f'"{transcript}"' in prompt
        assert ANSWER_PREFIX in prompt
        assert prompt.startswith("<|im_start|>system\n")
        assert prompt.endswith("<|im_start|>assistant\n")
    with_cot, without = chat_prompt(CLASSES, transcript, True), chat_prompt(CLASSES, transcript, False)
    assert with_cot != without
    assert "Step 1: Text Analysis" in with_cot and "Step 1" not in without


def test_chat_prompt_without_transcript():
    prompt = chat_prompt(CLASSES, None, True)
    assert "Transcript: (none given" in prompt
    assert prompt.count("<|AUDIO|>") == 1

"""Record: soft labels, majority, manifest round trip, and the external-distribution check."""

import math

import pytest

from ambig.data.records import Record, validate_soft_label

CLASSES = ("neutral", "happy", "sad", "angry")


def make(votes, rid="utt1", **kw):
    return Record(
        id=rid, audio_path="/x/a.wav", transcript="hi", votes=tuple(votes), speaker="S1F", session="S1", **kw
    )


def test_soft_label_normalises():
    p = make([1, 3, 0, 0]).soft_label
    assert p == pytest.approx((0.25, 0.75, 0.0, 0.0))
    assert math.isclose(sum(p), 1.0)


@pytest.mark.parametrize(
    "votes", [[0, 0, 0, 0], [1, -1, 2, 0], [1, float("nan"), 0, 0], [float("inf"), 0, 0, 0]]
)
def test_bad_votes_raise_with_id(votes):
    with pytest.raises(ValueError, match="bad_utt"):
        _ = make(votes, rid="bad_utt").soft_label


def test_majority_ties_go_to_first_class():
    assert make([0, 2, 2, 1]).majority(CLASSES) == "happy"
    assert make([0, 1, 2, 1]).majority(CLASSES) == "sad"
    with pytest.raises(ValueError):
        make([1, 2]).majority(CLASSES)


def test_json_round_trip():
    r = make([0.5, 1.5, 0, 2], cot="Keywords: x", extra={"mixture": [0.1, 0.2, 0.3, 0.4], "dur": 2.0})
    back = Record.from_json(r.to_json())
    assert back == r
    assert isinstance(back.extra, dict) and isinstance(back.votes, tuple)
    assert Record.from_json(make([1, 0, 0, 0]).to_json()).cot is None


def test_validate_soft_label():
    assert validate_soft_label([0.2, 0.3, 0.5, 0.0], CLASSES, "u") == (0.2, 0.3, 0.5, 0.0)
    validate_soft_label([0.25 + 5e-5, 0.25, 0.25, 0.25], CLASSES, "u")  # within tolerance
    with pytest.raises(ValueError, match=r"u9.*1\.1"):
        validate_soft_label([0.5, 0.6, 0.0, 0.0], CLASSES, "u9")
    with pytest.raises(ValueError, match="u9.*negative"):
        validate_soft_label([1.2, -0.2, 0.0, 0.0], CLASSES, "u9")
    with pytest.raises(ValueError, match="u9"):
        validate_soft_label([0.5, 0.5], CLASSES, "u9")

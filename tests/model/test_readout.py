"""Class-token read-out on the shipped tiny tokenizer: token choice, collisions, softmax, prefix search."""

import numpy as np
import pytest
import torch

from ambig.model.prompt import ANSWER_PREFIX
from ambig.model.readout import (
    ClassTokenError,
    answer_position,
    class_token_ids,
    find_subsequence,
    prefix_token_ids,
    readout,
    readout_log,
)
from ambig.model.tiny import load_tokenizer

IEMOCAP = ("neutral", "happy", "sad", "angry")
CREMA_D = ("neutral", "happy", "sad", "angry", "disgust", "fear")


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def ids(tok, s):
    return tok(s, add_special_tokens=False).input_ids


@pytest.mark.parametrize("classes", [IEMOCAP, CREMA_D], ids=["iemocap", "crema-d"])
def test_class_token_ids_follow_the_prefix(tok, classes):
    got = class_token_ids(tok, classes)
    head = len(ids(tok, "Answer:"))
    expected = [ids(tok, "Answer: " + name)[head] for name in classes]
    assert got == expected
    assert len(set(got)) == len(classes)
    # The shipped tokenizer has each of these names as one space-prefixed token.
    for name, t in zip(classes, got, strict=True):
        assert tok.decode([t]) == " " + name


def test_prefix_token_ids(tok):
    assert prefix_token_ids(tok) == ids(tok, ANSWER_PREFIX)
    assert tok.decode(prefix_token_ids(tok)) == ANSWER_PREFIX


@pytest.mark.parametrize(("a", "b"), [("sad", "sadness"), ("anger", "angered")])
def test_colliding_first_token_is_refused(tok, a, b):
    head = len(ids(tok, "Answer:"))
    # Precondition: on this tokenizer the two names really share their first BPE piece.
    assert ids(tok, "Answer: " + a)[head] == ids(tok, "Answer: " + b)[head]
    assert ids(tok, "Answer: " + a) != ids(tok, "Answer: " + b)
    with pytest.raises(ClassTokenError) as err:
        class_token_ids(tok, ("neutral", a, "happy", b))
    assert repr(a) in str(err.value) and repr(b) in str(err.value)


def test_class_token_error_is_a_value_error():
    assert issubclass(ClassTokenError, ValueError)


def test_multi_token_name_uses_first_token(tok):
    (got,) = class_token_ids(tok, ("sadness",))
    assert got == class_token_ids(tok, ("sad",))[0]


def test_readout_is_softmax_of_selected_logits():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 50, generator=gen) * 4
    class_ids = [7, 3, 42, 19]
    q = readout(logits, class_ids)
    log_q = readout_log(logits, class_ids)
    sel = logits.numpy()[..., class_ids].astype(np.float64)
    e = np.exp(sel - sel.max(-1, keepdims=True))
    expected = e / e.sum(-1, keepdims=True)
    assert q.shape == (2, 3, 4)
    np.testing.assert_allclose(q.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(log_q.numpy(), np.log(expected), atol=1e-5)
    # Logits of tokens outside the class set do not matter.
    other = logits.clone()
    other[..., 0] += 100.0
    torch.testing.assert_close(readout(other, class_ids), q)


def test_readout_accepts_tensor_ids_and_bfloat16():
    logits = torch.randn(5, 30).to(torch.bfloat16)
    q = readout(logits, torch.tensor([1, 2, 3]))
    assert q.dtype == torch.float32
    torch.testing.assert_close(q.sum(-1), torch.ones(5))


@pytest.mark.parametrize(
    ("tokens", "pattern", "expected"),
    [
        ([1, 2, 3, 4], [2, 3], 1),
        ([2, 3, 9, 2, 3], [2, 3], 0),  # first occurrence
        ([1, 2, 1, 2, 3], [2, 3], 3),  # a partial match before the real one
        ([1, 2, 4, 3], [2, 3], None),
        ([5, 6, 2, 3], [2, 3], 2),  # at the very end
        ([5, 6, 2], [2, 3], None),  # cut off at the end
        ([], [2, 3], None),
        ([2], [2, 3], None),
    ],
)
def test_find_subsequence(tokens, pattern, expected):
    assert find_subsequence(tokens, pattern) == expected


def test_answer_position():
    prefix = [319, 31]
    assert answer_position([5, 319, 31, 7], prefix) == 2
    assert answer_position([5, 6, 319, 31], prefix) == 3  # prefix at the end: index of its last token
    assert answer_position([319, 31], prefix) == 1
    assert answer_position([5, 319, 8, 31], prefix) is None
    assert answer_position([], prefix) is None
    assert answer_position((5, 319, 31), prefix) == 2  # any sequence type

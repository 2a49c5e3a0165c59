"""Combination rules of test-time scaling on hand-made read-outs."""

from __future__ import annotations

import math

import pytest
import torch

from ambig.tts.combine import best_index, best_of, likelihood_weights, mean_readout, vote, weighted

HAPPY, SAD = [0.1, 0.7, 0.2, 0.0], [0.1, 0.2, 0.6, 0.1]  # classes: neutral, happy, sad, angry


def test_vote_of_happy_happy_sad_is_two_thirds_one_third():
    q = torch.tensor([HAPPY, HAPPY, SAD])
    torch.testing.assert_close(vote(q), torch.tensor([0.0, 2 / 3, 1 / 3, 0.0]))


def test_vote_ties_go_to_the_first_class():
    torch.testing.assert_close(vote(torch.tensor([[0.5, 0.5, 0.0, 0.0]])), torch.tensor([1.0, 0.0, 0.0, 0.0]))


def test_self_consistency_is_the_mean_read_out():
    q = torch.tensor([HAPPY, SAD])
    torch.testing.assert_close(mean_readout(q), torch.tensor([0.1, 0.45, 0.4, 0.05]))


def test_likelihood_weights_are_a_softmax_of_length_normalised_logps():
    logps, lengths = torch.tensor([-2.0, -9.0]), torch.tensor([2.0, 3.0])
    w = likelihood_weights(logps, lengths, temperature=0.5)
    a, b = math.exp(-1.0 / 0.5), math.exp(-3.0 / 0.5)
    torch.testing.assert_close(w, torch.tensor([a / (a + b), b / (a + b)]))
    q = torch.tensor([HAPPY, SAD])
    torch.testing.assert_close(weighted(q, w), w[0] * q[0] + w[1] * q[1])
    # one trajectory: the weights are [1], so weighted best-of-1 is that trajectory's read-out
    torch.testing.assert_close(weighted(q[:1], likelihood_weights(logps[:1], lengths[:1], 1.0)), q[0])


def test_best_of_is_the_read_out_of_the_highest_score_ties_to_the_first():
    q = torch.tensor([HAPPY, SAD, HAPPY])
    torch.testing.assert_close(best_of(q, torch.tensor([0.2, 0.9, 0.1])), torch.tensor(SAD))
    assert best_index(torch.tensor([-1.0, -0.5, -0.5])) == 1
    torch.testing.assert_close(best_of(q[:1], torch.tensor([-3.0])), torch.tensor(HAPPY))


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="without NaN"):
        best_of(torch.tensor([HAPPY, SAD]), torch.tensor([0.5, float("nan")]))
    with pytest.raises(ValueError, match="need 2 scores"):
        best_of(torch.tensor([HAPPY, SAD]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="temperature"):
        likelihood_weights(torch.zeros(2), torch.ones(2), 0.0)
    with pytest.raises(ValueError, match="non-negative weights"):
        weighted(torch.tensor([HAPPY, SAD]), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match=r"\(N >= 1, K\)"):
        vote(torch.zeros(0, 4))

"""Sequence KL estimators and perplexity: hand values and Monte Carlo unbiasedness."""

import math

import numpy as np
import pytest
import torch

from alignlab.errors import AlignlabError
from alignlab.eval.kl import perplexity, sequence_kl


def test_hand_example_with_padding():
    """Two responses. Row 0: policy (ln .5, ln .5), ref (ln .25, ln .5) -> L = ln 2, token k3 =
    (0.5 - 1 + ln 2) + 0 = 0.193147. Row 1: one token, policy ln .5, ref ln 1 -> L = -ln 2,
    k3 = (2 - 1) - ln 2 = 0.306853; its padded second position holds -inf (ignored).
    k1 = 0, k1 se = std(ln2, -ln2) / sqrt(2) = ln2 * sqrt(2) / sqrt(2) = ln 2.
    k3 = (0.193147 + 0.306853) / 2 = 0.25; sequence-level k3 equals it here (one non-zero token per row).
    k1 per token = 0 / 3 tokens."""
    half, quarter = math.log(0.5), math.log(0.25)
    policy = torch.tensor([[half, half], [half, -math.inf]])
    ref = torch.tensor([[quarter, half], [0.0, -math.inf]])
    mask = torch.tensor([[1, 1], [1, 0]])
    est = sequence_kl(policy, ref, mask)
    assert est.k1 == pytest.approx(0.0, abs=1e-7)
    assert est.k1_se == pytest.approx(math.log(2), abs=1e-6)
    assert est.k3 == pytest.approx(0.25, abs=1e-6)
    assert (est.n, est.tokens) == (2, 3)
    assert sequence_kl(policy, ref, mask, k3_per="sequence").k3 == pytest.approx(0.25, abs=1e-6)
    with pytest.raises(AlignlabError):
        sequence_kl(policy, ref, mask, k3_per="tokens")
    with pytest.raises(AlignlabError):
        sequence_kl(policy, ref[:, :1])


def test_unbiased_on_markov_chain_monte_carlo():
    """Three-token responses; each token drawn i.i.d. from pi = (0.6, 0.3, 0.1) under the policy,
    ref = (0.3, 0.3, 0.4). True sequence KL = 3 * KL(pi || ref) = 3 * (0.6 ln 2 + 0.1 ln 0.25) = 0.831777.
    With 40k samples k1 and k3 agree with it within 3 standard errors, and k3's se is the smaller."""
    pi = np.array([0.6, 0.3, 0.1])
    ref = np.array([0.3, 0.3, 0.4])
    true_kl = 3 * float((pi * np.log(pi / ref)).sum())
    assert true_kl == pytest.approx(3 * (0.6 * math.log(2) + 0.1 * math.log(0.25)))
    x = np.random.default_rng(0).choice(3, size=(40_000, 3), p=pi)
    est = sequence_kl(np.log(pi)[x], np.log(ref)[x])
    assert abs(est.k1 - true_kl) < 3 * est.k1_se
    assert abs(est.k3 - true_kl) < 3 * est.k3_se
    assert est.k3_se < est.k1_se
    assert est.k1_per_token == pytest.approx(true_kl / 3, abs=0.01)


def test_perplexity():
    """Tokens with probabilities (0.5, 0.25 | 0.125, pad): mean NLL = (ln2 + 2ln2 + 3ln2) / 3 = 2 ln 2,
    perplexity = 4. Uniform over 10 -> 10."""
    logps = torch.log(torch.tensor([[0.5, 0.25], [0.125, 0.9]]))
    assert perplexity(logps, torch.tensor([[1, 1], [1, 0]])) == pytest.approx(4.0)
    assert perplexity([math.log(0.1)] * 5) == pytest.approx(10.0)
    with pytest.raises(AlignlabError):
        perplexity(logps, torch.zeros(2, 2))
    # a mask of another shape broadcast over the log-probs: 8.0 (4 selected tokens' sum over 2) instead of an error
    with pytest.raises(AlignlabError, match="mask shape"):
        perplexity(torch.log(torch.full((2, 3), 0.5)), torch.tensor([1, 1, 0]))


@pytest.mark.parametrize("logps, mask", [([], None), (torch.zeros(0, 4), None), (torch.zeros(2, 3), torch.zeros(2, 3))])
def test_no_response_tokens_is_an_error(logps, mask):
    # [] gave n=1 and KL exactly 0; a [0, T] batch NaN with n=0
    with pytest.raises(AlignlabError, match="no response tokens"):
        sequence_kl(logps, logps, mask)

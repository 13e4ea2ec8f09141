"""Hand-computed tests for pass@k (Chen et al. 2021) and maj@k."""

import itertools
import math

import pytest

from alignlab.errors import AlignlabError
from alignlab.eval.passk import maj_at_k, mean_and_stderr, pass_at_k


def test_pass_at_k_hand_values():
    """n = 5, c = 2: pass@1 = c/n = 0.4; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7;
    pass@4 = 1 - C(3,4)/C(5,4) = 1 (n - c < k); c = 0 -> 0."""
    assert pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert pass_at_k(5, 2, 4) == 1.0
    assert pass_at_k(5, 0, 3) == 0.0
    assert pass_at_k(200, 13, 100) == pytest.approx(1 - math.comb(187, 100) / math.comb(200, 100))


def test_pass_at_k_is_the_subset_average():
    """Unbiased: equals the fraction of all k-subsets of the n samples containing a correct one."""
    samples = [True, False, False, True, False, False]
    for k in range(1, 7):
        subsets = list(itertools.combinations(samples, k))
        exact = sum(any(s) for s in subsets) / len(subsets)
        assert pass_at_k(6, 2, k) == pytest.approx(exact)


def test_pass_at_k_rejects_bad_counts():
    for n, c, k in ((3, 4, 1), (3, 1, 4), (3, 1, 0)):
        with pytest.raises(AlignlabError):
            pass_at_k(n, c, k)


def test_maj_at_k_votes_ties_and_missing_answers():
    """answers (72, 70, 72, None, 70, 70), right answer 72.
    maj@3: 72 twice vs 70 once -> 72 -> 1. maj@6: 70 three times vs 72 twice -> 0.
    maj@2: one each, tie -> first seen (72) -> 1. All None -> 0."""
    answers = [72.0, 70.0, 72.0, None, 70.0, 70.0]
    correct = [a == 72.0 for a in answers]
    assert maj_at_k(answers, correct, 3) == 1.0
    assert maj_at_k(answers, correct, 6) == 0.0
    assert maj_at_k(answers, correct, 2) == 1.0
    assert maj_at_k([None, None], [False, False], 2) == 0.0
    with pytest.raises(AlignlabError):
        maj_at_k(answers, correct, 7)


def test_mean_and_stderr():
    """values (1, 0, 1, 0): mean 0.5, sample var = 4 * 0.25 / 3 = 1/3, se = sqrt(1/12)."""
    mean, se = mean_and_stderr([1.0, 0.0, 1.0, 0.0])
    assert mean == 0.5 and se == pytest.approx(math.sqrt(1 / 12))
    assert mean_and_stderr([0.3]) == (0.3, 0.0)

"""Win rate: counting by hand, and bootstrap interval coverage in a seeded simulation."""

import numpy as np
import pytest

from alignlab.errors import AlignlabError
from alignlab.eval.winrate import win_rate


def test_counts_ties_as_half():
    """Outcomes (1, 1, 0.5, 0, 0.5, 1): wins 3, ties 2, losses 1; rate = (3 + 0.5 * 2) / 6 = 2/3.
    The interval contains the rate, lies within [0, 1], and is reproducible under the seed."""
    r = win_rate([1, 1, 0.5, 0, 0.5, 1], n_boot=500, seed=3)
    assert (r.wins, r.ties, r.losses, r.n) == (3, 2, 1, 6)
    assert r.rate == pytest.approx(2 / 3)
    assert 0.0 <= r.low <= r.rate <= r.high <= 1.0
    assert r == win_rate([1, 1, 0.5, 0, 0.5, 1], n_boot=500, seed=3)
    assert r.to_dict()["rate"] == pytest.approx(2 / 3)


def test_probabilities_and_degenerate_cases():
    """Soft outcomes (0.9, 0.2, 0.6): rate = 1.7 / 3; 0.9 and 0.6 count as wins, 0.2 as a loss.
    All wins: rate 1 and the bootstrap interval collapses to [1, 1]."""
    r = win_rate(np.array([0.9, 0.2, 0.6]), n_boot=200)
    assert r.rate == pytest.approx(1.7 / 3)
    assert (r.wins, r.ties, r.losses) == (2, 0, 1)
    assert (win_rate([1, 1, 1]).low, win_rate([1, 1, 1]).high) == (1.0, 1.0)


@pytest.mark.parametrize("bad", [[], [1.2], [0.5, float("nan")], [-0.1]])
def test_rejects_bad_outcomes(bad):
    with pytest.raises(AlignlabError):
        win_rate(bad)


def test_bootstrap_interval_coverage_simulation():
    """200 simulated evaluations of 150 prompts each: A wins with p=0.5, ties with 0.2, loses with 0.3,
    so the true rate is 0.5 + 0.1 = 0.6. The 95% percentile-bootstrap interval should cover 0.6 in
    about 95% of experiments; we accept 90-99% (binomial sd of the coverage over 200 runs is ~1.5%)."""
    rng = np.random.default_rng(1234)
    true_rate = 0.6
    covered = 0
    widths = []
    for k in range(200):
        outcomes = rng.choice([1.0, 0.5, 0.0], size=150, p=[0.5, 0.2, 0.3])
        r = win_rate(outcomes, n_boot=400, confidence=0.95, seed=k)
        covered += r.low <= true_rate <= r.high
        widths.append(r.high - r.low)
    assert 0.90 <= covered / 200 <= 0.99
    # sd of one outcome = sqrt(0.5 + 0.05 - 0.36) = 0.4359; 95% width ~ 2 * 1.96 * 0.4359 / sqrt(150) = 0.1395.
    assert np.mean(widths) == pytest.approx(0.1395, abs=0.01)

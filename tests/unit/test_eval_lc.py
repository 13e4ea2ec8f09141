"""Length-controlled win rate: GLM fits worked out by hand, and a simulated length-biased judge."""

import math

import numpy as np
import pytest

from alignlab.errors import AlignlabError
from alignlab.eval.lc import fit_length_glm, length_controlled_win_rate


def test_equal_length_differences_give_the_raw_rate():
    """Every pair differs by the same 7 characters: sd(d) = 0, the length feature is 0, phi is fixed at 0 and
    the MLE of theta is logit(mean outcome), so LC = raw = (1 + 1 + 1 + 0) / 4 = 0.75."""
    r = length_controlled_win_rate([1, 1, 1, 0], [10, 12, 9, 20], [3, 5, 2, 13], l2=0.0, n_boot=50)
    assert r.rate == pytest.approx(0.75, abs=1e-9)
    assert r.phi == 0.0 and r.length_sd == 0.0 and r.mean_length_diff == 7.0
    assert r.theta == pytest.approx(math.log(3), abs=1e-8)


def test_two_length_groups_by_hand():
    """10 prompts where A is 10 characters longer (outcomes: 9 wins, 1 loss; p+ = 0.9) and 10 where A is 10
    shorter (5 wins, 5 losses; p- = 0.5). d = +-10, mean 0, population sd 10, so x = tanh(+-1) = +-t with
    t = tanh(1). Two groups and two parameters: the MLE fits each group exactly,
        sigmoid(theta + phi t) = 0.9,  sigmoid(theta - phi t) = 0.5
    => theta = (logit 0.9 + logit 0.5) / 2 = ln(9) / 2 = ln 3, phi = ln(9) / (2 t).
    LC = sigmoid(ln 3) = 3 / 4 = 0.75, while the raw rate is 14 / 20 = 0.7."""
    y = [1] * 9 + [0] + [1] * 5 + [0] * 5
    len_a = [110] * 10 + [90] * 10
    len_b = [100] * 20
    r = length_controlled_win_rate(y, len_a, len_b, l2=0.0, n_boot=200, seed=1)
    assert r.rate == pytest.approx(0.75, abs=1e-8)
    assert r.theta == pytest.approx(math.log(3), abs=1e-8)
    assert r.phi == pytest.approx(math.log(9) / (2 * math.tanh(1.0)), abs=1e-7)
    assert r.length_sd == pytest.approx(10.0) and r.n == 20
    assert r.low <= r.rate <= r.high


def test_soft_outcomes_are_bernoulli_targets():
    """Soft outcomes 0.8 on every prompt with constant length difference: the MLE of the soft cross-entropy
    is sigmoid(theta) = 0.8 (the score equation sum(y - p) = 0), like hard outcomes with 80% wins."""
    r = length_controlled_win_rate([0.8] * 5, [1, 2, 3, 4, 5], [1, 2, 3, 4, 5], l2=0.0, n_boot=20)
    assert r.rate == pytest.approx(0.8, abs=1e-9)


def test_penalty_keeps_all_wins_finite():
    """All wins separate perfectly: without a penalty theta runs off to infinity; with l2 > 0 the penalised
    score equation n (1 - p) = l2 theta has a finite root, so the rate is just below 1."""
    theta, phi = fit_length_glm(np.ones(6), np.array([-0.5, 0.1, 0.3, 0.9, -0.2, 0.4]), l2=1e-3)
    assert math.isfinite(theta) and math.isfinite(phi) and theta > 5
    r = length_controlled_win_rate([1] * 6, [3, 5, 9, 1, 4, 6], [2] * 6, n_boot=20)
    assert 0.99 < r.rate < 1.0 and r.high <= 1.0


def test_length_biased_judge_is_debiased():
    """Simulation: A and B are equally good (theta = 0) but the judge's log-odds rise by 2 * tanh(d / sd) and A
    is usually longer. The raw rate is well above 0.5; the LC rate recovers ~0.5 and phi ~2."""
    rng = np.random.default_rng(0)
    n = 4000
    d = rng.normal(60.0, 100.0, size=n)
    x = np.tanh(d / d.std())
    y = (rng.random(n) < 1 / (1 + np.exp(-2.0 * x))).astype(float)
    r = length_controlled_win_rate(y, 200 + d, np.full(n, 200.0), n_boot=50)
    assert y.mean() > 0.6
    assert abs(r.rate - 0.5) < 0.03 and abs(r.phi - 2.0) < 0.2


@pytest.mark.parametrize("args", [([], [], []), ([1, 0], [1], [1, 2]), ([1.5], [1], [1])])
def test_rejects_bad_input(args):
    with pytest.raises(AlignlabError):
        length_controlled_win_rate(*args, n_boot=5)


def test_lc_for_comparison_skips_undecided_and_report_shows_both(tmp_path):
    """Undecided prompts (None) are left out of the LC fit as of the raw rate; the display rows put the LC rate
    beside the raw one, and the HTML report's table and plot carry both."""
    from alignlab.eval.lc import lc_for_comparison, with_lc_rows
    from alignlab.eval.report import write_report

    lc = lc_for_comparison([1, None, 1, 0], ["aaa", "b", "cc", "d"], ["x", "y", "z", "w"], n_boot=20)
    assert lc.n == 3 and lc.mean_length_diff == pytest.approx((2 + 1 + 0) / 3)
    assert lc_for_comparison([None], ["a"], ["b"]) is None
    rec = {"evaluation": "wr", "kind": "win_rate", "model": "m", "metric": "win_rate", "value": 0.6, "low": 0.4,
           "high": 0.8, "n": 3, "details": {"lc_win_rate": lc.to_dict()}}
    rows = with_lc_rows([rec])
    assert [r["metric"] for r in rows] == ["win_rate", "lc_win_rate"] and rows[1]["value"] == lc.rate
    page = write_report({"config": {}, "results": [rec], "seconds": 1.0}, tmp_path).read_text()
    assert "lc_win_rate" in page and (tmp_path / "plots" / "wr.png").exists()


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_bad_lengths_are_refused(bad):
    # one NaN length made the length SD NaN, the feature all zeros: the raw win rate came back as LC
    with pytest.raises(AlignlabError, match=r"len_b\[2\] is"):
        length_controlled_win_rate([1, 0, 1, 1], [10, 20, 30, 40], [12, 18, bad, 35], n_boot=1)

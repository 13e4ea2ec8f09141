"""Bradley-Terry / Elo ratings: hand-solved small cases and recovery of simulated strengths."""

import math

import numpy as np
import pytest

from alignlab.errors import AlignlabError
from alignlab.eval.ratings import battle_score, bradley_terry_ratings, expected_score, fit_bradley_terry


def test_two_players_with_ties_hand_solved():
    """A vs B: 2 wins, 2 ties, 0 losses -> A scores 3 of 4. The MLE solves sigmoid(d) = 3/4, d = ln 3,
    an Elo gap of 400 * log10(3) = 190.849. Mean anchored at 1000: A = 1095.42, B = 904.58;
    anchored on B: A = 1190.85, B = 1000."""
    battles = [("A", "B", 1.0), ("B", "A", "model_b"), ("A", "B", "tie"), ("B", "A", 0.5)]
    gap = 400 * math.log10(3)
    fit = fit_bradley_terry(battles)
    assert fit["A"] == pytest.approx(1000 + gap / 2, abs=0.01)
    assert fit["B"] == pytest.approx(1000 - gap / 2, abs=0.01)
    anchored = fit_bradley_terry(battles, anchor="B")
    assert anchored == pytest.approx({"A": 1000 + gap, "B": 1000.0}, abs=0.01)
    assert expected_score(anchored["A"], anchored["B"]) == pytest.approx(0.75, abs=1e-4)


def test_chain_is_transitive():
    """A beats B 2 of 3, B beats C 2 of 3, A and C never meet: each gap is ln 2 in theta,
    400 * log10(2) = 120.412 Elo, so A - C = 240.82."""
    battles = [("A", "B", 1), ("A", "B", 1), ("A", "B", 0), ("B", "C", 1), ("C", "B", 1), ("B", "C", 1)]
    fit = fit_bradley_terry(battles)
    step = 400 * math.log10(2)
    assert fit["A"] - fit["B"] == pytest.approx(step, abs=0.01)
    assert fit["B"] - fit["C"] == pytest.approx(step, abs=0.01)
    assert sum(fit.values()) / 3 == pytest.approx(1000.0)


def test_recovers_simulated_strengths_and_gaps():
    """Five players with true Elo (800, 950, 1000, 1100, 1250) (mean 1020); 4000 battles between random
    pairs, A wins with the Elo probability. Refit (mean anchored at 1020): order exact, every rating
    within 40 points of the truth, and the 95% bootstrap intervals cover at least 4 of 5 true ratings."""
    rng = np.random.default_rng(7)
    names = ["p800", "p950", "p1000", "p1100", "p1250"]
    truth = dict(zip(names, [800.0, 950.0, 1000.0, 1100.0, 1250.0]))
    battles = []
    for _ in range(4000):
        a, b = rng.choice(5, size=2, replace=False)
        p = expected_score(truth[names[a]], truth[names[b]])
        battles.append((names[a], names[b], float(rng.random() < p)))
    table = bradley_terry_ratings(battles, n_boot=100, base=1020.0, seed=0)
    assert table.order == names[::-1]
    covered = 0
    for name, true in truth.items():
        r = table[name]
        assert r.rating == pytest.approx(true, abs=40)
        assert r.low <= r.rating <= r.high
        covered += r.low <= true <= r.high
    assert covered >= 4
    assert table.expected_score("p1250", "p800") == pytest.approx(expected_score(1250, 800), abs=0.03)
    assert sum(r.battles for r in table.ratings) == 8000


def test_unbeaten_model_stays_finite_and_table_fields():
    """A never loses: the ridge keeps its rating finite and on top; scores are per-model mean scores."""
    battles = [("A", "B", "a"), ("A", "C", "a"), ("B", "C", "tie"), ("C", "B", 1.0)]
    table = bradley_terry_ratings(battles, n_boot=20)
    assert table.order[0] == "A" and math.isfinite(table["A"].rating)
    assert table["A"].score == 1.0 and table["A"].battles == 2
    assert table["C"].score == pytest.approx((0 + 0.5 + 1.0) / 3)
    assert table.to_dict()["ratings"][0]["model"] == "A"


def test_bad_battles_raise():
    assert battle_score("Tie (bothbad)") == 0.5
    with pytest.raises(AlignlabError, match="battle 1"):
        fit_bradley_terry([("A", "B", 1), ("A", "B", "draw")])
    with pytest.raises(AlignlabError):
        fit_bradley_terry([("A", "A", 1)])
    with pytest.raises(AlignlabError):
        fit_bradley_terry([("A", "B", 1)], anchor="Z")


def test_chatbot_arena_records():
    """Records {"model_a", "model_b", "winner"} fit the same as tuples; A scores 4 of 6 -> gap 120.41."""
    records = [
        {"model_a": "A", "model_b": "B", "winner": "model_a"},
        {"model_a": "A", "model_b": "B", "winner": "model_a"},
        {"model_a": "B", "model_b": "A", "winner": "model_a"},
        {"model_a": "B", "model_b": "A", "winner": "model_b"},
        {"model_a": "A", "model_b": "B", "winner": "tie"},
        {"model_a": "A", "model_b": "B", "winner": "tie (bothbad)"},
    ]
    fit = fit_bradley_terry(records)
    # A's score: 1 + 1 + 0 + 1 + 0.5 + 0.5 = 4 of 6 -> sigmoid(d) = 2/3, d = ln 2.
    assert fit["A"] - fit["B"] == pytest.approx(400 * math.log10(2), abs=0.01)
    with pytest.raises(AlignlabError, match="winner"):
        fit_bradley_terry([{"model_a": "A", "model_b": "B"}])


def test_a_model_absent_from_a_bootstrap_replicate_is_left_out_of_it():
    # A and B split 18 games; C lost its only 2 games to A and is absent from ~1 replicate in 8. The ridge pinned
    # an absent C at theta 0, so its upper bound was exactly 1000 (above A and B), and the made-up value moved
    # the centring of A's and B's replicates too
    battles = [("A", "B", 1.0)] * 9 + [("A", "B", 0.0)] * 9 + [("A", "C", 1.0)] * 2
    table = {r.model: r for r in bradley_terry_ratings(battles, n_boot=2000, seed=0).ratings}
    c, a = table["C"], table["A"]
    assert c.low < c.rating < c.high < a.low < a.rating < a.high
    assert c.high - c.low < 400 and a.high - a.low < 400
    anchored = {r.model: r for r in bradley_terry_ratings(battles, n_boot=500, seed=0, anchor="A").ratings}
    assert anchored["A"].low == anchored["A"].high == 1000.0
    assert anchored["C"].high < 1000.0

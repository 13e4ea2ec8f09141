"""Hand-computed tests for batch shaping: DAPO overlong punishment, Kimi length reward, dynamic sampling,
truncation mask."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.errors import AlignlabError
from alignlab.losses.shaping import (
    GroupAccumulator,
    dynamic_sampling_keep,
    kimi_length_penalty,
    overlong_penalty,
    truncation_mask,
)


def test_overlong_penalty_three_regions():
    """L_max = 100, L_cache = 20: soft region starts at 80. |y| = 50 -> 0; 80 -> 0; 90 -> (80-90)/20 = -0.5;
    100 -> -1; 120 -> -1. penalty 0.5 halves everything."""
    out = overlong_penalty([50, 80, 90, 100, 120], max_tokens=100, buffer=20, penalty=1.0)
    assert torch.allclose(out, torch.tensor([0.0, 0.0, -0.5, -1.0, -1.0], dtype=torch.float64))
    half = overlong_penalty(torch.tensor([90, 120]), 100, 20, 0.5)
    assert torch.allclose(half, torch.tensor([-0.25, -0.5], dtype=torch.float64))
    with pytest.raises(AlignlabError, match="buffer"):
        overlong_penalty([1], 10, 10)


def test_kimi_length_penalty_hand_values():
    """Group 1 (k=3): lengths (10, 20, 30), min 10, max 30: lambda = (0.5, 0, -0.5).
    correct (T, F, F) -> (0.5, min(0, 0) = 0, -0.5).
    Group 2: lengths (5, 5, 5): all equal -> 0 for each, right or wrong."""
    out = kimi_length_penalty([True, False, False, True, False, True], [10, 20, 30, 5, 5, 5], k=3)
    assert torch.allclose(out, torch.tensor([0.5, 0.0, -0.5, 0.0, 0.0, 0.0], dtype=torch.float64))
    # A short wrong answer is not rewarded for its brevity: lengths (10, 30), lambda = (0.5, -0.5).
    wrong = kimi_length_penalty(torch.tensor([False, True]), torch.tensor([10, 30]), k=2)
    assert torch.allclose(wrong, torch.tensor([0.0, -0.5], dtype=torch.float64))
    with pytest.raises(AlignlabError, match="groups of k=4"):
        kimi_length_penalty([True] * 6, [1] * 6, k=4)


def test_dynamic_sampling_keep_marks_groups_with_spread():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.5])
    assert dynamic_sampling_keep(rewards, 3).tolist() == [True, False, True]


def test_group_accumulator_fills_across_rounds_and_counts_drops():
    """Target 3 groups, k = 2. Round 1: groups a (spread), b (flat), c (flat) -> keep a.
    Round 2: d (spread), e (flat) -> keep d. Round 3: f, g (both spread) -> full, g is surplus."""
    acc = GroupAccumulator(target_groups=3, k=2, max_resample_rounds=5)
    acc.add([1, 0, 1, 1, 0, 0], ["a", "b", "c"])
    assert acc.needs_more()
    acc.add([0, 1, 1, 1], ["d", "e"])
    acc.add([0.2, 0.1, 1, 0], ["f", "g"])
    assert not acc.needs_more()
    kept, stats = acc.take()
    assert kept == ["a", "d", "f"]
    assert stats["dynamic_sampling/dropped_groups"] == 3.0
    assert stats["dynamic_sampling/surplus_groups"] == 1.0
    assert stats["dynamic_sampling/rounds"] == 3.0 and stats["dynamic_sampling/short_groups"] == 0.0
    with pytest.raises(AlignlabError):
        acc.add([0, 1], ["h"])


def test_group_accumulator_is_bounded_by_max_resample_rounds():
    """Only flat groups ever arrive: 1 regular round + 2 resample rounds, then it stops, returning nothing."""
    acc = GroupAccumulator(target_groups=2, k=2, max_resample_rounds=2)
    rounds = 0
    while acc.needs_more():
        acc.add([1, 1, 0, 0], ["x", "y"])
        rounds += 1
    kept, stats = acc.take()
    assert rounds == 3 and kept == []
    assert stats["dynamic_sampling/short_groups"] == 2.0 and stats["dynamic_sampling/dropped_groups"] == 6.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.sampled_from([0.0, 0.5, 1.0]), min_size=6, max_size=6), min_size=1, max_size=6),
       st.integers(1, 4), st.integers(0, 3))
def test_group_accumulator_never_returns_a_zero_spread_group(rounds, target, max_rounds):
    """Whatever rewards arrive (3 groups of k=2 per round), no returned group has all-equal rewards."""
    acc = GroupAccumulator(target_groups=target, k=2, max_resample_rounds=max_rounds)
    groups = {}
    for r, rewards in enumerate(rounds):
        if not acc.needs_more():
            break
        items = [(r, j) for j in range(3)]
        groups.update({item: rewards[2 * j:2 * j + 2] for j, item in enumerate(items)})
        acc.add(rewards, items)
    kept, _ = acc.take()
    assert len(kept) <= target
    assert all(max(groups[i]) != min(groups[i]) for i in kept)


def test_truncation_mask():
    assert truncation_mask(["eos", "length", "stop"]).tolist() == [1.0, 0.0, 1.0]
    with pytest.raises(AlignlabError, match="sample 1"):
        truncation_mask(["eos", "timeout"])

"""Hand-computed tests for the advantage estimators (GAE, GRPO, Dr. GRPO, RLOO, REINFORCE++)."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.errors import AlignlabError
from alignlab.losses.advantages import (
    discounted_returns,
    dr_grpo_advantages,
    gae,
    grpo_advantages,
    reinforce_pp_advantages,
    reinforce_pp_baseline_advantages,
    rloo_advantages,
    shape_rewards,
    whiten,
    zero_spread_fraction,
)


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_gae_three_steps_and_padding():
    """gamma = 0.9, lam = 0.5 (gamma * lam = 0.45).

    Row 0: r = (0, 0, 1), V = (0.5, 0.6, 0.7), all real; V after the end = 0.
      t=2: delta = 1 + 0 - 0.7 = 0.3                       A2 = 0.3
      t=1: delta = 0 + 0.9*0.7 - 0.6 = 0.03                A1 = 0.03 + 0.45*0.3 = 0.165
      t=0: delta = 0 + 0.9*0.6 - 0.5 = 0.04                A0 = 0.04 + 0.45*0.165 = 0.11425
      returns = A + V = (0.61425, 0.765, 1.0)
    Row 1: r = (0, 2, pad), V = (1, 0.5, 9 at the pad: ignored), mask (1, 1, 0).
      t=1: delta = 2 + 0 - 0.5 = 1.5                       A1 = 1.5
      t=0: delta = 0 + 0.9*0.5 - 1 = -0.55                 A0 = -0.55 + 0.45*1.5 = 0.125
      returns = (1.125, 2.0, 0)
    """
    rewards = _t([0.0, 0.0, 1.0], [0.0, 2.0, 0.0])
    values = _t([0.5, 0.6, 0.7], [1.0, 0.5, 9.0])
    mask = _t([1, 1, 1], [1, 1, 0])
    adv, ret = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    assert torch.allclose(adv, _t([0.11425, 0.165, 0.3], [0.125, 1.5, 0.0]))
    assert torch.allclose(ret, _t([0.61425, 0.765, 1.0], [1.125, 2.0, 0.0]))


def test_gae_lambda_one_is_monte_carlo_and_skips_holes():
    """lam = 1, gamma = 1: A_t = (sum of future rewards) - V_t, returns = reward-to-go.
    r = (1, x, 2) with the middle masked (a hole, its reward 5 and value 7 ignored), V = (0.5, 7, 0.25):
    A = (3 - 0.5, 0, 2 - 0.25) = (2.5, 0, 1.75); returns = (3, 0, 2)."""
    rewards, values, mask = _t([1.0, 5.0, 2.0]), _t([0.5, 7.0, 0.25]), _t([1, 0, 1])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    assert torch.allclose(adv, _t([2.5, 0.0, 1.75]))
    assert torch.allclose(ret, _t([3.0, 0.0, 2.0]))
    assert torch.allclose(discounted_returns(rewards, mask), _t([3.0, 0.0, 2.0]))


def test_discounted_returns_gamma():
    """gamma = 0.5, r = (1, 2, 4): G2 = 4, G1 = 2 + 2 = 4, G0 = 1 + 2 = 3."""
    assert torch.allclose(
        discounted_returns(_t([1.0, 2.0, 4.0]), _t([1, 1, 1]), gamma=0.5), _t([3.0, 4.0, 4.0])
    )


def test_shape_rewards_last_token_minus_kl():
    """kl_coef = 0.1, kl = (1, 2, 3) per token. Row 0 has 3 tokens, sequence reward 5:
    (-0.1, -0.2, 5 - 0.3) = (-0.1, -0.2, 4.7). Row 1 has 2 tokens (third is pad), reward -1:
    (-0.1, -1 - 0.2, 0) = (-0.1, -1.2, 0)."""
    mask = _t([1, 1, 1], [1, 1, 0])
    kl = _t([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    shaped = shape_rewards(torch.tensor([5.0, -1.0], dtype=torch.float64), mask, kl, kl_coef=0.1)
    assert torch.allclose(shaped, _t([-0.1, -0.2, 4.7], [-0.1, -1.2, 0.0]))
    no_kl = shape_rewards(torch.tensor([5.0, -1.0], dtype=torch.float64), mask)
    assert torch.allclose(no_kl, _t([0.0, 0.0, 5.0], [0.0, -1.0, 0.0]))
    # a row mask_truncated took out of the loss: no reward placed anywhere (not at position 0)
    assert torch.equal(shape_rewards(torch.tensor([1.0, 2.0], dtype=torch.float64), _t([0, 0], [1, 0])),
                       _t([0.0, 0.0], [2.0, 0.0]))


def test_a_truncated_row_is_as_if_it_were_not_in_the_batch():
    """mask_truncated zeroes a truncated answer's mask row. GAE and REINFORCE++ then give that row 0 and every
    other row what the batch without it gives (whitening is over the remaining tokens); with every row out,
    nothing is whitened and nothing raises."""
    mask = _t([1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1])
    rewards = torch.tensor([1.0, 0.3, -0.5, 2.0], dtype=torch.float64)
    values = _t([0.1, 0.2, 0.3, 0.0], [0.5, 0.1, 0.0, 0.2], [0.3, 0.3, 0.0, 0.0], [0.0, 0.4, 0.1, 0.2])
    cut = mask.clone()
    cut[1] = 0
    keep = [0, 2, 3]
    got = reinforce_pp_advantages(rewards, cut)[0]
    want = reinforce_pp_advantages(rewards[keep], mask[keep])[0]
    assert torch.allclose(got[keep], want) and torch.equal(got[1], torch.zeros(4, dtype=torch.float64))
    adv, ret = gae(shape_rewards(rewards, cut), values, cut, gamma=1.0, lam=0.95)
    adv_k, ret_k = gae(shape_rewards(rewards[keep], mask[keep]), values[keep], mask[keep], gamma=1.0, lam=0.95)
    assert torch.allclose(whiten(adv, cut)[keep], whiten(adv_k, mask[keep])) and torch.allclose(ret[keep], ret_k)
    assert torch.equal(ret[1], torch.zeros(4, dtype=torch.float64))
    none = torch.zeros_like(mask)
    assert torch.equal(reinforce_pp_advantages(rewards, none)[0], none)


def test_grpo_and_dr_grpo_group_advantages():
    """Group 1 rewards (1, 0, 0, 1): mean 0.5, Bessel std sqrt(4 * 0.25 / 3) = 0.577350,
    GRPO A = +-0.5 / 0.577350 = +-0.866025; Dr. GRPO A = +-0.5.
    Group 2 (2, 2, 2, 2): zero spread -> all advantages 0."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0], dtype=torch.float64)
    a = 0.5 / math.sqrt(1 / 3)
    assert torch.allclose(
        grpo_advantages(r, 4, eps=1e-12), torch.tensor([a, -a, -a, a, 0, 0, 0, 0], dtype=torch.float64)
    )
    assert torch.allclose(
        dr_grpo_advantages(r, 4), torch.tensor([0.5, -0.5, -0.5, 0.5, 0, 0, 0, 0], dtype=torch.float64)
    )
    assert zero_spread_fraction(r, 4) == 0.5
    with pytest.raises(AlignlabError):
        grpo_advantages(r, 3)


def test_rloo_leave_one_out():
    """Group (1, 0, 0, 1): A_0 = 1 - mean(0, 0, 1) = 2/3, A_1 = 0 - mean(1, 0, 1) = -2/3.
    Group (3, 1): A = (3 - 1, 1 - 3) = (2, -2)."""
    r = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=torch.float64)
    assert torch.allclose(rloo_advantages(r, 4), torch.tensor([2, -2, -2, 2], dtype=torch.float64) / 3)
    assert torch.allclose(rloo_advantages(torch.tensor([3.0, 1.0]), 2), torch.tensor([2.0, -2.0]))
    with pytest.raises(AlignlabError):
        rloo_advantages(r, 1)


def test_whiten_masked():
    """x = (1, 2, 3, pad 100): mean 2, Bessel var 1 -> (-1, 0, 1, 0) (eps 1e-8 negligible)."""
    out = whiten(_t([1.0, 2.0, 3.0, 100.0]), _t([1, 1, 1, 0]))
    assert torch.allclose(out, _t([-1.0, 0.0, 1.0, 0.0]), atol=1e-6)
    kept = whiten(_t([1.0, 2.0, 3.0]), shift_mean=False)
    assert torch.allclose(kept, _t([1.0, 2.0, 3.0]), atol=1e-6)
    with pytest.raises(AlignlabError):
        whiten(_t([1.0, 2.0]), _t([1, 0]))


def test_reinforce_pp_global_normalisation():
    """Rewards (1, 0); row 0 has 3 tokens, row 1 has 2 (gamma 1, no KL): returns (1,1,1 | 0,0,pad).
    Over the 5 real tokens: mean 0.6, Bessel var (3*0.16 + 2*0.36)/4 = 0.3, std 0.547723:
    A = 0.4/0.547723 = 0.730297 on row 0, -0.6/0.547723 = -1.095445 on row 1."""
    mask = _t([1, 1, 1], [1, 1, 0])
    adv, ret = reinforce_pp_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), mask)
    assert torch.allclose(ret, _t([1.0, 1.0, 1.0], [0.0, 0.0, 0.0]))
    a, b = 0.4 / math.sqrt(0.3), -0.6 / math.sqrt(0.3)
    assert torch.allclose(adv, _t([a, a, a], [b, b, 0.0]), atol=1e-6)


def test_reinforce_pp_with_kl_in_reward():
    """One row of 2 tokens, reward 1, kl (0.5, 0.5), coef 1: shaped (-0.5, 0.5), returns (0, 0.5)."""
    _, ret = reinforce_pp_advantages(
        torch.tensor([1.0], dtype=torch.float64), _t([1, 1]), kl=_t([0.5, 0.5]), kl_coef=1.0
    )
    assert torch.allclose(ret, _t([0.0, 0.5]))


def test_reinforce_pp_baseline_centres_groups_first():
    """Rewards (1, 0 | 3, 1), group size 2 -> centred (0.5, -0.5, 1, -1); T = 2, all real tokens:
    returns repeat each value twice; mean 0, Bessel var 2*(0.25+0.25+1+1)/7 = 5/7;
    A = centred / sqrt(5/7), e.g. 0.5 / 0.845154 = 0.591608."""
    mask = torch.ones(4, 2, dtype=torch.float64)
    adv, ret = reinforce_pp_baseline_advantages(
        torch.tensor([1.0, 0.0, 3.0, 1.0], dtype=torch.float64), mask, 2
    )
    centred = torch.tensor([0.5, -0.5, 1.0, -1.0], dtype=torch.float64)
    assert torch.allclose(ret, centred[:, None].expand(4, 2))
    assert torch.allclose(adv, (centred / math.sqrt(5 / 7))[:, None].expand(4, 2), atol=1e-6)
    assert adv[0, 0].item() == pytest.approx(0.591608, abs=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    length=st.integers(1, 6),
    pad=st.integers(0, 3),
    gamma=st.floats(0.5, 1.0),
    lam=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
)
def test_gae_matches_closed_form_sum(length, pad, gamma, lam, seed):
    """GAE equals its closed form A_t = sum_l (gamma lam)^l delta_{t+l} (Schulman et al. 2016, Eq. 16),
    computed here directly with V = 0 after the last real token; padding never changes the result."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(1, length, generator=gen, dtype=torch.float64)
    v = torch.randn(1, length, generator=gen, dtype=torch.float64)
    v_next = torch.cat([v[0, 1:], torch.zeros(1, dtype=torch.float64)])
    delta = r[0] + gamma * v_next - v[0]
    expected = torch.tensor(
        [sum((gamma * lam) ** (s - t) * delta[s] for s in range(t, length)) for t in range(length)],
        dtype=torch.float64,
    )

    def padded(x, fill):
        return torch.cat([x, torch.full((1, pad), fill, dtype=torch.float64)], 1)

    mask = padded(torch.ones(1, length, dtype=torch.float64), 0.0)
    adv, ret = gae(padded(r, 3.0), padded(v, -7.0), mask, gamma=gamma, lam=lam)
    assert torch.allclose(adv[0, :length], expected)
    assert torch.allclose(ret[0, :length], expected + v[0])
    assert torch.all(adv[0, length:] == 0)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(2, 6))
def test_group_estimators_properties(seed, k):
    """For any rewards: GRPO / Dr. GRPO / RLOO advantages sum to 0 within each group, RLOO =
    K/(K-1) * Dr. GRPO, and GRPO = Dr. GRPO / (std + eps)."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(3 * k, generator=gen, dtype=torch.float64)
    dr = dr_grpo_advantages(r, k)
    for adv in (dr, grpo_advantages(r, k), rloo_advantages(r, k)):
        assert torch.allclose(adv.reshape(3, k).sum(-1), torch.zeros(3, dtype=torch.float64), atol=1e-9)
    assert torch.allclose(rloo_advantages(r, k), dr * k / (k - 1))
    std = r.reshape(3, k).std(-1, keepdim=True)
    assert torch.allclose(grpo_advantages(r, k, eps=1e-6), (dr.reshape(3, k) / (std + 1e-6)).reshape(-1))


@pytest.mark.parametrize("value", [0.3, 1.2, 2.7, 13.37, 100.1])
def test_groups_of_equal_float32_rewards_get_exactly_zero(value):
    # the float32 mean of 8 equal rewards is rounded: r - mean was a tiny constant, and the division by
    # std + eps (std exactly 0) made it a same-sign advantage for every sample (100.1 gave +7.6)
    rewards = torch.cat([torch.full((8,), value), torch.tensor([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])])
    for fn in (grpo_advantages, dr_grpo_advantages, rloo_advantages):
        adv = fn(rewards, 8)
        assert torch.equal(adv[:8], torch.zeros(8)), fn.__name__
        assert adv[8:].abs().sum() > 0  # a group with a spread still learns


def test_integer_and_bool_rewards_are_promoted_to_float():
    """In the rewards' own integer dtype the KL penalty, the values and the discounts were truncated to whole
    numbers (gae of 0/1 rewards returned the rewards), and bool rewards raised out of arange."""
    m = torch.ones(2, 3)
    kl = torch.full((2, 3), 0.9)
    assert torch.allclose(shape_rewards(torch.tensor([1, 0]), m, kl, 0.5),
                          torch.tensor([[-0.45, -0.45, 0.55], [-0.45, -0.45, -0.45]]))
    assert torch.allclose(discounted_returns(torch.tensor([[0, 0, 1], [0, 0, 0]]), m, gamma=0.9),
                          torch.tensor([[0.81, 0.9, 1.0], [0.0, 0.0, 0.0]]))
    values = torch.full((2, 3), 0.1)
    for ints in (torch.tensor([[0, 0, 1], [0, 0, 0]]), torch.tensor([[False, False, True], [False, False, False]])):
        got, want = gae(ints, values, m, lam=0.95), gae(ints.float(), values, m, lam=0.95)
        assert all(torch.equal(a, b) for a, b in zip(got, want))
    got = reinforce_pp_advantages(torch.tensor([True, False]), m, kl=kl, kl_coef=0.5)
    want = reinforce_pp_advantages(torch.tensor([1.0, 0.0]), m, kl=kl, kl_coef=0.5)
    assert all(torch.equal(a, b) for a, b in zip(got, want))

"""Reward-model losses: Bradley-Terry (margin, centring) and Plackett-Luce, by hand."""

import math

import torch

from alignlab.losses.reward import bradley_terry, plackett_luce


def close(actual, expected):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=1e-6, rtol=0)


def test_bradley_terry_plain():
    """r_c - r_r = [1, -1]: softplus(-1) = log(1 + e^-1) = 0.313262, softplus(1) = 1.313262; accuracy 1/2."""
    losses, m = bradley_terry(torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]))
    close(losses, [0.313262, 1.313262])
    close(m["accuracy"], 0.5)
    close(m["rewards/margins"], 0.0)


def test_bradley_terry_margin_and_centring():
    """margin [0.5, 0] (Llama 2 Eq. 2): diffs [0.5, -1] -> softplus(-0.5) = 0.474077, softplus(1) = 1.313262;
    centring 0.01 (r_c + r_r)^2 = 0.01 * 9 = 0.09 and 0.01 * 1 = 0.01 -> [0.564077, 1.323262].
    TRL's loss is the mean: 0.943670 = mean(softplus) + 0.01 * mean((r_c + r_r)^2) = 0.893670 + 0.05.
    """
    losses, _ = bradley_terry(
        torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0]), margin=torch.tensor([0.5, 0.0]), center_coef=0.01
    )
    close(losses, [0.564077, 1.323262])
    close(losses.mean(), 0.943670)


def test_plackett_luce_hand():
    """Scores [3, 1, 0] best first: -(3 - log(e^3 + e + 1)) - (1 - log(e + 1)) - (0 - log 1)
    = (log 23.803819 - 3) + (log 3.718282 - 1) = 0.169846 + 0.313262 = 0.483108.
    Ragged [3, 1, absent]: only -(3 - log(e^3 + e)) = softplus(-2) = 0.126928.
    """
    scores = torch.tensor([[3.0, 1.0, 0.0], [3.0, 1.0, 123.0]], requires_grad=True)
    mask = torch.tensor([[True, True, True], [True, True, False]])
    losses, m = plackett_luce(scores, mask)
    close(losses, [0.483108, 0.126928])
    close(m["accuracy"], 1.0)
    losses.sum().backward()
    assert torch.isfinite(scores.grad).all()
    assert scores.grad[1, 2] == 0  # an absent item gets no gradient


def test_plackett_luce_k2_equals_bradley_terry():
    """-(c - log(e^c + e^r)) = log(1 + e^(r - c)) = -log s(c - r): identical up to float rounding (1e-12 in float64)."""
    torch.manual_seed(0)
    c, r = torch.randn(8, dtype=torch.float64) * 3, torch.randn(8, dtype=torch.float64) * 3
    pl, _ = plackett_luce(torch.stack([c, r], dim=1))
    bt, _ = bradley_terry(c, r)
    torch.testing.assert_close(pl, bt, atol=1e-12, rtol=0)


def test_plackett_luce_single_item_list_costs_nothing():
    losses, _ = plackett_luce(torch.tensor([[5.0, 0.0]]), torch.tensor([[True, False]]))
    close(losses, [0.0])
    assert math.isclose(float(losses.sum()), 0.0)

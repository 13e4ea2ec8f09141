"""Hand-computed tests for the PPO-family policy losses, KL estimators and KL controllers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from alignlab.errors import AlignlabError
from alignlab.losses.policy import (
    AdaptiveKLController,
    FixedKLController,
    aggregate_loss,
    entropy_bonus,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
    ppo_clip,
    value_loss,
)


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_ppo_clip_inside_and_outside_range():
    """eps = 0.2. Four tokens, ratios r = exp(logp - old):

    1. r = 1.1, A = +1: inside the range -> loss = -1.1, no clip.
    2. r = 1.5, A = +1: clip to 1.2 -> max(-1.5, -1.2) = -1.2, clipped (no gradient).
    3. r = 0.5, A = +1: max(-0.5, -0.8) = -0.5, NOT clipped (pessimistic bound keeps the unclipped term).
    4. r = 0.5, A = -2: clip to 0.8 -> max(1.0, 1.6) = 1.6, clipped.
    clip_frac = 2/4 = 0.5.
    approx KL (k3 of old||new, log r = logp - old): sum over tokens of (r - 1) - log r, / 4:
      (0.1 - ln 1.1) + (0.5 - ln 1.5) + 2 * (-0.5 - ln 0.5)
    """
    ratios = torch.tensor([[1.1, 1.5, 0.5, 0.5]], dtype=torch.float64)
    old = torch.zeros_like(ratios)
    logp = ratios.log().requires_grad_(True)
    adv = _t([1.0, 1.0, 1.0, -2.0])
    out = ppo_clip(logp, old, adv, torch.ones_like(ratios), epsilon_low=0.2)
    assert torch.allclose(out.loss, _t([-1.1, -1.2, -0.5, 1.6]))
    assert out.clip_frac.item() == pytest.approx(0.5)
    expected_kl = ((0.1 - math.log(1.1)) + (0.5 - math.log(1.5)) + 2 * (-0.5 - math.log(0.5))) / 4
    assert out.approx_kl.item() == pytest.approx(expected_kl)
    out.loss.sum().backward()
    # d(-A r)/d logp = -A r where unclipped, 0 where clipped.
    assert torch.allclose(logp.grad, _t([-1.1, 0.0, -0.5, 0.0]))


def test_ppo_clip_mask_and_sequence_advantage():
    """Per-sequence advantages [B] broadcast over tokens; diagnostics ignore masked tokens.

    Row 0 ratios (1.5, 1.0), A = 1 -> first clipped; row 1 (1.0, pad 9.0), A = -1 -> nothing clipped
    among real tokens. clip_frac = 1 clipped / 3 real tokens.
    """
    ratios = _t([1.5, 1.0], [1.0, 9.0])
    mask = _t([1, 1], [1, 0])
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    out = ppo_clip(ratios.log(), torch.zeros_like(ratios), adv, mask)
    assert torch.allclose(out.loss[0], torch.tensor([-1.2, -1.0], dtype=torch.float64))
    assert out.loss[1, 0].item() == pytest.approx(1.0)
    assert out.clip_frac.item() == pytest.approx(1 / 3)


def test_dual_clip_bounds_negative_advantage_only():
    """c = 3, eps = 0.2. Token 1: r = 5, A = -1: PPO loss = max(5, 1.2) = 5; dual clip caps at -c*A = 3.
    Token 2: r = 2, A = -1: loss 2 < 3, untouched. Token 3: r = 5, A = +1: loss = max(-5, -1.2) = -1.2,
    untouched (dual clip is only for A < 0). dual_clip_frac = 1/3; the capped token has zero gradient.
    """
    ratios = _t([5.0, 2.0, 5.0])
    logp = ratios.log().requires_grad_(True)
    adv = _t([-1.0, -1.0, 1.0])
    out = ppo_clip(logp, torch.zeros_like(ratios), adv, dual_clip=3.0)
    assert torch.allclose(out.loss, _t([3.0, 2.0, -1.2]))
    assert out.dual_clip_frac.item() == pytest.approx(1 / 3)
    out.loss.sum().backward()
    assert torch.allclose(logp.grad, _t([0.0, 2.0, 0.0]))
    plain = ppo_clip(ratios.log(), torch.zeros_like(ratios), adv)
    assert plain.loss[0, 0].item() == pytest.approx(5.0)
    with pytest.raises(AlignlabError):
        ppo_clip(logp, torch.zeros_like(ratios), adv, dual_clip=0.5)


def test_clip_higher_asymmetric():
    """eps_low = 0.2, eps_high = 0.28 (DAPO): r = 1.25, A = 1 stays unclipped -> loss -1.25;
    r = 1.4 clips at 1.28 -> -1.28."""
    ratios = _t([1.25, 1.4])
    out = ppo_clip(ratios.log(), torch.zeros_like(ratios), _t([1.0, 1.0]), epsilon_high=0.28)
    assert torch.allclose(out.loss, _t([-1.25, -1.28]))


def test_value_loss_clipped_and_plain():
    """eps = 0.2, old = 0 for every token.

    1. v = 0.5, R = 1: v_clip = 0.2; max((0.5-1)^2, (0.2-1)^2) = max(0.25, 0.64) -> 0.5*0.64 = 0.32, clipped.
    2. v = 0.1, R = 1: v_clip = 0.1; both 0.81 -> 0.405, not clipped.
    3. v = 0.5, R = 0: v_clip = 0.2; max(0.25, 0.04) -> 0.125, not clipped.
    clip_frac = 1/3. Without clipping: 0.5*(0.25, 0.81, 0.25).
    """
    values = _t([0.5, 0.1, 0.5])
    returns = _t([1.0, 1.0, 0.0])
    loss, frac = value_loss(values, torch.zeros_like(values), returns)
    assert torch.allclose(loss, _t([0.32, 0.405, 0.125]))
    assert frac.item() == pytest.approx(1 / 3)
    plain, _ = value_loss(values, torch.zeros_like(values), returns, clip_eps=None)
    assert torch.allclose(plain, _t([0.125, 0.405, 0.125]))


def test_kl_estimators_hand_values():
    """logp = ln 0.5, ref = ln 0.25 -> log r = ln(ref/pi) = -ln 2:
    k1 = ln 2 = 0.693147; k2 = 0.5 * ln(2)^2 = 0.240227; k3 = (0.5 - 1) + ln 2 = 0.193147.
    Equal log-probs give 0 for all three."""
    logp = torch.tensor([math.log(0.5), -1.0], dtype=torch.float64)
    ref = torch.tensor([math.log(0.25), -1.0], dtype=torch.float64)
    ln2 = math.log(2)
    assert torch.allclose(kl_k1(logp, ref), torch.tensor([ln2, 0.0], dtype=torch.float64))
    assert torch.allclose(kl_k2(logp, ref), torch.tensor([0.5 * ln2**2, 0.0], dtype=torch.float64))
    assert torch.allclose(kl_k3(logp, ref), torch.tensor([ln2 - 0.5, 0.0], dtype=torch.float64))
    assert torch.equal(kl_penalty(logp, ref, "k3"), kl_k3(logp, ref))
    with pytest.raises(AlignlabError):
        kl_penalty(logp, ref, "k4")


def test_kl_estimators_unbiased_monte_carlo():
    """pi = (0.5, 0.3, 0.2), ref = (0.2, 0.3, 0.5); true KL(pi||ref) = 0.5 ln 2.5 + 0.2 ln 0.4 = 0.274887.
    k1 and k3 averaged over 400k samples from pi match it within 0.005 (their std errors are ~0.001);
    k2 is biased: E[k2] = 0.5 * (0.5 + 0.2) * ln(2.5)^2 = 0.293833."""
    pi = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    ref = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    true_kl = float((pi * (pi / ref).log()).sum())
    assert true_kl == pytest.approx(0.5 * math.log(2.5) + 0.2 * math.log(0.4))
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(pi, 400_000, replacement=True, generator=gen)
    logp, ref_logp = pi.log()[x], ref.log()[x]
    assert kl_k1(logp, ref_logp).mean().item() == pytest.approx(true_kl, abs=0.005)
    assert kl_k3(logp, ref_logp).mean().item() == pytest.approx(true_kl, abs=0.005)
    assert kl_k3(logp, ref_logp).min().item() >= 0.0
    assert kl_k2(logp, ref_logp).mean().item() == pytest.approx(0.35 * math.log(2.5) ** 2, abs=0.005)


def test_aggregate_loss_modes():
    """loss rows (1, 2, 3) with 3 tokens and (4, pad, pad) with 1 token; T = 3.

    token-mean = (1+2+3+4)/4 = 2.5; seq-mean-token-mean = (2 + 4)/2 = 3; seq-mean-token-sum =
    (6 + 4)/2 = 5; seq-mean-token-sum-norm = 10 / (2 * 3) = 5/3, and with norm=5: 10/10 = 1.
    """
    loss = _t([1.0, 2.0, 3.0], [4.0, 100.0, 100.0])
    mask = _t([1, 1, 1], [1, 0, 0])
    assert aggregate_loss(loss, mask, "token-mean").item() == pytest.approx(2.5)
    assert aggregate_loss(loss, mask, "seq-mean-token-mean").item() == pytest.approx(3.0)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum").item() == pytest.approx(5.0)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm").item() == pytest.approx(5 / 3)
    assert aggregate_loss(loss, mask, "seq-mean-token-sum-norm", norm=5).item() == pytest.approx(1.0)
    with pytest.raises(AlignlabError):
        aggregate_loss(loss, mask, "sum")


def test_entropy_bonus_uniform_and_peaked():
    """Uniform logits over V = 4: H = ln 4 = 1.386294. A one-hot-ish row (logit 100 on one entry): H ~ 0.
    Token mean over the two real tokens (third masked) = ln(4)/2."""
    logits = torch.zeros(1, 3, 4)
    logits[0, 1, 2] = 100.0
    logits[0, 2] = torch.tensor([5.0, 0.0, 0.0, 0.0])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert entropy_bonus(logits, mask).item() == pytest.approx(math.log(4) / 2, abs=1e-6)


def test_adaptive_kl_controller_update():
    """Ziegler et al. Eq. 2, value 0.1, target 6, horizon 10000, batch of 256 samples.

    KL 9: e = clip(9/6 - 1, +-0.2) = 0.2 -> 0.1 * (1 + 0.2 * 256/10000) = 0.1 * 1.00512 = 0.100512.
    KL 5: e = 5/6 - 1 = -1/6 -> 0.1 * (1 - 256/60000) = 0.0995733...
    KL 6: unchanged. The controller is immutable.
    """
    ctl = AdaptiveKLController(value=0.1, target=6.0, horizon=10000)
    assert ctl.update(9.0, 256).value == pytest.approx(0.100512)
    assert ctl.update(5.0, 256).value == pytest.approx(0.1 * (1 - 256 / 60000))
    assert ctl.update(6.0, 256).value == pytest.approx(0.1)
    assert ctl.value == 0.1
    chained = ctl.update(100.0, 10000).update(100.0, 10000)
    assert chained.value == pytest.approx(0.1 * 1.2 * 1.2)
    with pytest.raises(AlignlabError):
        ctl.update(float("nan"), 1)
    assert FixedKLController(0.05).update(123.0, 10).value == 0.05
    # a batch past five horizons made the factor negative (1 - 0.2 * 32 / 5): a batch moves beta by the full
    # clipped error at most
    assert AdaptiveKLController(0.05, 6.0, 5).update(0.01, 32).value == pytest.approx(0.05 * 0.8)


@settings(max_examples=50, deadline=None)
@given(
    log_ratio=st.floats(-2.0, 2.0),
    adv=st.floats(-3.0, 3.0).filter(lambda a: abs(a) > 1e-3),
    eps=st.floats(0.05, 0.4),
)
def test_ppo_clip_is_pessimistic_and_gradient_vanishes_when_clipped(log_ratio, adv, eps):
    """For any ratio and advantage: the PPO loss is >= the unclipped loss -A r (a pessimistic bound,
    Schulman et al. 2017 Sec. 3), and its gradient is either the unclipped one (-A r) or exactly 0."""
    logp = torch.tensor([[log_ratio]], dtype=torch.float64, requires_grad=True)
    out = ppo_clip(
        logp, torch.zeros_like(logp), torch.tensor([[adv]], dtype=torch.float64), epsilon_low=eps
    )
    r = math.exp(log_ratio)
    assert out.loss.item() >= -adv * r - 1e-12
    out.loss.sum().backward()
    grad = logp.grad.item()
    assert grad == pytest.approx(-adv * r) or grad == 0.0
    assert (grad == 0.0) == bool(out.clip_frac.item() == 1.0)


@settings(max_examples=50, deadline=None)
@given(a=st.floats(-20.0, 0.0), b=st.floats(-20.0, 0.0))
def test_k2_k3_nonnegative(a, b):
    """k2 and k3 are >= 0 for any pair of log-probs (k3: (r - 1) - log r >= 0 since log r <= r - 1)."""
    x, y = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    assert kl_k2(x, y).item() >= 0.0
    assert kl_k3(x, y).item() >= 0.0


def test_extreme_ratios_stay_finite():
    """log r = 500 (an overflow for exp in float32): the PPO loss and k3 with max_log_ratio=20 stay finite;
    k3 with the clamp equals (e^20 - 1) - 20 for log(ref/pi) = 20."""
    logp = torch.tensor([[0.0, -500.0]])
    old = torch.tensor([[-500.0, 0.0]])
    out = ppo_clip(logp, old, torch.tensor([[-1.0, 1.0]]))
    assert torch.isfinite(out.loss).all() and torch.isfinite(out.approx_kl)
    k3 = kl_penalty(torch.tensor([-500.0]), torch.tensor([0.0]), "k3", max_log_ratio=20.0)
    assert k3.item() == pytest.approx(math.expm1(20.0) - 20.0, rel=1e-5)
    assert kl_penalty(torch.tensor([-0.5]), torch.tensor([-1.0]), "k1", max_log_ratio=20.0).item() == 0.5

"""Paired preference losses against numbers worked out by hand (TRL's formulas, read from its source).

Shared inputs (beta = 0.1), two pairs, SUMMED log-probs:
    policy_chosen = [-10, -15], policy_rejected = [-12, -10], ref_chosen = ref_rejected = [-11, -10]
    chosen log-ratio r_c = [1, -5], rejected log-ratio r_r = [-1, 0]
    h = r_c - r_r = [2, -5]; z = beta * h = [0.2, -0.5]
    implicit rewards: chosen beta * r_c = [0.1, -0.5], rejected beta * r_r = [-0.1, 0.0]
softplus(x) = log(1 + e^x), and -log sigmoid(z) = softplus(-z); softplus(z) - softplus(-z) = z.
"""

import math

import pytest
import torch

from alignlab.losses import LOSSES, PairLogps, combine
from alignlab.losses import preference as P

BETA = 0.1
PI_C = torch.tensor([-10.0, -15.0])
PI_R = torch.tensor([-12.0, -10.0])
REF_C = torch.tensor([-11.0, -10.0])
REF_R = torch.tensor([-11.0, -10.0])
REWARDS_C = torch.tensor([0.1, -0.5])
REWARDS_R = torch.tensor([-0.1, 0.0])


def close(actual, expected, atol=1e-6):
    torch.testing.assert_close(actual, torch.as_tensor(expected, dtype=actual.dtype), atol=atol, rtol=0)


def run(fn, **params):
    return fn(PI_C, PI_R, REF_C, REF_R, beta=BETA, **params)


def test_dpo():
    """softplus(-0.2) = log(1 + e^-0.2) = log 1.818731 = 0.598139; softplus(0.5) = log 2.648721 = 0.974077."""
    losses, c, r = run(P.dpo)
    close(losses, [0.598139, 0.974077])
    close(c, REWARDS_C)
    close(r, REWARDS_R)
    assert not c.requires_grad and not r.requires_grad


def test_cdpo():
    """eps = 0.1: 0.9 softplus(-z) + 0.1 softplus(z) = softplus(-z) + 0.1 z = [0.598139 + 0.02, 0.974077 - 0.05]."""
    losses, c, _ = run(P.cdpo, label_smoothing=0.1)
    close(losses, [0.618139, 0.924077])
    close(c, REWARDS_C)


def test_robust():
    """eps = 0.1: (0.9 softplus(-z) - 0.1 softplus(z)) / 0.8 = (0.8 softplus(-z) - 0.1 z) / 0.8 = softplus(-z) - z/8.

    = [0.598139 - 0.025, 0.974077 + 0.0625] = [0.573139, 1.036577].
    """
    losses, _, r = run(P.robust, label_smoothing=0.1)
    close(losses, [0.573139, 1.036577])
    close(r, REWARDS_R)
    with pytest.raises(ValueError):
        run(P.robust, label_smoothing=0.5)


def test_ipo():
    """target 1 / (2 beta) = 5: (h - 5)^2 = [(2 - 5)^2, (-5 - 5)^2] = [9, 100] (inputs stand for averaged logps)."""
    losses, _, _ = run(P.ipo)
    close(losses, [9.0, 100.0])


def test_hinge():
    """relu(1 - z) = [relu(0.8), relu(1.5)] = [0.8, 1.5]; a pair with z >= 1 costs 0."""
    losses, _, _ = run(P.hinge)
    close(losses, [0.8, 1.5])
    big, _, _ = P.hinge(PI_C, PI_R, REF_C, REF_R, beta=1.0)
    close(big, [0.0, 6.0])


def test_sigmoid_norm():
    """Averaged logps: policy -1.0 / -1.2, ref -1.1 / -1.1 -> h = 0.2; beta 5 -> z = 1; softplus(-1) = 0.313262.

    Rewards 5 * (-1.0 + 1.1) = 0.5 and 5 * (-1.2 + 1.1) = -0.5.
    """
    t = torch.tensor
    losses, c, r = P.sigmoid_norm(t([-1.0]), t([-1.2]), t([-1.1]), t([-1.1]), beta=5.0)
    close(losses, [0.313262])
    close(c, [0.5])
    close(r, [-0.5])


def test_simpo():
    """Averaged logps c = [-1, -2], r = [-1.5, -1]; beta 2, gamma 0.5 (TRL simpo_gamma: margin in reward units).

    z = beta (c - r) - gamma = [2 * 0.5 - 0.5, 2 * (-1) - 0.5] = [0.5, -2.5];
    softplus(-z) = [log(1 + e^-0.5), log(1 + e^2.5)] = [0.474077, 2.578890]. Rewards beta * logp.
    """
    t = torch.tensor
    losses, c, r = P.simpo(t([-1.0, -2.0]), t([-1.5, -1.0]), None, None, beta=2.0, gamma=0.5)
    close(losses, [0.474077, 2.578890])
    close(c, [-2.0, -4.0])
    close(r, [-3.0, -2.0])


def test_orpo():
    """Averaged logps: chosen log 0.5, rejected log 0.25. odds = p/(1-p): 1 and 1/3, log odds ratio = log 3.

    L_OR = -log sigmoid(log 3) = -log(3/4) = 0.287682; NLL = -log 0.5 = 0.693147; lambda = beta = 0.1:
    0.693147 + 0.0287682 = 0.721915. With the batch token-mean NLL given as 2.0: 2.0 + 0.028768 = 2.028768.
    """
    c, r = torch.log(torch.tensor([0.5])), torch.log(torch.tensor([0.25]))
    losses, rc, _ = P.orpo(c, r, None, None, beta=0.1)
    close(losses, [0.721915])
    close(rc, [0.1 * -0.693147])
    losses, _, _ = P.orpo(c, r, None, None, beta=0.1, nll=torch.tensor(2.0))
    close(losses, [2.028768])


def test_apo_zero():
    """(1 - s(beta r_c)) + s(beta r_r): pair 1: (1 - s(0.1)) + s(-0.1) = 2 s(-0.1) = 2 * 0.475021 = 0.950042;
    pair 2: (1 - s(-0.5)) + s(0) = 0.622459 + 0.5 = 1.122459.
    """
    losses, c, r = run(P.apo_zero)
    close(losses, [0.950042, 1.122459])
    close(c, REWARDS_C)


def test_apo_down():
    """s(beta r_c) + 1 - s(beta h): pair 1: s(0.1) + 1 - s(0.2) = 0.524979 + 1 - 0.549834 = 0.975145;
    pair 2: s(-0.5) + 1 - s(-0.5) = 1.
    """
    losses, _, _ = run(P.apo_down)
    close(losses, [0.975145, 1.0])


def test_bco_pair_with_explicit_running_mean():
    """Batch mean reward (0.1 - 0.5 - 0.1 + 0) / 4 = -0.125 = delta (a fresh running mean takes the first value).

    softplus(-(beta r_c - delta)) + softplus(beta r_r - delta):
    pair 1: softplus(-(0.1 + 0.125)) + softplus(-0.1 + 0.125) = log 1.798516 + log 2.025315
            = 0.586962 + 0.705725 = 1.292687
    pair 2: softplus(-(-0.5 + 0.125)) + softplus(0 + 0.125) = log 2.454991 + log 2.133148
            = 0.898123 + 0.757599 = 1.655722
    """
    assert P.batch_reward_mean(PI_C, PI_R, REF_C, REF_R, beta=BETA) == pytest.approx(-0.125)
    losses, c, _ = run(P.bco_pair, reward_mean=-0.125)
    close(losses, [1.292687, 1.655722])
    close(c, REWARDS_C)
    # delta = 0 is TRL 1.16's bco_pair: softplus(-0.1) + softplus(-0.1) = 2 * 0.644397.
    losses0, _, _ = run(P.bco_pair)
    close(losses0[0], 2 * 0.644397)


def test_sft_nll_on_chosen():
    """-logp(chosen) per pair = [10, 15] (summed inputs here); with the TRL batch NLL 1.5 every pair gets 1.5."""
    losses, c, r = run(P.sft)
    close(losses, [10.0, 15.0])
    close(c, [0.0, 0.0])
    close(r, [0.0, 0.0])
    losses, _, _ = run(P.sft, nll=1.5)
    close(losses, [1.5, 1.5])


def test_identities_with_dpo():
    """cdpo eps=0 == dpo; robust eps=0 == dpo; sigmoid_norm is dpo on averaged logps."""
    torch.manual_seed(0)
    args = [torch.randn(5) * 3 for _ in range(4)]
    ref = P.dpo(*args, beta=0.3)[0]
    close(P.cdpo(*args, beta=0.3, label_smoothing=0.0)[0], ref)
    close(P.robust(*args, beta=0.3, label_smoothing=0.0)[0], ref)
    close(P.sigmoid_norm(*args, beta=0.3)[0], ref)


def test_simpo_gamma0_is_reference_free_length_normalised_dpo():
    """simpo(gamma=0) on averaged logps == dpo with a uniform reference (ref logps 0) on the same averaged logps."""
    torch.manual_seed(1)
    c, r = -torch.rand(6) * 3, -torch.rand(6) * 3
    zeros = torch.zeros(6)
    close(P.simpo(c, r, beta=2.0, gamma=0.0)[0], P.sigmoid_norm(c, r, zeros, zeros, beta=2.0)[0])


def test_reference_losses_refuse_missing_refs():
    with pytest.raises(ValueError, match="reference"):
        P.dpo(PI_C, PI_R, None, None, beta=BETA)


PAIRED = sorted(name for name, spec in LOSSES.items() if spec.paired)


@pytest.mark.parametrize("name", PAIRED)
def test_gradient_pushes_chosen_up_and_rejected_down(name):
    """d loss / d logp_chosen < 0 and d loss / d logp_rejected > 0 at a pair the policy barely prefers.

    Exceptions by design: sft trains chosen only (rejected gradient 0); apo_down pushes chosen DOWN
    (chosen is worse than the model's own output) and rejected down more, so its margin still grows.
    Averaged-logp losses get averaged-scale inputs (ORPO needs logps < 0).
    """
    mix = combine(name)
    spec = LOSSES[name]
    scale = 0.1 if spec.average_logps else 1.0
    pc = torch.tensor([-10.0 * scale], requires_grad=True)
    pr = torch.tensor([-10.5 * scale], requires_grad=True)
    refs = torch.tensor([-10.0 * scale]), torch.tensor([-10.0 * scale])
    lp = PairLogps(pc, pr, *refs)
    out = mix.compute(lp, lp, beta=mix.default_beta)
    out.loss.backward()
    gc, gr = pc.grad.item(), (pr.grad.item() if pr.grad is not None else 0.0)
    if name == "sft":
        assert gc < 0 and gr == 0
    elif name == "apo_down":
        assert gr > 0 and gc - gr < 0
    else:
        assert gc < 0 and gr > 0, (gc, gr)


def test_log1mexp_two_branches_are_accurate_in_float32():
    """Issue 15 item 9: log(1 - exp(x)) at x = -1e-9 is log(1e-9 - 5e-19 ...) = -20.7233 (float64 by hand:
    1 - e^x = -expm1(x) = 1e-9 - 5e-19); log1p(-exp(x)) gives -inf in float32 there."""
    x = torch.tensor([-1e-9, -1e-4, -0.5, -0.6931, -0.7, -5.0, -30.0], dtype=torch.float32)
    expected = torch.log(-torch.expm1(x.double()))
    torch.testing.assert_close(P.log1mexp(x).double(), expected, rtol=1e-6, atol=1e-12)
    assert P.log1mexp(torch.tensor(-1e-9)).item() == pytest.approx(-20.7232658, abs=1e-5)
    assert torch.isinf(torch.log1p(-torch.exp(torch.tensor(-1e-9))))  # the old formula
    g = torch.tensor([-1e-9, -3.0], requires_grad=True)
    P.log1mexp(g).sum().backward()
    assert torch.isfinite(g.grad).all()


def test_orpo_is_finite_when_the_averaged_logp_is_near_zero():
    c = torch.tensor([-1e-9], dtype=torch.float32)
    r = torch.tensor([-2.0], dtype=torch.float32)
    losses, _, _ = P.orpo(c, r, None, None, beta=0.1)
    # log odds = (c - r) - (log1mexp(c) - log1mexp(r)) = 2 - (-20.7233 - log(1 - e^-2) = -0.1454) = 22.578
    # loss = -c + 0.1 * softplus(-22.578) = 1e-9 + 0.1 * 1.57e-10
    assert torch.isfinite(losses).all() and losses.item() == pytest.approx(1e-9 + 0.1 * math.exp(-22.578), rel=1e-3)


def test_orpo_gradient_is_finite_for_a_chosen_answer_of_probability_one():
    # float32 log-probs round to exactly 0.0 at logit margins above ~30: the odds are infinite and autograd met
    # inf * 0 = NaN, which poisoned the whole step; the loss value was (and stays) right
    logits = torch.zeros(2, 50)
    logits[0, 3] = logits[1, 7] = 40.0
    logits.requires_grad_()
    pi_c = torch.log_softmax(logits, -1)[torch.arange(2), torch.tensor([3, 7])].mean().reshape(1)
    assert pi_c.item() == 0.0
    loss, _, _ = P.orpo(pi_c, torch.tensor([-2.0]), None, None, beta=0.1)
    loss.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert loss.item() == pytest.approx(0.0, abs=1e-20)
    # away from 0 the shift changes nothing
    a, _, _ = P.orpo(torch.tensor([-1e-9]), torch.tensor([-2.0]), None, None, beta=0.1)
    x = torch.tensor([-1e-9], dtype=torch.float64)
    log_odds = (x + 2.0) - (torch.log(-torch.expm1(x)) - math.log(-math.expm1(-2.0)))
    assert a.item() == pytest.approx(float(1e-9 - 0.1 * torch.nn.functional.logsigmoid(log_odds)), rel=1e-6)

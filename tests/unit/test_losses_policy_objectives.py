"""Hand-computed tests for the policy-objective registry: ppo_clip (clip-higher), gspo, cispo, and
DAPO's token-sum-norm aggregation; the rollout/trainer importance-sampling correction."""

import math

import pytest
import torch

from alignlab.errors import AlignlabError
from alignlab.losses.policy import (
    POLICY_LOSSES,
    aggregate_loss,
    cispo,
    get_policy_loss,
    gspo,
    ppo_clip,
)
from alignlab.losses.rollout_is import rollout_is_weights


def _t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


def test_registry_names_and_unknown_name_lists_them():
    assert set(POLICY_LOSSES) == {"ppo_clip", "gspo", "cispo"}
    assert get_policy_loss("gspo").fn is gspo
    assert get_policy_loss("gspo").loss_agg == "seq-mean-token-mean"
    assert get_policy_loss("cispo").loss_agg == "token-mean"
    with pytest.raises(AlignlabError, match="cispo, gspo, ppo_clip"):
        get_policy_loss("grpo_magic")


def test_every_registered_fn_has_the_common_signature():
    """Same call for every objective; output per-token [n, T] plus scalar diagnostics."""
    lp = _t([-1.0, -2.0], [-0.5, -0.1])
    old = lp - 0.05
    for spec in POLICY_LOSSES.values():
        out = spec.fn(lp, old, _t([1.0, -1.0], [0.5, 2.0]), torch.ones_like(lp),
                      epsilon_low=spec.epsilon_low, epsilon_high=spec.epsilon_high, dual_clip=None)
        assert out.loss.shape == (2, 2) and out.clip_frac.dim() == 0 and out.approx_kl.dim() == 0


def test_ppo_clip_higher():
    """Clip-higher: r = 1.25 inside [0.8, 1.28], r = 1.4 clipped to 1.28, r = 0.7 with A = -1 clipped to 0.8
    -> loss max(0.7, 0.8) = 0.8."""
    ratios = _t([1.25, 1.4, 0.7])
    adv = _t([1.0, 1.0, -1.0])
    new = ppo_clip(ratios.log(), torch.zeros_like(ratios), adv, epsilon_low=0.2, epsilon_high=0.28)
    assert torch.allclose(new.loss, _t([-1.25, -1.28, 0.8]))
    assert new.clip_frac.item() == pytest.approx(2 / 3)


def test_gspo_sequence_ratio_hand_values_and_gradient():
    """Row 0: token ratios (2, 0.5, pad) -> s = exp((ln 2 + ln 0.5)/2) = 1, inside the clip; A = 1:
    loss -1 on each real token, gradient d(-A s_it)/d logp_t = -A s = -1 per real token.
    Row 1: ratios (4, 1) -> s = sqrt(4 * 1) = 2; eps 0.2 -> clipped to 1.2 for A = 1: loss -1.2 on both
    tokens and zero gradient. Padding (ratio 100) does not enter the geometric mean.
    clip_frac = 2 clipped / 4 real tokens.
    """
    ratios = _t([2.0, 0.5, 100.0], [4.0, 1.0, 1.0])
    mask = _t([1, 1, 0], [1, 1, 0])
    logp = ratios.log().requires_grad_(True)
    out = gspo(logp, torch.zeros_like(ratios), torch.ones(2, dtype=torch.float64), mask, epsilon_low=0.2)
    assert torch.allclose(out.loss * mask, _t([-1.0, -1.0, 0.0], [-1.2, -1.2, 0.0]))
    assert out.clip_frac.item() == pytest.approx(0.5)
    (out.loss * mask).sum().backward()
    assert torch.allclose(logp.grad, _t([-1.0, -1.0, 0.0], [0.0, 0.0, 0.0]))


def test_gspo_gradient_is_that_of_the_sequence_objective():
    """Aggregated with seq-mean-token-mean, gspo's gradient equals the gradient of Eq. 5 written
    directly: -mean_i A_i * s_i with s_i = exp(mean_t log r_it) (inside the clip range)."""
    g = torch.Generator().manual_seed(0)
    lp0 = -torch.rand(3, 4, generator=g, dtype=torch.float64)
    old = lp0 + 0.01 * torch.randn(3, 4, generator=g, dtype=torch.float64)
    mask = _t([1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0])
    adv = torch.tensor([0.5, -1.0, 2.0], dtype=torch.float64)
    a = lp0.clone().requires_grad_(True)
    out = gspo(a, old, adv, mask, epsilon_low=0.5)
    aggregate_loss(out.loss, mask, "seq-mean-token-mean").backward()
    b = lp0.clone().requires_grad_(True)
    s = torch.exp(((b - old) * mask).sum(-1) / mask.sum(-1))
    (-(adv * s).mean()).backward()
    assert out.clip_frac.item() == 0.0
    assert torch.allclose(a.grad, b.grad)


def test_gspo_one_token_per_sequence_equals_ppo_clip():
    g = torch.Generator().manual_seed(1)
    lp = torch.randn(16, 1, generator=g, dtype=torch.float64) * 0.5
    old = torch.zeros_like(lp)
    adv = torch.randn(16, generator=g, dtype=torch.float64)
    mask = torch.ones_like(lp)
    for kw in ({"epsilon_low": 0.2}, {"epsilon_low": 0.2, "epsilon_high": 0.28, "dual_clip": 3.0}):
        a, b = lp.clone().requires_grad_(True), lp.clone().requires_grad_(True)
        out_g, out_p = gspo(a, old, adv, mask, **kw), ppo_clip(b, old, adv, mask, **kw)
        assert torch.allclose(out_g.loss, out_p.loss)
        assert out_g.clip_frac == out_p.clip_frac and out_g.dual_clip_frac == out_p.dual_clip_frac
        out_g.loss.sum().backward()
        out_p.loss.sum().backward()
        assert torch.allclose(a.grad, b.grad)


def test_cispo_hand_values_keep_clipped_tokens_gradient():
    """eps_low = 1 (no lower bound), eps_high = 0.28. Token ratios r = (1.1, 2.0, 0.5), A = (1, 1, -1),
    log-probs l = (ln 1.1, ln 2, ln 0.5) (old = 0).
    weights: (1.1, 1.28 [capped], 0.5). loss = -w A l = (-1.1 ln 1.1, -1.28 ln 2, 0.5 ln 0.5).
    gradient d/dl = -w A = (-1.1, -1.28, 0.5): the capped token still learns (PPO would give it 0).
    clip_frac = 1/3.
    """
    ratios = _t([1.1, 2.0, 0.5])
    logp = ratios.log().requires_grad_(True)
    adv = _t([1.0, 1.0, -1.0])
    out = cispo(logp, torch.zeros_like(ratios), adv, torch.ones_like(ratios), epsilon_low=1.0, epsilon_high=0.28)
    expected = _t([-1.1 * math.log(1.1), -1.28 * math.log(2.0), 0.5 * math.log(0.5)])
    assert torch.allclose(out.loss, expected)
    assert out.clip_frac.item() == pytest.approx(1 / 3)
    out.loss.sum().backward()
    assert torch.allclose(logp.grad, _t([-1.1, -1.28, 0.5]))
    ppo = ppo_clip(ratios.log().requires_grad_(True), torch.zeros_like(ratios), adv, epsilon_high=0.28)
    assert ppo.clip_frac.item() > 0
    with pytest.raises(AlignlabError, match="dual_clip"):
        cispo(logp, torch.zeros_like(ratios), adv, None, dual_clip=3.0)


def _softmax_policy_logp(theta, actions):
    return torch.log_softmax(theta, -1)[actions][None, :]


def test_cispo_gradient_matches_finite_differences():
    """A 5-armed softmax policy, 6 sampled actions. Inside the clip range CISPO's gradient w.r.t. the
    logits equals the central finite difference of the importance-sampled objective -mean(A * r(theta));
    with capped weights it equals the finite difference of -mean(A * w0 * log pi(theta)), w0 frozen."""
    g = torch.Generator().manual_seed(3)
    theta0 = torch.randn(5, generator=g, dtype=torch.float64)
    actions = torch.tensor([0, 1, 1, 3, 4, 2])
    adv = torch.randn(1, 6, generator=g, dtype=torch.float64)
    for shift, eps_high in ((0.05, 10.0), (0.8, 0.1)):
        old = _softmax_policy_logp(theta0, actions).detach() - shift * torch.linspace(-1, 1, 6)[None]
        theta = theta0.clone().requires_grad_(True)
        out = cispo(_softmax_policy_logp(theta, actions), old, adv, None, epsilon_low=1.0, epsilon_high=eps_high)
        out.loss.mean().backward()
        w0 = torch.clamp(torch.exp(_softmax_policy_logp(theta0, actions) - old), 0.0, 1.0 + eps_high)

        def objective(th, w0=w0, old=old, capped=eps_high < 1):
            lp = _softmax_policy_logp(th, actions)
            return (-(adv * w0 * lp) if capped else -(adv * torch.exp(lp - old))).mean()

        h, fd = 1e-6, torch.zeros(5, dtype=torch.float64)
        for k in range(5):
            e = torch.zeros(5, dtype=torch.float64)
            e[k] = h
            fd[k] = (objective(theta0 + e) - objective(theta0 - e)) / (2 * h)
        assert torch.allclose(theta.grad, fd, atol=1e-7), (shift, theta.grad, fd)
        assert (out.clip_frac.item() > 0) == (eps_high < 1)


def test_token_sum_norm_micro_batches_add_up_to_token_mean():
    """loss rows (1, 2, 3), (4, pad, pad): 4 real tokens, sum 10. token-sum-norm with norm = 4 gives
    10/4 = 2.5 = token-mean; split into two micro-batches (6/4 + 4/4) it adds up exactly."""
    loss = _t([1.0, 2.0, 3.0], [4.0, 100.0, 100.0])
    mask = _t([1, 1, 1], [1, 0, 0])
    whole = aggregate_loss(loss, mask, "token-sum-norm", norm=4)
    assert whole.item() == pytest.approx(2.5) == aggregate_loss(loss, mask, "token-mean").item()
    parts = [aggregate_loss(loss[i:i + 1], mask[i:i + 1], "token-sum-norm", norm=4) for i in range(2)]
    assert parts[0].item() == pytest.approx(1.5) and parts[1].item() == pytest.approx(1.0)
    assert sum(parts).item() == pytest.approx(whole.item())
    with pytest.raises(AlignlabError, match="norm"):
        aggregate_loss(loss, mask, "token-sum-norm")


# ---------------------------------------------------------------- rollout importance sampling


def test_rollout_is_identical_sampler_gives_exactly_one():
    lp = -torch.rand(4, 7, dtype=torch.float32)
    mask = torch.ones_like(lp)
    mask[0, 5:] = 0
    for mode in ("tis", "mis"):
        w, metrics = rollout_is_weights(lp, lp.clone(), mask, mode, 2.0)
        assert torch.equal(w, torch.ones_like(lp))
        assert metrics["rollout_kl_k3"] == 0.0 and metrics["rollout_is_capped_frac"] == 0.0


def test_rollout_is_hand_values_tis_and_mis():
    """Ratios trainer/sampler = (0.5, 1.5, 3.0, pad) with cap 2: tis -> (0.5, 1.5, 2.0, 1), mis ->
    (0.5, 1.5, 0, 1). k3 = mean over 3 real tokens of (rho - 1 - ln rho)."""
    rho = _t([0.5, 1.5, 3.0, 7.0])
    mask = _t([1, 1, 1, 0])
    sampler = torch.zeros_like(rho)
    w_t, m = rollout_is_weights(rho.log(), sampler, mask, "tis", 2.0)
    w_m, _ = rollout_is_weights(rho.log(), sampler, mask, "mis", 2.0)
    assert torch.allclose(w_t, _t([0.5, 1.5, 2.0, 1.0]))
    assert torch.allclose(w_m, _t([0.5, 1.5, 0.0, 1.0]))
    k3 = sum(r - 1 - math.log(r) for r in (0.5, 1.5, 3.0)) / 3
    assert m["rollout_kl_k3"] == pytest.approx(k3)
    assert m["rollout_is_capped_frac"] == pytest.approx(1 / 3)
    assert m["rollout_is_weight_mean"] == pytest.approx(4.0 / 3)
    with pytest.raises(AlignlabError):
        rollout_is_weights(rho.log(), sampler, mask, "tis", 0.5)
    with pytest.raises(AlignlabError):
        rollout_is_weights(rho.log(), sampler, mask, "xis", 2.0)


@pytest.mark.parametrize("mode", ["tis", "mis"])
def test_rollout_is_unbiased_on_a_toy_bandit(mode):
    """A 4-armed bandit: trainer policy pi = softmax(theta), a perturbed sampler q. The policy gradient
    E_pi[R(a) grad log pi(a)] estimated from samples of q with weight w(a) is unbiased when the
    weights stay under the cap (here max pi/q < 2 = cap): the Monte Carlo mean lies within 4
    standard errors of the exact gradient, while the uncorrected estimator is off by far more."""
    theta = torch.tensor([0.5, -0.2, 0.1, 0.0], dtype=torch.float64)
    pi = torch.softmax(theta, -1)
    q = torch.softmax(theta + torch.tensor([0.4, -0.3, 0.2, -0.3], dtype=torch.float64), -1)
    assert (pi / q).max() < 2.0
    reward = torch.tensor([1.0, 0.0, 2.0, -1.0], dtype=torch.float64)
    score = torch.eye(4, dtype=torch.float64) - pi  # grad_theta log pi(a) for each arm a, row a
    exact = (pi * reward) @ score
    g = torch.Generator().manual_seed(1234)
    n = 200_000
    actions = torch.multinomial(q, n, replacement=True, generator=g)
    w, _ = rollout_is_weights(pi.log()[actions][None], q.log()[actions][None], torch.ones(1, n), mode, 2.0)
    per_sample = (w[0] * reward[actions])[:, None] * score[actions]
    mean, se = per_sample.mean(0), per_sample.std(0) / math.sqrt(n)
    assert torch.all((mean - exact).abs() < 4 * se), (mean, exact, se)
    plain = (reward[actions][:, None] * score[actions]).mean(0)
    assert torch.any((plain - exact).abs() > 20 * se)

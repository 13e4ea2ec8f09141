"""Paired preference losses (the DPO family): pure functions over per-sequence log-probs.

Every function has the same shape of signature so the registry can treat them alike:

    fn(policy_chosen_logps [B], policy_rejected_logps [B], ref_chosen_logps [B] | None,
       ref_rejected_logps [B] | None, *, beta, **params) -> (losses [B], chosen_rewards [B], rejected_rewards [B])

`losses` are per pair (the caller averages); rewards are detached implicit rewards for logging
(TRL's `rewards/chosen`, `rewards/rejected`). Whether the log-probs are SUMMED over completion
tokens or AVERAGED per token is stated in each docstring and declared in the registry's
`LossSpec.average_logps`; the numbers below equal TRL's `DPOTrainer.dpo_loss` /
`CPOTrainer.cpo_loss` / `ORPOTrainer.odds_ratio_loss` for the same inputs.

Notation: h = (pi_c - pi_r) - (ref_c - ref_r), the difference of policy-to-reference log-ratios.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor
LossTriple = tuple[Tensor, Tensor, Tensor]


def _need_refs(name: str, ref_c: Tensor | None, ref_r: Tensor | None) -> tuple[Tensor, Tensor]:
    if ref_c is None or ref_r is None:
        raise ValueError(f"loss {name!r} needs reference log-probs (ref_chosen_logps, ref_rejected_logps)")
    return ref_c, ref_r


def _implicit_rewards(
    beta: float, pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor
) -> tuple[Tensor, Tensor]:
    # DPO's implicit reward r = beta * log(pi/ref) (Rafailov et al. 2023, Eq. 5), detached: a metric, not a loss.
    return beta * (pi_c - ref_c).detach(), beta * (pi_r - ref_r).detach()


def _margin(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor, ref_r: Tensor) -> Tensor:
    return (pi_c - pi_r) - (ref_c - ref_r)


def _smoothed_sigmoid(z: Tensor, label_smoothing: float) -> Tensor:
    # With probability eps the label is flipped: -(1-eps) log s(z) - eps log s(-z) (cDPO).
    return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing


def dpo(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, *, beta: float) -> LossTriple:
    """DPO, sigmoid loss: -log sigmoid(beta * h).

    Rafailov et al. 2023, "Direct Preference Optimization", Eq. 7. SUMMED log-probs over
    completion tokens (log pi(y|x)). Equals TRL `loss_type="sigmoid"`.
    """
    ref_c, ref_r = _need_refs("dpo", ref_c, ref_r)
    losses = -F.logsigmoid(beta * _margin(pi_c, pi_r, ref_c, ref_r))
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def cdpo(
    pi_c: Tensor,
    pi_r: Tensor,
    ref_c: Tensor | None,
    ref_r: Tensor | None,
    *,
    beta: float,
    label_smoothing: float,
) -> LossTriple:
    """Conservative DPO: labels flipped with probability eps = label_smoothing.

    loss = -(1 - eps) log s(beta h) - eps log s(-beta h) (Mitchell 2023, "A note on DPO with noisy
    preferences"; TRL's `loss_type="sigmoid"` with `label_smoothing` before 1.0). SUMMED log-probs.
    eps=0 is DPO.
    """
    ref_c, ref_r = _need_refs("cdpo", ref_c, ref_r)
    losses = _smoothed_sigmoid(beta * _margin(pi_c, pi_r, ref_c, ref_r), label_smoothing)
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def robust(
    pi_c: Tensor,
    pi_r: Tensor,
    ref_c: Tensor | None,
    ref_r: Tensor | None,
    *,
    beta: float,
    label_smoothing: float,
) -> LossTriple:
    """Robust DPO: an unbiased loss under preference noise rate eps = label_smoothing < 0.5.

    loss = [-(1 - eps) log s(beta h) + eps log s(-beta h)] / (1 - 2 eps)
    (Chowdhury et al. 2024, "Provably Robust DPO", the de-biased loss of Sec. 3; TRL
    `loss_type="robust"`). SUMMED log-probs.
    eps=0 is DPO.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {label_smoothing}")
    ref_c, ref_r = _need_refs("robust", ref_c, ref_r)
    z = beta * _margin(pi_c, pi_r, ref_c, ref_r)
    losses = (-F.logsigmoid(z) * (1 - label_smoothing) + F.logsigmoid(-z) * label_smoothing) / (
        1 - 2 * label_smoothing
    )
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def ipo(pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, *, beta: float) -> LossTriple:
    """IPO: squared loss (h - 1/(2 beta))^2, with beta playing the paper's tau.

    Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
    Preferences", Eq. 17. Uses per-token AVERAGED log-probs, as TRL does (it divides each summed
    log-ratio by its completion length, clamped at 1, for `loss_type="ipo"`; TRL says the IPO
    authors confirmed this normalised form); summed log-probs would make the loss scale with length.
    """
    ref_c, ref_r = _need_refs("ipo", ref_c, ref_r)
    losses = (_margin(pi_c, pi_r, ref_c, ref_r) - 1 / (2 * beta)) ** 2
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def hinge(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, *, beta: float
) -> LossTriple:
    """Hinge loss relu(1 - beta h) on the reference-normalised margin.

    SLiC-HF's rank-calibration loss (Zhao et al. 2023) with margin delta = 1/beta, in the
    reference-normalised form of RSO (Liu et al. 2024, "Statistical Rejection Sampling Improves
    Preference Optimization"); TRL `loss_type="hinge"`. SUMMED log-probs.
    """
    ref_c, ref_r = _need_refs("hinge", ref_c, ref_r)
    losses = torch.relu(1 - beta * _margin(pi_c, pi_r, ref_c, ref_r))
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def sigmoid_norm(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, *, beta: float
) -> LossTriple:
    """Length-normalised DPO: the DPO sigmoid loss on per-token AVERAGED log-probs.

    Lambert et al. 2024, "Tulu 3" (`dpo_norm` in open-instruct; they use beta = 5, since
    averaged log-ratios are ~length times smaller than summed ones); TRL `loss_type="sigmoid_norm"`.
    Same formula as `dpo` (Rafailov et al. 2023, Eq. 7); the registry asks for averaged log-probs.
    """
    ref_c, ref_r = _need_refs("sigmoid_norm", ref_c, ref_r)
    losses = -F.logsigmoid(beta * _margin(pi_c, pi_r, ref_c, ref_r))
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def simpo(
    pi_c: Tensor,
    pi_r: Tensor,
    ref_c: Tensor | None = None,
    ref_r: Tensor | None = None,
    *,
    beta: float,
    gamma: float,
    label_smoothing: float = 0.0,
) -> LossTriple:
    """SimPO: reference-free, length-normalised, with a target reward margin gamma.

    Meng et al. 2024, "SimPO", Eq. 6: -log s(beta * avg_c - beta * avg_r - gamma), on per-token
    AVERAGED log-probs. gamma is the margin in reward units, TRL's `simpo_gamma` convention (TRL writes
    it as beta * (avg_c - avg_r - gamma/beta)). References are ignored. Rewards are beta * avg logp,
    as TRL's CPOTrainer reports them. label_smoothing as in cDPO (TRL's CPO allows it; default 0).
    """
    z = beta * ((pi_c - pi_r) - gamma / beta)
    losses = _smoothed_sigmoid(z, label_smoothing)
    return losses, beta * pi_c.detach(), beta * pi_r.detach()


def _nll_term(pi_c: Tensor, nll: Tensor | float | None) -> Tensor:
    # Without an explicit NLL the chosen log-prob stands in: -avg logp is the per-sequence token-mean NLL.
    if nll is None:
        return -pi_c
    return torch.as_tensor(nll, dtype=pi_c.dtype, device=pi_c.device).expand_as(pi_c)


def log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x <= 0, accurate everywhere (Maechler 2012, "Accurately Computing log(1 - exp(-|a|))").

    Two branches split at x = -log 2: near 0, exp(x) rounds to 1 and log1p(-exp(x)) is -inf (float32 already
    at x > -6e-8), so use log(-expm1(x)); far below 0, expm1 loses the small difference, so use
    log1p(-exp(x)). x = 0 (probability 1) gives -inf, as it should.
    """
    near_zero = x > -0.6931471805599453
    # Each branch is evaluated on a safe input so neither produces NaN gradients in the unused lane.
    a = torch.log(-torch.expm1(torch.where(near_zero, x, torch.full_like(x, -1.0))))
    b = torch.log1p(-torch.exp(torch.where(near_zero, torch.full_like(x, -1.0), x)))
    return torch.where(near_zero, a, b)


def orpo(
    pi_c: Tensor,
    pi_r: Tensor,
    ref_c: Tensor | None = None,
    ref_r: Tensor | None = None,
    *,
    beta: float,
    nll: Tensor | float | None = None,
) -> LossTriple:
    """ORPO: NLL on chosen plus lambda (= beta) times the odds-ratio loss; reference-free.

    Hong et al. 2024, "ORPO", Eq. 6-7: L = L_SFT + lambda * L_OR with
    L_OR = -log s(log odds(y_c) - log odds(y_r)), odds(y) = P / (1 - P), P = exp(avg logp).
    Uses per-token AVERAGED log-probs (as the paper and TRL's ORPOTrainer).
    Fitting the signature: the per-pair loss is `nll_i + beta * L_OR_i`. TRL's ORPOTrainer takes the NLL as the
    token-mean cross-entropy over the chosen prompt AND answer tokens of the batch (a scalar); the preference
    step passes the mean over the answer tokens only (`nll`), so its loss is TRL's less TRL's nll_loss plus that
    (tests/parity/test_dpo_losses_trl.py). Without `nll`, -avg logp of each chosen answer is used.
    Rewards are beta * avg logp (TRL's ORPO metric).
    """
    # An answer of probability exactly 1 (avg logp 0.0, reached in float32 at logit margins above ~30, where the NLL
    # term drives chosen answers) has infinite odds: the loss is right but its gradient is inf * 0 = NaN. Moving
    # exact zeros to -1e-20 keeps every value (the odds-ratio term is then ~1e-20) and a finite gradient.
    pi_c_, pi_r_ = (x - 1e-20 * (x > -1e-20) for x in (pi_c, pi_r))
    log_odds = (pi_c_ - pi_r_) - (log1mexp(pi_c_) - log1mexp(pi_r_))
    losses = _nll_term(pi_c, nll) - beta * F.logsigmoid(log_odds)
    return losses, beta * pi_c.detach(), beta * pi_r.detach()


def apo_zero(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, *, beta: float
) -> LossTriple:
    """APO-zero: push chosen log-ratio up and rejected down, each on its own.

    D'Oosterlinck et al. 2024, "Anchored Preference Optimization", Eq. 7:
    (1 - s(beta r_c)) + s(beta r_r), r = log pi/ref. For pairs whose chosen answer beats the model's
    own outputs. SUMMED log-probs (TRL `loss_type="apo_zero"`).
    """
    ref_c, ref_r = _need_refs("apo_zero", ref_c, ref_r)
    losses = (1 - torch.sigmoid(beta * (pi_c - ref_c))) + torch.sigmoid(beta * (pi_r - ref_r))
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def apo_down(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, *, beta: float
) -> LossTriple:
    """APO-down: push chosen down and rejected down more (chosen worse than the model's outputs).

    D'Oosterlinck et al. 2024, Eq. 8: s(beta r_c) + (1 - s(beta (r_c - r_r))). SUMMED log-probs
    (TRL `loss_type="apo_down"`).
    """
    ref_c, ref_r = _need_refs("apo_down", ref_c, ref_r)
    r_c, r_r = pi_c - ref_c, pi_r - ref_r
    losses = torch.sigmoid(beta * r_c) + (1 - torch.sigmoid(beta * (r_c - r_r)))
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def bco_pair(
    pi_c: Tensor,
    pi_r: Tensor,
    ref_c: Tensor | None,
    ref_r: Tensor | None,
    *,
    beta: float,
    reward_mean: Tensor | float = 0.0,
) -> LossTriple:
    """Paired BCO: a binary classifier of chosen vs rejected implicit rewards, shifted by delta.

    Jung et al. 2024, "Binary Classifier Optimization", reward shift delta, in TRL's paired form
    (`loss_type="bco_pair"`): -log s(beta r_c - delta) - log s(-(beta r_r - delta)), r = log pi/ref.
    delta = `reward_mean`, the running mean of past batches' mean implicit reward. TRL 0.x
    kept it as hidden trainer state, updated with the current batch BEFORE computing the loss; here
    the caller does that explicitly (`LossMix.compute` does it for you: `RunningMean.update` with
    `batch_reward_mean`). TRL 1.16 dropped the shift; reward_mean=0 (the default) gives its numbers.
    SUMMED log-probs.
    """
    ref_c, ref_r = _need_refs("bco_pair", ref_c, ref_r)
    delta = torch.as_tensor(reward_mean, dtype=pi_c.dtype, device=pi_c.device).detach()
    z_c, z_r = beta * (pi_c - ref_c), beta * (pi_r - ref_r)
    losses = -F.logsigmoid(z_c - delta) - F.logsigmoid(-(z_r - delta))
    return (losses, *_implicit_rewards(beta, pi_c, pi_r, ref_c, ref_r))


def batch_reward_mean(
    pi_c: Tensor, pi_r: Tensor, ref_c: Tensor | None, ref_r: Tensor | None, *, beta: float
) -> float:
    """Mean implicit reward over chosen and rejected of one batch: BCO's running-mean input."""
    ref_c, ref_r = _need_refs("bco_pair", ref_c, ref_r)
    rewards = torch.cat([beta * (pi_c - ref_c), beta * (pi_r - ref_r)]).detach()
    return float(rewards.mean())


def sft(
    pi_c: Tensor,
    pi_r: Tensor,
    ref_c: Tensor | None = None,
    ref_r: Tensor | None = None,
    *,
    beta: float,
    nll: Tensor | float | None = None,
) -> LossTriple:
    """NLL on the chosen answer, for mixing with a preference loss (RPO, Pang et al. 2024; MPO).

    Per-token AVERAGED log-probs: the loss of pair i is -avg logp(chosen_i), the per-sequence
    token-mean NLL. TRL's `loss_type="sft"` (and `rpo_alpha`) use the token-mean cross-entropy over
    all chosen tokens of the batch, a scalar; pass it as `nll` to match TRL exactly. beta is unused.
    Rewards are zero: an NLL term has no implicit preference reward (TRL's `sft` branch intends
    zeros too, though its final line overwrites them with the DPO rewards).
    """
    del beta, pi_r, ref_c, ref_r
    zeros = torch.zeros_like(pi_c).detach()
    return _nll_term(pi_c, nll), zeros, zeros.clone()

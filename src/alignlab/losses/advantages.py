"""Advantage estimators for online RL: GAE (PPO), group-normalised (GRPO, Dr. GRPO), leave-one-out
(RLOO), globally normalised returns (REINFORCE++ and its group-baseline variant), whitening, and
reward shaping with a per-token KL penalty.

Pure functions on tensors, computed without gradient. Shapes: ``B`` sequences, ``T`` response tokens
(right-padded), ``mask`` [B, T] is 1.0 on response tokens. Sequence-level rewards are [B]. Grouped
estimators take the ``K = group_size`` samples of one prompt as *contiguous* rows (rows
``g*K .. g*K+K-1`` belong to prompt ``g``), as rollout generation produces them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from alignlab.errors import AlignlabError
from alignlab.ops.masked import masked_whiten

__all__ = [
    "ESTIMATORS",
    "AdvantageInputs",
    "AdvantageSpec",
    "get_estimator",
    "discounted_returns",
    "dr_grpo_advantages",
    "gae",
    "group_normalized_advantages",
    "grpo_advantages",
    "reinforce_pp_advantages",
    "reinforce_pp_baseline_advantages",
    "rloo_advantages",
    "shape_rewards",
    "whiten",
    "zero_spread_fraction",
]


@torch.no_grad()
def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, *, gamma: float = 1.0, lam: float | Tensor = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, "High-Dimensional Continuous Control
    Using GAE", Eq. 16): ``delta_t = r_t + gamma V_{t+1} - V_t``, ``A_t = delta_t + gamma lam A_{t+1}``.

    The value after the last response token is 0 (the episode ends). Masked positions are skipped:
    the recursion carries ``V_{t+1}`` and ``A_{t+1}`` across them, so holes inside a response (e.g.
    tool output) and right padding both work; values at masked positions are ignored.

    Args:
        rewards: [B, T] per-token rewards (see :func:`shape_rewards`).
        values: [B, T] value-model predictions at rollout time.
        mask: [B, T] response mask.
        lam: a float, or [B] one lambda per sequence (VAPO's length-adaptive lambda).
    Returns:
        (advantages [B, T], returns [B, T] = advantages + values), both 0 where ``mask`` is 0.
    """
    rewards = _real(rewards)
    mask = mask.to(rewards.dtype)
    keep = mask > 0
    values = torch.where(keep, values.to(rewards.dtype), torch.zeros_like(rewards))
    next_value = torch.zeros_like(rewards[:, 0])
    last_adv = torch.zeros_like(rewards[:, 0])
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv_t = delta + gamma * lam * last_adv
        next_value = torch.where(keep[:, t], values[:, t], next_value)
        last_adv = torch.where(keep[:, t], adv_t, last_adv)
        advantages[:, t] = adv_t * mask[:, t]
    return advantages, (advantages + values) * mask


@torch.no_grad()
def discounted_returns(rewards: Tensor, mask: Tensor, *, gamma: float = 1.0) -> Tensor:
    """Reward-to-go ``G_t = sum_{s >= t} gamma^(s - t) r_s`` over response tokens, [B, T] -> [B, T].

    Masked positions are skipped (the sum carries across them) and come back as 0.
    """
    rewards = _real(rewards)
    mask = mask.to(rewards.dtype)
    running = torch.zeros_like(rewards[:, 0])
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        candidate = rewards[:, t] + gamma * running
        running = torch.where(mask[:, t] > 0, candidate, running)
        out[:, t] = candidate * mask[:, t]
    return out


@torch.no_grad()
def shape_rewards(
    seq_rewards: Tensor, mask: Tensor, kl: Tensor | None = None, kl_coef: float = 0.0
) -> Tensor:
    """Per-token rewards: ``-kl_coef * kl_t`` on every response token plus the sequence reward on the
    last response token (Ziegler et al. 2019, Eq. 2; Ouyang et al. 2022, Eq. 2).

    Args:
        seq_rewards: [B] scalar reward of each response (reward model, verifier, ...).
        mask: [B, T] response mask. A row with no response token (an answer `mask_truncated` took out of the
            loss) gets no reward: its row of the result is all zero, as its advantages and loss terms are.
        kl: [B, T] per-token KL estimate, e.g. ``policy.kl_penalty(logp, ref_logp, "k1")``; None for none.
        kl_coef: the KL coefficient beta (e.g. ``AdaptiveKLController.value``).
    """
    mask = mask.to(_real(seq_rewards).dtype)
    rewards = torch.zeros_like(mask)
    if kl is not None and kl_coef != 0.0:
        rewards = -kl_coef * kl.to(mask.dtype) * mask
    positions = torch.arange(1, mask.shape[1] + 1, device=mask.device, dtype=mask.dtype)
    last = (mask * positions).argmax(-1)
    has_response = (mask.sum(-1) > 0).to(mask.dtype)
    rewards[torch.arange(mask.shape[0], device=mask.device), last] += seq_rewards.to(mask.dtype) * has_response
    return rewards


def whiten(x: Tensor, mask: Tensor | None = None, *, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """``(x - mean) / sqrt(var + eps)`` over mask-1 positions (Bessel-corrected variance, as TRL; OpenRLHF divides
    by the count); ``shift_mean=False`` keeps the mean. Masked positions come back as 0."""
    if mask is None:
        mask = torch.ones_like(x)
    if int(mask.sum().item()) < 2:
        raise AlignlabError("whiten: needs at least 2 unmasked elements")
    return masked_whiten(x, mask, shift_mean=shift_mean, eps=eps) * mask.to(x.dtype)


def _groups(rewards: Tensor, group_size: int, min_size: int, who: str) -> Tensor:
    """View [N] rewards as [N / K, K] groups of contiguous samples, with a clear error when impossible."""
    if rewards.dim() != 1:
        raise AlignlabError(f"{who}: rewards must be 1-D [N] (got shape {tuple(rewards.shape)})")
    if group_size < min_size or rewards.numel() % group_size != 0:
        raise AlignlabError(
            f"{who}: group_size must be >= {min_size} and divide the number of rewards "
            f"(got group_size={group_size}, N={rewards.numel()})"
        )
    return _real(rewards).reshape(-1, group_size)


def _real(x: Tensor) -> Tensor:
    """Integer or bool rewards (0/1 verifiers) as float32: in their own dtype the KL penalty, values and discounts
    were truncated to whole numbers."""
    return x if x.is_floating_point() else x.float()


@torch.no_grad()
def group_normalized_advantages(
    rewards: Tensor, group_size: int, *, scale_by_std: bool = True, eps: float = 1e-6
) -> Tensor:
    """Per-sequence advantages relative to the other samples of the same prompt, [N] -> [N].

    ``scale_by_std=True``: ``(r - mean_g) / (std_g + eps)`` with the Bessel-corrected group std
    (GRPO, Shao et al. 2024, "DeepSeekMath", Sec. 4.1.2, outcome supervision).
    ``scale_by_std=False``: ``r - mean_g`` (Dr. GRPO, Liu et al. 2025, "Understanding R1-Zero-Like
    Training", Sec. 3.1: the std division over-weights prompts that are nearly all right or all wrong).
    Groups whose rewards are all equal get advantage 0 (no learning signal).
    """
    groups = _groups(rewards, group_size, 2, "group_normalized_advantages")
    centred = groups - groups.mean(-1, keepdim=True)
    if scale_by_std:
        centred = centred / (groups.std(-1, keepdim=True) + eps)
    return _zero_if_equal(groups, centred).reshape(-1)


def _zero_if_equal(groups: Tensor, adv: Tensor) -> Tensor:
    """Exactly 0 for groups whose rewards are all equal: a rounded float32 mean (8 x 0.3 does not average to 0.3)
    leaves r - mean a tiny constant, which the std division (std exactly 0, so by eps) blows up to a same-sign
    advantage for every sample of the prompt (8 rewards of 100.1 gave +7.6 each)."""
    return adv.masked_fill((groups == groups[:, :1]).all(-1, keepdim=True), 0.0)


def grpo_advantages(rewards: Tensor, group_size: int, *, eps: float = 1e-6) -> Tensor:
    """GRPO advantages ``(r - mean_g) / (std_g + eps)``; see :func:`group_normalized_advantages`."""
    return group_normalized_advantages(rewards, group_size, scale_by_std=True, eps=eps)


def dr_grpo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """Dr. GRPO advantages ``r - mean_g`` (no std division); pair with ``loss_agg="seq-mean-token-sum-norm"``."""
    return group_normalized_advantages(rewards, group_size, scale_by_std=False)


@torch.no_grad()
def rloo_advantages(rewards: Tensor, group_size: int) -> Tensor:
    """REINFORCE leave-one-out (Ahmadian et al. 2024, "Back to Basics", Eq. 8; Kool et al. 2019):
    ``A_i = r_i - mean_{j != i} r_j = K / (K - 1) * (r_i - mean_g)``, [N] -> [N]. Needs K >= 2."""
    groups = _groups(rewards, group_size, 2, "rloo_advantages")
    baseline = (groups.sum(-1, keepdim=True) - groups) / (group_size - 1)
    return _zero_if_equal(groups, groups - baseline).reshape(-1)


@torch.no_grad()
def reinforce_pp_advantages(
    seq_rewards: Tensor,
    mask: Tensor,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025, "REINFORCE++", Sec. 3): per-token rewards (sequence reward on the last
    token, minus ``kl_coef * kl`` on every token), reward-to-go returns, then the advantages are the
    returns whitened over *all* response tokens of the global batch (no critic, no per-prompt group).

    Returns:
        (advantages [B, T], returns [B, T]), 0 where ``mask`` is 0. With fewer than two response tokens in the
        batch (every answer truncated under mask_truncated) there is nothing to whiten over: the returns as they are.
    """
    token_rewards = shape_rewards(seq_rewards, mask, kl, kl_coef)
    returns = discounted_returns(token_rewards, mask, gamma=gamma)
    return (whiten(returns, mask) if mask.sum() > 1 else returns * mask), returns


@torch.no_grad()
def reinforce_pp_baseline_advantages(
    seq_rewards: Tensor,
    mask: Tensor,
    group_size: int,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    gamma: float = 1.0,
) -> tuple[Tensor, Tensor]:
    """REINFORCE++-baseline (Hu 2025): subtract each prompt's group-mean reward from its samples'
    rewards first (a baseline that removes prompt difficulty), then proceed as
    :func:`reinforce_pp_advantages` (shape, reward-to-go, global whitening)."""
    groups = _groups(seq_rewards, group_size, 1, "reinforce_pp_baseline_advantages")
    centred = (groups - groups.mean(-1, keepdim=True)).reshape(-1)
    return reinforce_pp_advantages(centred, mask, kl=kl, kl_coef=kl_coef, gamma=gamma)


@torch.no_grad()
def zero_spread_fraction(rewards: Tensor, group_size: int, *, atol: float = 0.0) -> float:
    """Fraction of prompt groups whose rewards are all equal (max - min <= atol).

    Such groups give zero group-normalised advantage, so no gradient: a high value means the task is
    too easy or too hard for the current policy (the DAPO "dynamic sampling" signal).
    """
    groups = _groups(rewards, group_size, 1, "zero_spread_fraction")
    spread = groups.max(-1).values - groups.min(-1).values
    return float((spread <= atol).float().mean().item())


# ---------------------------------------------------------------- the estimator registry (config `estimator`)


@dataclass(frozen=True)
class AdvantageInputs:
    """What any estimator may read; each takes what it needs. Rows are prompt-major groups of `group_size`."""

    rewards: Tensor
    """[N] sequence rewards."""
    mask: Tensor
    """[N, T] 1.0 on response tokens."""
    group_size: int
    kl: Tensor | None = None
    """[N, T] per-token KL to the reference, when it is shaped into the reward (else None)."""
    kl_coef: float = 0.0
    values: Tensor | None = None
    """[N, T] critic values (estimators with needs_critic)."""
    gamma: float = 1.0
    lam: float = 0.95
    whiten: bool = True
    """Whiten GAE advantages over the batch (PPO practice)."""
    lam_critic: float | None = None
    """gae: lambda of the critic's returns when decoupled from the policy's (VAPO, Yuan et al. 2025, Sec. 4.1)."""
    lam_alpha: float | None = None
    """gae: length-adaptive policy lambda = 1 - 1 / (alpha * length) per sequence (VAPO Eq. 7)."""
    scale_rewards: str = "group"
    """grpo only: divide by the group std (group), the batch std (batch), or not at all (none)."""


@dataclass(frozen=True)
class AdvantageSpec:
    """An estimator and what the RL loop must provide for it (read by the loop instead of comparing names)."""

    fn: Callable[[AdvantageInputs], tuple[Tensor, Tensor | None]]
    """inputs -> (advantages [N, T], critic returns [N, T] or None)."""
    grouped: bool
    """Needs >= 2 samples per prompt (a group baseline)."""
    needs_critic: bool
    """Needs critic values (and trains the critic on the returns)."""


def _seq_reward(x: AdvantageInputs) -> Tensor:
    return x.rewards - x.kl_coef * x.kl.sum(-1) if x.kl is not None else x.rewards


def _gae_spec(x: AdvantageInputs) -> tuple[Tensor, Tensor]:
    """GAE; with lam_critic and/or lam_alpha the critic's returns and the policy's advantages use different
    lambdas (VAPO's decoupled GAE: returns from lam_critic, usually 1.0, unbiased for the value target)."""
    rewards = shape_rewards(x.rewards, x.mask, x.kl, x.kl_coef)
    lam: float | Tensor = x.lam
    if x.lam_alpha is not None:  # clamped at 0: answers shorter than 1 / alpha tokens would get a negative lambda
        lam = (1.0 - 1.0 / (x.lam_alpha * x.mask.sum(-1).clamp(min=1.0))).clamp(min=0.0)
    adv, returns = gae(rewards, x.values, x.mask, gamma=x.gamma, lam=lam)
    if x.lam_critic is not None or x.lam_alpha is not None:  # lam_alpha is the policy's alone (VAPO Sec. 4.1)
        lam_critic = x.lam_critic if x.lam_critic is not None else x.lam
        returns = gae(rewards, x.values, x.mask, gamma=x.gamma, lam=lam_critic)[1]
    return (whiten(adv, x.mask) if x.whiten and x.mask.sum() > 1 else adv), returns


@torch.no_grad()
def _grpo_spec(x: AdvantageInputs) -> tuple[Tensor, None]:
    """GRPO; scale_rewards=batch divides the group-centred rewards by the batch std (Hu et al. 2025, REINFORCE++
    and Liu et al. 2025 discuss both), none is Dr. GRPO's centring alone."""
    r = _seq_reward(x)
    if x.scale_rewards == "group":
        adv = grpo_advantages(r, x.group_size)
    else:
        adv = dr_grpo_advantages(r, x.group_size)
        if x.scale_rewards == "batch":
            adv = adv / (r.std() + 1e-6)
    return adv[:, None] * x.mask, None


def _per_sequence(fn: Callable[[Tensor, int], Tensor]) -> Callable[[AdvantageInputs], tuple[Tensor, None]]:
    return lambda x: (fn(_seq_reward(x), x.group_size)[:, None] * x.mask, None)


ESTIMATORS: dict[str, AdvantageSpec] = {
    "gae": AdvantageSpec(_gae_spec, grouped=False, needs_critic=True),
    "grpo": AdvantageSpec(_grpo_spec, grouped=True, needs_critic=False),
    "dr_grpo": AdvantageSpec(_per_sequence(dr_grpo_advantages), grouped=True, needs_critic=False),
    "rloo": AdvantageSpec(_per_sequence(rloo_advantages), grouped=True, needs_critic=False),
    "reinforce_pp": AdvantageSpec(
        lambda x: (reinforce_pp_advantages(x.rewards, x.mask, kl=x.kl, kl_coef=x.kl_coef, gamma=x.gamma)[0], None),
        grouped=False, needs_critic=False),
    "reinforce_pp_baseline": AdvantageSpec(
        lambda x: (reinforce_pp_baseline_advantages(x.rewards, x.mask, x.group_size, kl=x.kl, kl_coef=x.kl_coef,
                                                    gamma=x.gamma)[0], None),
        grouped=True, needs_critic=False),
}


def get_estimator(name: str) -> AdvantageSpec:
    if name not in ESTIMATORS:
        raise AlignlabError(f"estimator: unknown {name!r}; expected one of {sorted(ESTIMATORS)}")
    return ESTIMATORS[name]

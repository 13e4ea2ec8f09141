"""Policy-gradient losses for online RL: PPO clip (clip-higher, dual clip), GSPO and CISPO with their
registry (``POLICY_LOSSES`` / ``get_policy_loss``), clipped value loss, entropy and loss aggregation.
The KL estimators and KL-coefficient controllers live in :mod:`alignlab.losses.kl` and are
re-exported here unchanged.

Every function is pure: tensors in, tensors out; no module, config or model inside. Shapes use
``B`` (sequences in the batch) and ``T`` (response tokens, right-padded); ``mask`` is 1.0 on real
response tokens and 0.0 on padding. Per-token quantities come back unreduced ``[B, T]`` so the caller
chooses how to aggregate them with :func:`aggregate_loss` (the choice changes the gradient; see there).

Log-probabilities are of the *sampled* tokens (``ops.logprobs.token_logprobs``), float32.
``entropy_from_logits`` is re-exported from ``alignlab.ops.logprobs`` for convenience.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from alignlab.errors import AlignlabError
from alignlab.losses.kl import (  # re-exported: callers import the KL parts from here
    KL_ESTIMATORS,
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
)
from alignlab.ops.logprobs import entropy_from_logits
from alignlab.ops.masked import masked_mean

LossAgg = Literal[
    "token-mean", "token-sum-norm", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
]
LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "token-sum-norm",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "AdaptiveKLController",
    "FixedKLController",
    "POLICY_LOSSES",
    "PolicyLossOutput",
    "PolicyLossSpec",
    "aggregate_loss",
    "cispo",
    "get_policy_loss",
    "gspo",
    "entropy_bonus",
    "entropy_from_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "ppo_clip",
    "value_loss",
]


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` over mask-1 positions, or over all positions when there is no mask."""
    return x.mean() if mask is None else masked_mean(x, mask)


class PolicyLossOutput(NamedTuple):
    """Result of every policy objective. ``loss`` keeps its graph; the diagnostics are detached scalars."""

    loss: Tensor
    """[B, T] per-token loss (to be minimised); aggregate with :func:`aggregate_loss`."""
    clip_frac: Tensor
    """Scalar: fraction of (masked) tokens where the ratio clip was active (for ppo_clip/gspo the
    gradient is zeroed there; for cispo only the weight is capped, the gradient stays)."""
    approx_kl: Tensor
    """Scalar: k3 estimate of KL(old || new) over (masked) tokens, ``(r - 1) - log r`` with r = new/old."""
    dual_clip_frac: Tensor
    """Scalar: fraction of (masked) tokens where the dual clip bound was active (0 if disabled)."""


"""Former name of :class:`PolicyLossOutput`, kept for existing callers."""


def _clipped_surrogate(
    ratio: Tensor, advantages: Tensor, lo: float, hi: float, dual_clip: float | None
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-token ``-min(r A, clip(r, lo, hi) A)``, optionally dual-clipped; (loss, clip_active, dual_active)."""
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, lo, hi)
    loss = torch.maximum(unclipped, clipped)
    clip_active = (clipped > unclipped).to(ratio.dtype)
    dual_active = torch.zeros_like(clip_active)
    if dual_clip is not None:
        # -max(L, cA) == min(loss, -cA); only applied where A < 0 (Ye et al. 2020, Eq. 5).
        bound = -dual_clip * advantages
        negative = (advantages < 0).expand_as(loss)
        dual_active = (negative & (loss > bound)).to(ratio.dtype)
        loss = torch.where(negative, torch.minimum(loss, bound), loss)
    return loss, clip_active, dual_active


def _check_clip(name: str, epsilon_low: float, epsilon_high: float | None, dual_clip: float | None) -> float:
    """Validate the clip range; returns epsilon_high (defaulting to epsilon_low)."""
    high = epsilon_low if epsilon_high is None else epsilon_high
    if epsilon_low < 0 or high < 0:
        raise AlignlabError(f"{name}: epsilon_low and epsilon_high must be >= 0 (got {epsilon_low}, {high})")
    if dual_clip is not None and dual_clip <= 1.0:
        raise AlignlabError(f"{name}: dual_clip must be > 1 (got {dual_clip})")
    return high


def _log_ratio(logprobs: Tensor, old_logprobs: Tensor) -> Tensor:
    # Clamp before exp so one wildly off-policy token gives a large finite ratio rather than inf/NaN
    # (as verl does); |log r| > 20 is far outside any clip range, so only that token's gradient changes.
    return torch.clamp(logprobs - old_logprobs, -20.0, 20.0)


def _seq_adv(advantages: Tensor) -> Tensor:
    return advantages[:, None] if advantages.dim() == 1 else advantages


def ppo_clip(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
) -> PolicyLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", Eq. 7)
    with DAPO's clip-higher (Yu et al. 2025, Eq. 10) and the dual clip.

    With ratio ``r = exp(logprobs - old_logprobs)`` the objective per token is
    ``L^CLIP = min(r * A, clip(r, 1 - epsilon_low, 1 + epsilon_high) * A)``; the returned loss is
    ``-L^CLIP``. ``epsilon_high`` (default ``epsilon_low``) > ``epsilon_low`` is DAPO's decoupled
    "clip-higher" (0.2 / 0.28 in the paper), which leaves low-probability tokens room to grow.

    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", Eq. 5): for
    negative advantages the objective is further bounded below, ``max(L^CLIP, c * A)`` with ``c > 1``,
    so a huge ratio on a bad action cannot produce an unbounded loss. Positive advantages are untouched.

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: [B, T] the same under the policy that generated the rollout (no grad).
        advantages: [B, T] per-token advantages, or [B] / [B, 1] per-sequence (broadcast over T).
        mask: [B, T] response mask for the diagnostics; None counts every position.
        epsilon_low: epsilon of the lower clip bound ``1 - epsilon_low``.
        epsilon_high: epsilon of the upper clip bound ``1 + epsilon_high`` (None: ``epsilon_low``).
        dual_clip: constant ``c`` (> 1, typically 3) of the dual clip; None disables it.
    """
    high = _check_clip("ppo_clip", epsilon_low, epsilon_high, dual_clip)
    log_ratio = _log_ratio(logprobs, old_logprobs)
    loss, clip_active, dual_active = _clipped_surrogate(
        torch.exp(log_ratio), _seq_adv(advantages), 1.0 - epsilon_low, 1.0 + high, dual_clip
    )
    with torch.no_grad():
        # k3 of KL(old || new): samples came from old, r = new / old.
        approx_kl = _masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        clip_frac = _masked_mean(clip_active, mask)
        dual_frac = _masked_mean(dual_active, mask)
    return PolicyLossOutput(loss, clip_frac, approx_kl, dual_frac)


def gspo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
) -> PolicyLossOutput:
    """GSPO: sequence-level importance ratio, clipped per sequence (Zheng et al. 2025, "Group Sequence
    Policy Optimization", Eq. 5-7).

    ``s_i = (pi(y_i|x) / pi_old(y_i|x))^(1/|y_i|) = exp(mean_t log r_it)`` (Eq. 7, the geometric mean of
    the token ratios over the sequence's real tokens) replaces PPO's token ratio in the clipped
    surrogate ``min(s_i A_i, clip(s_i, 1 - eps_low, 1 + eps_high) A_i)`` (Eq. 5).

    The loss comes back per token in the paper's GSPO-token form (as verl implements it):
    token t of sequence i carries ``s_it = sg(s_i) * pi(y_it) / sg(pi(y_it))``, whose value is ``s_i`` and
    whose gradient is ``s_i * grad log pi(y_it)``. Aggregated with ``seq-mean-token-mean`` (the paper's
    ``1/G sum_i`` of a per-sequence term) and a per-sequence advantage, the gradient is exactly that of
    Eq. 5, since ``grad s_i = s_i * mean_t grad log pi(y_it)``. With one token per sequence it equals
    :func:`ppo_clip`. The paper's clip range is tiny (3e-4 / 4e-4) because ``s_i`` is a per-token mean.

    Args: as :func:`ppo_clip`; ``mask`` decides which tokens enter the geometric mean (None: all).
    """
    high = _check_clip("gspo", epsilon_low, epsilon_high, dual_clip)
    m = torch.ones_like(logprobs) if mask is None else mask.to(logprobs.dtype)
    log_ratio = _log_ratio(logprobs, old_logprobs)
    seq_log_ratio = (log_ratio * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp(min=1.0)
    # Value s_i on every token, gradient through this token's log-prob only (GSPO-token).
    token_log_s = logprobs - logprobs.detach() + seq_log_ratio.detach()
    ratio = torch.exp(torch.clamp(token_log_s, max=20.0))
    loss, clip_active, dual_active = _clipped_surrogate(
        ratio, _seq_adv(advantages), 1.0 - epsilon_low, 1.0 + high, dual_clip
    )
    with torch.no_grad():
        approx_kl = _masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        clip_frac = _masked_mean(clip_active, mask)
        dual_frac = _masked_mean(dual_active, mask)
    return PolicyLossOutput(loss, clip_frac, approx_kl, dual_frac)


def cispo(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    epsilon_low: float = 0.2,
    epsilon_high: float | None = None,
    dual_clip: float | None = None,
) -> PolicyLossOutput:
    """CISPO: a clipped, stop-gradient importance weight on a REINFORCE term; no token is dropped
    (MiniMax et al. 2025, "MiniMax-M1", Sec. 3, Eq. 4-5).

    Per token ``loss = -sg(r_hat) * A * log pi(y_t)`` with ``r_hat = clip(r, 1 - eps_low, 1 + eps_high)``
    (Eq. 5). Unlike PPO, a token whose ratio left the range still gets gradient ``-r_hat * A * grad log
    pi``: only its weight is capped. Where the clip is inactive the gradient equals that of the
    unclipped importance-sampled objective ``-r * A`` (since ``grad r = r * grad log pi``). The loss
    *value* is the paper's surrogate (not ``-r A``); use ``approx_kl``/``clip_frac`` to monitor. The paper
    imposes no lower bound (a large ``eps_low``, here 1.0 so the weight is only kept >= 0) and tunes
    ``eps_high`` only. ``dual_clip`` is not part of CISPO (its weight is already bounded): giving one
    is an error.
    """
    high = _check_clip("cispo", epsilon_low, epsilon_high, None)
    if dual_clip is not None:
        raise AlignlabError("cispo: dual_clip does not apply (the IS weight is already capped); leave it unset")
    log_ratio = _log_ratio(logprobs, old_logprobs)
    ratio = torch.exp(log_ratio.detach())
    weight = torch.clamp(ratio, 1.0 - epsilon_low, 1.0 + high)
    loss = -weight * _seq_adv(advantages) * logprobs
    with torch.no_grad():
        approx_kl = _masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        clip_frac = _masked_mean((weight != ratio).to(logprobs.dtype), mask)
    return PolicyLossOutput(loss, clip_frac, approx_kl, torch.zeros_like(approx_kl))


@dataclass(frozen=True)
class PolicyLossSpec:
    """One policy objective and the settings its paper uses (the loop reads these, never the name)."""

    name: str
    """Registry key, the value of the config's ``policy_loss``."""
    fn: Callable[..., PolicyLossOutput]
    """``fn(logprobs, old_logprobs, advantages, mask, *, epsilon_low, epsilon_high, dual_clip)``."""
    loss_agg: str
    """The :func:`aggregate_loss` mode the paper uses (a sensible default for ``loss_agg``)."""
    epsilon_low: float
    """The paper's lower clip epsilon."""
    epsilon_high: float
    """The paper's upper clip epsilon."""
    supports_dual_clip: bool
    """False: passing ``dual_clip`` raises (the objective has no such bound)."""
    summary: str
    """One line for ``--help`` and docs."""


POLICY_LOSSES: dict[str, PolicyLossSpec] = {
    s.name: s
    for s in (
        PolicyLossSpec("ppo_clip", ppo_clip, "token-mean", 0.2, 0.2, True,
                       "PPO clipped surrogate with DAPO clip-higher and optional dual clip"),
        PolicyLossSpec("gspo", gspo, "seq-mean-token-mean", 3e-4, 4e-4, True,
                       "GSPO: sequence-level (geometric-mean) ratio clipped per sequence"),
        PolicyLossSpec("cispo", cispo, "token-mean", 1.0, 0.28, False,
                       "CISPO: clipped stop-gradient IS weight on REINFORCE, no token dropped"),
    )
}


def get_policy_loss(name: str) -> PolicyLossSpec:
    """The spec registered under ``name``; an AlignlabError listing the valid names otherwise."""
    try:
        return POLICY_LOSSES[name]
    except (KeyError, TypeError):
        raise AlignlabError(
            f"unknown policy_loss {name!r}; valid: {', '.join(sorted(POLICY_LOSSES))}"
        ) from None


def value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor | None = None,
    *,
    clip_eps: float | None = 0.2,
) -> tuple[Tensor, Tensor]:
    """Clipped value loss as in OpenAI baselines PPO2 and OpenRLHF's ``ValueLoss``.

    ``v_clip = old + clip(values - old, -eps, eps)``; per token
    ``loss = 0.5 * max((values - R)^2, (v_clip - R)^2)`` (pessimistic: the clip only ever removes
    gradient). ``clip_eps=None`` gives the plain ``0.5 * (values - R)^2``.

    Args:
        values: [B, T] current value predictions (with grad).
        old_values: [B, T] predictions at rollout time.
        returns: [B, T] regression targets (e.g. from :func:`alignlab.losses.advantages.gae`).
        mask: [B, T] for the clip fraction; None counts every position.
    Returns:
        ([B, T] per-token loss, scalar detached fraction of masked tokens where the clipped term won).
    """
    plain = (values - returns) ** 2
    if clip_eps is None:
        return 0.5 * plain, torch.zeros((), dtype=values.dtype, device=values.device)
    v_clip = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    clipped = (v_clip - returns) ** 2
    with torch.no_grad():
        frac = _masked_mean((clipped > plain).to(values.dtype), mask)
    return 0.5 * torch.maximum(plain, clipped), frac


def entropy_bonus(
    logits: Tensor,
    mask: Tensor,
    loss_agg: LossAgg = "token-mean",
    *,
    chunk_size: int | None = None,
    norm: float | None = None,
) -> Tensor:
    """Mean policy entropy over response tokens from logits [B, T, V] (float32), aggregated like the loss.

    Subtract ``coef * entropy_bonus(...)`` from the loss to encourage exploration (Schulman et al. 2017,
    Eq. 9, the ``c2 S[pi](s_t)`` term). Keeps the graph; detach it for a diagnostic.
    """
    return aggregate_loss(entropy_from_logits(logits, chunk_size=chunk_size), mask, loss_agg, norm=norm)


def aggregate_loss(
    loss: Tensor, mask: Tensor, loss_agg: LossAgg = "token-mean", *, norm: float | None = None
) -> Tensor:
    """Reduce a [B, T] per-token loss to a scalar; the mode decides how sequences of different length weigh.

    - ``"token-mean"``: ``sum(loss * mask) / sum(mask)`` over the whole batch: every token weighs the
      same (DAPO, Yu et al. 2025; PPO in OpenRLHF/TRL).
    - ``"seq-mean-token-mean"``: mean over sequences of each sequence's token mean: every sequence weighs
      the same, so tokens of short answers weigh more (original GRPO, Shao et al. 2024, Eq. 3).
    - ``"seq-mean-token-sum"``: mean over sequences of each sequence's token sum.
    - ``"seq-mean-token-sum-norm"``: ``sum(loss * mask) / (B * norm)`` with a constant ``norm``
      (default: ``T``, the padded/maximum response length) - Dr. GRPO (Liu et al. 2025, Sec. 3.1),
      which removes GRPO's length bias by dividing by a constant instead of each sequence's length.
    - ``"token-sum-norm"``: ``sum(loss * mask) / norm``, ``norm`` REQUIRED: DAPO's token-level loss (Yu et
      al. 2025, Sec. 3.3) split across micro-batches. The caller passes the same constant for every
      micro-batch of one optimizer step: the number of real response tokens in the whole step's batch
      (all micro-batches; under DDP, which averages gradients over ranks, the global count divided by
      the world size). Each micro-batch's loss is then backpropagated as is (weight 1, no division by
      the number of micro-batches), and the summed gradients equal those of ``token-mean`` over the
      whole batch exactly, whatever the split.
    """
    mask = mask.to(loss.dtype)
    if loss_agg == "token-mean":
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)
    if loss_agg == "token-sum-norm":
        if norm is None or float(norm) <= 0:
            raise AlignlabError(
                f"aggregate_loss: token-sum-norm needs norm > 0, the step's total response tokens (got {norm})"
            )
        return (loss * mask).sum() / float(norm)
    if loss_agg == "seq-mean-token-mean":
        per_seq = (loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
        return per_seq.mean()
    if loss_agg == "seq-mean-token-sum":
        return (loss * mask).sum(-1).mean()
    if loss_agg == "seq-mean-token-sum-norm":
        denom = float(mask.shape[-1]) if norm is None else float(norm)
        if denom <= 0:
            raise AlignlabError(f"aggregate_loss: norm must be > 0 (got {norm})")
        return (loss * mask).sum() / (mask.shape[0] * denom)
    raise AlignlabError(f"aggregate_loss: unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGG_MODES}")

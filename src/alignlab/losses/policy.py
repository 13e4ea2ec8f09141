"""Policy-gradient losses for online RL: PPO clip (with dual clip), clipped value loss, KL estimators,
entropy, loss aggregation, and KL-coefficient controllers.

Every function is pure: tensors in, tensors out; no module, config or model inside. Shapes use
``B`` (sequences in the batch) and ``T`` (response tokens, right-padded); ``mask`` is 1.0 on real
response tokens and 0.0 on padding. Per-token quantities come back unreduced ``[B, T]`` so the caller
chooses how to aggregate them with :func:`aggregate_loss` (the choice changes the gradient; see there).

Log-probabilities are of the *sampled* tokens (``ops.logprobs.token_logprobs``), float32.
``entropy_from_logits`` is re-exported from ``alignlab.ops.logprobs`` for convenience.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from alignlab.errors import AlignlabError
from alignlab.ops.logprobs import entropy_from_logits
from alignlab.ops.masked import masked_mean

LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
LOSS_AGG_MODES: tuple[str, ...] = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")

__all__ = [
    "KL_ESTIMATORS",
    "LOSS_AGG_MODES",
    "AdaptiveKLController",
    "FixedKLController",
    "PPOLossOutput",
    "aggregate_loss",
    "entropy_bonus",
    "entropy_from_logits",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
    "ppo_clip_loss",
    "value_loss",
]


def _masked_mean(x: Tensor, mask: Tensor | None) -> Tensor:
    """Mean of ``x`` over mask-1 positions, or over all positions when there is no mask."""
    return x.mean() if mask is None else masked_mean(x, mask)


class PPOLossOutput(NamedTuple):
    """Result of :func:`ppo_clip_loss`. ``loss`` keeps its graph; the diagnostics are detached scalars."""

    loss: Tensor
    """[B, T] per-token loss (to be minimised); aggregate with :func:`aggregate_loss`."""
    clip_frac: Tensor
    """Scalar: fraction of (masked) tokens where the ratio clip was active (gradient zeroed)."""
    approx_kl: Tensor
    """Scalar: k3 estimate of KL(old || new) over (masked) tokens, ``(r - 1) - log r`` with r = new/old."""
    dual_clip_frac: Tensor
    """Scalar: fraction of (masked) tokens where the dual clip bound was active (0 if disabled)."""


def ppo_clip_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor | None = None,
    *,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
) -> PPOLossOutput:
    """PPO clipped surrogate (Schulman et al. 2017, "Proximal Policy Optimization Algorithms", Eq. 7).

    With ratio ``r = exp(logprobs - old_logprobs)`` the objective per token is
    ``L^CLIP = min(r * A, clip(r, 1 - eps, 1 + eps_high) * A)``; the returned loss is ``-L^CLIP``.
    ``clip_eps_high`` (default ``clip_eps``) allows the asymmetric "clip-higher" of DAPO (Yu et al. 2025).

    Dual clip (Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL", Eq. 5): for
    negative advantages the objective is further bounded below, ``max(L^CLIP, c * A)`` with ``c > 1``,
    so a huge ratio on a bad action cannot produce an unbounded loss. Positive advantages are untouched.

    Args:
        logprobs: [B, T] log-probs of the sampled tokens under the current policy (with grad).
        old_logprobs: [B, T] the same under the policy that generated the rollout (no grad).
        advantages: [B, T] per-token advantages, or [B] / [B, 1] per-sequence (broadcast over T).
        mask: [B, T] response mask for the diagnostics; None counts every position.
        clip_eps: epsilon of the lower clip bound (and upper one unless ``clip_eps_high``).
        clip_eps_high: epsilon of the upper clip bound.
        dual_clip: constant ``c`` (> 1, typically 3) of the dual clip; None disables it.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise AlignlabError(f"ppo_clip_loss: dual_clip must be > 1 (got {dual_clip})")
    if advantages.dim() == 1:
        advantages = advantages[:, None]
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    # Clamp before exp so one wildly off-policy token gives a large finite ratio rather than inf/NaN
    # (as verl does); |log r| > 20 is far outside any clip range, so only that token's gradient changes.
    log_ratio = torch.clamp(logprobs - old_logprobs, -20.0, 20.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + eps_high)
    loss = torch.maximum(unclipped, clipped)
    clip_active = (clipped > unclipped).to(logprobs.dtype)
    dual_active = torch.zeros_like(clip_active)
    if dual_clip is not None:
        # -max(L, cA) == min(loss, -cA); only applied where A < 0 (Ye et al. 2020, Eq. 5).
        bound = -dual_clip * advantages
        dual = torch.minimum(loss, bound)
        negative = (advantages < 0).expand_as(loss)
        dual_active = (negative & (loss > bound)).to(logprobs.dtype)
        loss = torch.where(negative, dual, loss)
    with torch.no_grad():
        # k3 of KL(old || new): samples came from old, r = new / old.
        approx_kl = _masked_mean(torch.expm1(log_ratio) - log_ratio, mask)
        clip_frac = _masked_mean(clip_active, mask)
        dual_frac = _masked_mean(dual_active, mask)
    return PPOLossOutput(loss, clip_frac, approx_kl, dual_frac)


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


def kl_k1(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k1 = ``log pi(x) - log ref(x)`` per token, x sampled from pi (Schulman 2020, "Approximating KL
    divergence"). Unbiased for KL(pi || ref), high variance, can be negative per sample."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k2 = ``0.5 * (log ref(x) - log pi(x))^2`` (Schulman 2020). Biased but low variance and >= 0;
    its gradient as a loss term is the gradient of the true reverse KL in expectation."""
    return 0.5 * (ref_logprobs - logprobs) ** 2


def kl_k3(logprobs: Tensor, ref_logprobs: Tensor) -> Tensor:
    """k3 = ``(r - 1) - log r`` with ``r = ref(x) / pi(x)``, x sampled from pi (Schulman 2020).
    Unbiased for KL(pi || ref) (since E_pi[r] = 1), always >= 0, lower variance than k1; the GRPO
    KL term (Shao et al. 2024, Eq. 4)."""
    log_r = ref_logprobs - logprobs
    return torch.expm1(log_r) - log_r


def kl_penalty(
    logprobs: Tensor,
    ref_logprobs: Tensor,
    estimator: KLEstimator = "k1",
    *,
    max_log_ratio: float | None = None,
) -> Tensor:
    """Per-token KL(pi || ref) estimate with the chosen estimator, [B, T] -> [B, T].

    ``max_log_ratio`` clamps ``log pi - log ref`` to ``[-m, m]`` first (e.g. 20, like verl's
    ``low_var_kl``), so a token the policy sampled at near-zero probability cannot overflow k3's exp.

    Use it either shaped into the reward (``advantages.shape_rewards(..., kl=kl_penalty(...).detach())``,
    InstructGPT/PPO style, usually k1) or added to the loss (``loss + beta * kl_penalty(...)``, GRPO
    style, usually k3 or k2 because k1's gradient as a loss has zero expectation).
    """
    if max_log_ratio is not None:
        ref_logprobs = logprobs - torch.clamp(logprobs - ref_logprobs, -max_log_ratio, max_log_ratio)
    if estimator == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if estimator == "k2":
        return kl_k2(logprobs, ref_logprobs)
    if estimator == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise AlignlabError(f"kl_penalty: unknown estimator {estimator!r}; expected one of {KL_ESTIMATORS}")


def entropy_bonus(
    logits: Tensor, mask: Tensor, loss_agg: LossAgg = "token-mean", *, chunk_size: int | None = None
) -> Tensor:
    """Mean policy entropy over response tokens from logits [B, T, V] (float32), aggregated like the loss.

    Subtract ``coef * entropy_bonus(...)`` from the loss to encourage exploration (Schulman et al. 2017,
    Eq. 9, the ``c2 S[pi](s_t)`` term). Keeps the graph; detach it for a diagnostic.
    """
    return aggregate_loss(entropy_from_logits(logits, chunk_size=chunk_size), mask, loss_agg)


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
    """
    mask = mask.to(loss.dtype)
    if loss_agg == "token-mean":
        return (loss * mask).sum() / mask.sum().clamp(min=1.0)
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


@dataclass(frozen=True)
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences", Eq. 2).

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``.
    The coefficient rises when the measured KL exceeds the target and falls when it is below.
    Immutable: :meth:`update` returns a new controller.
    """

    value: float = 0.1
    """Current KL coefficient beta."""
    target: float = 6.0
    """Target KL (nats per sequence, in the units of the KL passed to ``update``)."""
    horizon: int = 10000
    """Horizon in samples: how many samples it takes to move beta by the full clipped error."""

    def __post_init__(self) -> None:
        if self.target <= 0 or self.horizon <= 0 or self.value < 0:
            raise AlignlabError(
                f"AdaptiveKLController: need target > 0, horizon > 0, value >= 0 (got {self.target}, "
                f"{self.horizon}, {self.value})"
            )

    def update(self, current_kl: float, n_steps: int) -> AdaptiveKLController:
        """New controller after observing ``current_kl`` over a batch of ``n_steps`` samples."""
        if not math.isfinite(current_kl):
            # A NaN KL would silently poison beta for the rest of the run.
            raise AlignlabError(f"AdaptiveKLController.update: KL is not finite ({current_kl})")
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        return replace(self, value=self.value * (1.0 + error * n_steps / self.horizon))


@dataclass(frozen=True)
class FixedKLController:
    """Constant KL coefficient; same interface as :class:`AdaptiveKLController`."""

    value: float = 0.1
    """The KL coefficient beta."""

    def update(self, current_kl: float, n_steps: int) -> FixedKLController:
        """Returns itself: the coefficient never changes."""
        return self

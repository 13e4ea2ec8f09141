"""KL(pi || ref) estimators for online RL and the KL-coefficient controllers.

Pure tensor functions (Schulman 2020, "Approximating KL divergence") and two small immutable
controllers for the KL coefficient. Re-exported from :mod:`alignlab.losses.policy`, where callers
have always imported them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Literal

import torch
from torch import Tensor

from alignlab.errors import AlignlabError

__all__ = [
    "KL_ESTIMATORS",
    "AdaptiveKLController",
    "FixedKLController",
    "KLEstimator",
    "kl_k1",
    "kl_k2",
    "kl_k3",
    "kl_penalty",
]

KLEstimator = Literal["k1", "k2", "k3"]
KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")


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


@dataclass(frozen=True)
class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences", Eq. 2).

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * min(n_steps / horizon, 1))``.
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
        # A batch larger than the horizon moves beta by the full clipped error, not more: past 5 horizons the
        # factor went negative (and beta with it).
        return replace(self, value=self.value * (1.0 + error * min(n_steps / self.horizon, 1.0)))


@dataclass(frozen=True)
class FixedKLController:
    """Constant KL coefficient; same interface as :class:`AdaptiveKLController`."""

    value: float = 0.1
    """The KL coefficient beta."""

    def update(self, current_kl: float, n_steps: int) -> FixedKLController:
        """Returns itself: the coefficient never changes."""
        return self

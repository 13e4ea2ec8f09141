"""Rollout/trainer mismatch correction: importance weights from the sampler's to the trainer's policy.

When the tokens were sampled by other weights or kernels than the ones the trainer computes
log-probs with (bf16 sampling, an external engine such as vLLM), the "old" policy the PPO ratio
assumes is not the one that produced the samples. Yao et al. 2025 ("Your Efficient RL Framework
Secretly Brings You Off-Policy RL Training") correct the policy gradient with a per-token
importance weight ``rho = pi_trainer(y_t) / pi_sampler(y_t)``, truncated so its variance stays bounded:

- ``tis`` (truncated IS): ``w = min(rho, cap)``;
- ``mis`` (masked IS): ``w = rho`` where ``rho <= cap`` and 0 elsewhere (the token is dropped).

Use: ``loss_tokens = policy_loss(...).loss * weights`` before :func:`alignlab.losses.policy.aggregate_loss`,
with ``old_logprobs`` the trainer's own log-probs at rollout time and ``sampler_logprobs`` the
sampler's. Below the cap both are the exact importance weight, so the corrected gradient is an
unbiased estimate of the trainer policy's gradient; the cap trades a little bias for bounded variance.
Pure: tensors in, detached tensors out.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from alignlab.errors import AlignlabError

RolloutISMode = Literal["tis", "mis"]
ROLLOUT_IS_MODES: tuple[str, ...] = ("tis", "mis")

__all__ = ["ROLLOUT_IS_MODES", "rollout_is_weights"]


def rollout_is_weights(
    trainer_logprobs: Tensor,
    sampler_logprobs: Tensor,
    mask: Tensor,
    mode: RolloutISMode = "tis",
    cap: float = 2.0,
) -> tuple[Tensor, dict[str, float]]:
    """Per-token importance weights [n, T] (detached) correcting sampler -> trainer, and metrics.

    Args:
        trainer_logprobs: [n, T] log-probs of the sampled tokens under the trainer's weights at
            rollout time (no grad needed; detached here).
        sampler_logprobs: [n, T] the same tokens' log-probs as the sampler reported them.
        mask: [n, T] 1.0 on real response tokens; padding gets weight 1 and is left out of the metrics.
        mode: "tis" (truncate at ``cap``) or "mis" (zero the tokens whose ratio exceeds ``cap``).
        cap: the truncation threshold (> 1; Yao et al. use 2).
    Returns:
        (weights, metrics) with metrics ``rollout_kl_k3`` (k3 estimate of KL(sampler || trainer) over
        real tokens, ``(rho - 1) - log rho``, the sampler being the one that drew them),
        ``rollout_is_weight_mean`` (mean weight over real tokens) and ``rollout_is_capped_frac``
        (fraction of real tokens whose ratio exceeded the cap).
    """
    if mode not in ROLLOUT_IS_MODES:
        raise AlignlabError(f"rollout_is: unknown mode {mode!r}; expected one of {ROLLOUT_IS_MODES}")
    if not cap > 1.0:
        raise AlignlabError(f"rollout_is_cap: must be > 1 (got {cap})")
    if trainer_logprobs.shape != sampler_logprobs.shape or trainer_logprobs.shape != mask.shape:
        raise AlignlabError(
            f"rollout_is: shapes differ: trainer {tuple(trainer_logprobs.shape)}, sampler "
            f"{tuple(sampler_logprobs.shape)}, mask {tuple(mask.shape)}"
        )
    with torch.no_grad():
        real = mask.to(torch.bool)
        m = mask.to(trainer_logprobs.dtype)
        # Padding may hold anything (even -inf): use a zero log-ratio there. Clamp like the PPO ratio.
        log_rho = torch.where(real, trainer_logprobs.detach() - sampler_logprobs.detach(), 0.0)
        log_rho = torch.clamp(log_rho, -20.0, 20.0)
        rho = torch.exp(log_rho)
        over = rho > cap
        weights = torch.clamp(rho, max=cap) if mode == "tis" else torch.where(over, 0.0, rho)
        n = m.sum().clamp(min=1.0)
        metrics = {
            "rollout_kl_k3": float(((torch.expm1(log_rho) - log_rho) * m).sum() / n),
            "rollout_is_weight_mean": float((weights * m).sum() / n),
            "rollout_is_capped_frac": float((over.to(m.dtype) * m).sum() / n),
        }
    return weights, metrics

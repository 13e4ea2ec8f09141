"""KL(policy || reference) estimated from samples of the policy, and perplexity.

Input: for N responses sampled from the policy, the per-token log-probs of the sampled tokens under
the policy and under the reference (``ops.logprobs.token_logprobs``), [N, T] with a response mask.
Sequence KL is in nats per response. Estimators (Schulman 2020, "Approximating KL divergence"), with
``L = sum_t (log pi - log ref)`` the sequence log-ratio:

- k1 = mean(L): unbiased; can come out negative on few samples; high variance.
- k3: ``sum_t [(r_t - 1) - log r_t]`` with ``r_t = ref(x_t | x_<t) / pi(x_t | x_<t)``, averaged over
  samples. Unbiased for the sequence KL by the chain rule (each token term has expectation
  KL(pi(.|x_<t) || ref(.|x_<t)) because E[r_t] = 1), never negative, much lower variance than k1
  when the policy is close to the reference. ``k3_per="sequence"`` instead applies k3 once to the
  whole-sequence ratio ``exp(-L)`` (also unbiased, but its variance explodes on long responses).

Standard errors are ``std(ddof=1) / sqrt(N)`` over responses.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Literal

import torch

from alignlab.errors import AlignlabError

__all__ = ["KLEstimate", "perplexity", "sequence_kl"]


@dataclass(frozen=True)
class KLEstimate:
    """Sequence-level KL(policy || reference) estimates, nats per response."""

    k1: float
    """Mean summed log-ratio."""
    k1_se: float
    """Standard error of ``k1``."""
    k3: float
    """k3 estimate (see module docstring for the per-token / per-sequence form)."""
    k3_se: float
    """Standard error of ``k3``."""
    n: int
    """Number of responses."""
    tokens: int
    """Number of response tokens."""
    k1_per_token: float
    """Summed log-ratio over all tokens / tokens: KL per token, comparable across lengths."""

    def to_dict(self) -> dict:
        """Plain dict for eval.json."""
        return asdict(self)


def _as_float64(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().to(device="cpu", dtype=torch.float64)
    if t.dim() == 1:
        t = t[None, :]
    if t.dim() != 2:
        raise AlignlabError(f"{name}: expected [N, T] token log-probs, got shape {tuple(t.shape)}")
    return t


def _mean_se(x: torch.Tensor) -> tuple[float, float]:
    n = x.numel()
    se = float(x.std(unbiased=True) / math.sqrt(n)) if n > 1 else float("nan")
    return float(x.mean()), se


def sequence_kl(
    policy_logps,
    ref_logps,
    mask=None,
    *,
    k3_per: Literal["token", "sequence"] = "token",
) -> KLEstimate:
    """Estimate KL(policy || reference) per response from policy samples.

    Args:
        policy_logps: [N, T] (tensor or array) log-probs of the sampled tokens under the policy.
        ref_logps: [N, T] the same tokens under the reference.
        mask: [N, T] 1 on response tokens; None means every position counts.
        k3_per: ``"token"`` (sum of per-token k3, default) or ``"sequence"`` (k3 of the whole ratio).
    """
    logp = _as_float64(policy_logps, "sequence_kl policy_logps")
    ref = _as_float64(ref_logps, "sequence_kl ref_logps")
    if logp.shape != ref.shape:
        raise AlignlabError(
            f"sequence_kl: policy {tuple(logp.shape)} and reference {tuple(ref.shape)} shapes differ"
        )
    m = torch.ones_like(logp) if mask is None else _as_float64(mask, "sequence_kl mask")
    if m.shape != logp.shape:
        raise AlignlabError(f"sequence_kl: mask shape {tuple(m.shape)} != log-prob shape {tuple(logp.shape)}")
    if logp.numel() == 0 or not bool((m > 0).any()):  # an estimate of nothing: n=1 and KL 0, or NaN with n=0
        raise AlignlabError(f"sequence_kl: no response tokens (log-probs of shape {tuple(logp.shape)})")
    # Padding may hold anything (-inf, garbage); only response tokens may enter the arithmetic.
    logp, ref = torch.where(m > 0, logp, 0.0), torch.where(m > 0, ref, 0.0)
    if not bool(torch.isfinite(logp).all() and torch.isfinite(ref).all()):
        raise AlignlabError("sequence_kl: non-finite log-probs on response tokens")
    log_ratio = logp - ref
    seq = log_ratio.sum(-1)
    if k3_per == "token":
        # (r - 1) - log r with log r = -log_ratio; expm1 keeps precision when r is near 1.
        k3 = ((torch.expm1(-log_ratio) + log_ratio) * m).sum(-1)
    elif k3_per == "sequence":
        k3 = torch.expm1(-seq) + seq
    else:
        raise AlignlabError(f"sequence_kl: k3_per must be 'token' or 'sequence' (got {k3_per!r})")
    k1_mean, k1_se = _mean_se(seq)
    k3_mean, k3_se = _mean_se(k3)
    tokens = int(m.sum().item())
    return KLEstimate(
        k1=k1_mean,
        k1_se=k1_se,
        k3=k3_mean,
        k3_se=k3_se,
        n=int(seq.numel()),
        tokens=tokens,
        k1_per_token=float(seq.sum() / max(tokens, 1)),
    )


def perplexity(token_logps, mask=None) -> float:
    """Perplexity ``exp(-sum log p / tokens)`` over the masked tokens of [N, T] (or [T]) log-probs.

    Token-weighted (every token counts the same), the usual corpus-level definition.
    """
    logp = _as_float64(token_logps, "perplexity token_logps")
    m = torch.ones_like(logp) if mask is None else _as_float64(mask, "perplexity mask")
    if m.shape != logp.shape:
        raise AlignlabError(f"perplexity: mask shape {tuple(m.shape)} is not token_logps' {tuple(logp.shape)}")
    tokens = float(m.sum())
    if tokens == 0:
        raise AlignlabError("perplexity: no tokens under the mask")
    return math.exp(-float(torch.where(m > 0, logp, 0.0).sum()) / tokens)

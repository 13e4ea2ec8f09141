"""On-policy distillation losses (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes", GKD): a per-token divergence between the student's and the teacher's next-token
distributions at the positions of the student's own samples: over the whole vocabulary (`generalized_jsd`), or,
for a teacher that returns only the sampled token's log-prob, the reverse KL estimated on that token
(`sampled_reverse_kl`).

Pure tensor functions; log-probs in float32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from alignlab.errors import AlignlabError


def generalized_jsd(student_logp: Tensor, teacher_logp: Tensor, beta: float) -> Tensor:
    """Per-position generalised Jensen-Shannon divergence (GKD, Eq. 2) between the teacher P and student Q.

    With M = beta * P + (1 - beta) * Q:  JSD(beta) = beta * KL(P || M) + (1 - beta) * KL(Q || M). The two ends
    are the plain KLs, as GKD uses them: beta = 0 is the forward KL(P || Q) (mode covering, supervised KD) and
    beta = 1 the reverse KL(Q || P) (mode seeking, on-policy distillation's usual choice).

    Args:
        student_logp, teacher_logp: [..., V] log-softmax over the vocabulary.
        beta: in [0, 1].
    Returns:
        [...] the divergence at each position (nats), with the student's graph.
    """
    if not 0.0 <= beta <= 1.0:
        raise AlignlabError(f"generalized_jsd: beta must be in [0, 1], got {beta}")
    p_log, q_log = teacher_logp.float(), student_logp.float()
    if beta == 0.0:
        return (p_log.exp() * (p_log - q_log)).sum(-1)
    if beta == 1.0:
        return (q_log.exp() * (q_log - p_log)).sum(-1)
    m_log = torch.logsumexp(torch.stack([p_log + math.log(beta), q_log + math.log(1.0 - beta)]), dim=0)
    kl_p = (p_log.exp() * (p_log - m_log)).sum(-1)
    kl_q = (q_log.exp() * (q_log - m_log)).sum(-1)
    return beta * kl_p + (1.0 - beta) * kl_q


def sampled_reverse_kl(student_token_logp: Tensor, teacher_token_logp: Tensor) -> Tensor:
    """Per-token reverse KL(student || teacher) estimated on the student's own sampled tokens, for a teacher
    that gives only the sampled token's log-prob (an OpenAI-compatible endpoint), as on-policy distillation
    does (GKD's on-policy reverse KL, Agarwal et al. 2024; Lu & Thinking Machines 2025, "On-Policy Distillation").

    With y_t sampled from the student, the k1 estimate k_t = log pi_s(y_t) - log pi_t(y_t) is an unbiased
    estimate of KL(pi_s || pi_t) at position t, and its stop-gradient times the score,
    sg(k_t) * grad log pi_s(y_t), is an unbiased estimate of that KL's gradient (the context held fixed, as GKD's
    token-level loss holds it: E_y[grad log pi_s(y)] = 0 removes the grad of the log pi_s(y) inside k).
    Written as k_t + sg(k_t) * (log pi_s(y_t) - sg(log pi_s(y_t))): the value is k_t, the gradient
    sg(k_t) * grad log pi_s(y_t), the same gradient as the REINFORCE form -sg(log pi_t - log pi_s) * log pi_s.

    Args:
        student_token_logp: [...] log pi_s of the sampled tokens, with the student's graph.
        teacher_token_logp: [...] log pi_t of the same tokens (no graph needed; detached here).
    Returns:
        [...] per-token estimate (nats); its mean over tokens estimates the token-mean reverse KL.
    """
    s = student_token_logp.float()
    k1 = (s - teacher_token_logp.float()).detach()
    return k1 + k1 * (s - s.detach())

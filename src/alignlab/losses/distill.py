"""On-policy distillation losses (Agarwal et al. 2024, "On-Policy Distillation of Language Models: Learning from
Self-Generated Mistakes", GKD): a per-token divergence between the student's and the teacher's next-token
distributions at the positions of the student's own samples, over the whole vocabulary.

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

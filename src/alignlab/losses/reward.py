"""Reward-model losses over scalar scores: Bradley-Terry pairs and Plackett-Luce ranked lists.

Both return (losses [B], metrics) where metrics are detached scalar tensors for logging.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

Tensor = torch.Tensor

# Stands in for "absent" in ragged lists: exp(-1e9 - x) underflows to exactly 0 in float32, like
# -inf, but keeps logcumsumexp's gradient finite (-inf - -inf would be NaN).
_ABSENT = -1e9


def bradley_terry(
    chosen_scores: Tensor,
    rejected_scores: Tensor,
    margin: Tensor | None = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Pairwise Bradley-Terry loss -log s(r_c - r_r - m) + c (r_c + r_r)^2.

    Ouyang et al. 2022 ("InstructGPT"), Eq. 1: -log s(r(x, y_c) - r(x, y_r)).
    Margin m: Touvron et al. 2023 ("Llama 2"), Eq. 2, a per-pair margin from the preference rating
    (TRL's `margin` column). Centring c (r_c + r_r)^2: Eisenstein et al. 2023, as TRL's
    `center_rewards_coefficient`, which keeps rewards near zero mean; TRL adds
    c * mean((r_c + r_r)^2) to the mean loss, which equals the mean of these per-pair losses.
    Shapes: scores [B], margin [B] or None -> losses [B].
    """
    diff = chosen_scores - rejected_scores
    if margin is not None:
        diff = diff - margin
    losses = -F.logsigmoid(diff)
    if center_coef:
        losses = losses + center_coef * (chosen_scores + rejected_scores) ** 2
    c, r = chosen_scores.detach(), rejected_scores.detach()
    metrics = {
        "accuracy": (c > r).float().mean(),
        "rewards/chosen": c.mean(),
        "rewards/rejected": r.mean(),
        "rewards/margins": (c - r).mean(),
    }
    return losses, metrics


def plackett_luce(scores: Tensor, mask: Tensor | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """K-wise Plackett-Luce loss for lists ranked best first.

    Zhu et al. 2023, "Principled RLHF from Pairwise or K-wise Comparisons", the K-wise MLE
    (used for Starling-RM): -sum_k [ r_k - log sum_{j >= k} exp(r_j) ], over the valid items in rank
    order. For K = 2 this is exactly Bradley-Terry: -(r_1 - log(e^r_1 + e^r_2)) = -log s(r_1 - r_2).
    mask [B, K] (True = present) handles ragged lists; absent items drop out of every sum, and a
    list with fewer than 2 items has loss 0. Shapes: scores [B, K] -> losses [B].
    """
    if mask is None:
        mask = torch.ones_like(scores, dtype=torch.bool)
    mask = mask.to(torch.bool)
    filled = torch.where(mask, scores, torch.full_like(scores, _ABSENT))
    # log sum_{j >= k} exp(r_j): a reversed running logsumexp.
    suffix_lse = torch.logcumsumexp(filled.flip(-1), dim=-1).flip(-1)
    terms = torch.where(mask, filled - suffix_lse, torch.zeros_like(scores))
    losses = -terms.sum(-1)
    s = filled.detach()
    best_first = (
        s[:, :1] > s[:, 1:].max(-1, keepdim=True).values if s.shape[1] > 1 else torch.ones_like(s[:, :1])
    )
    metrics = {"accuracy": best_first.float().mean(), "rewards/top": s[:, 0].mean()}
    return losses, metrics

"""Unpaired preference losses: each completion carries its own desirable/undesirable label.

These need no pairs, so their signature differs from the paired family:

    fn(policy_logps [B], ref_logps [B], labels [B] bool, policy_kl_logps [M], ref_kl_logps [M], *, beta, **params)
        -> (losses [B], chosen_rewards [n_desirable], rejected_rewards [n_undesirable], kl [])

`losses` keep the input order (TRL concatenates desirable then undesirable; the mean is the same).
"""

from __future__ import annotations

import torch

Tensor = torch.Tensor


def kto_kl_estimate(policy_kl_logps: Tensor, ref_kl_logps: Tensor) -> Tensor:
    """KTO's reference point z0: the batch estimate of KL(pi || ref), detached and clamped at 0.

    Ethayarajh et al. 2024, Sec. 4.1: z0 is estimated from MISMATCHED (prompt, completion) pairs of
    the same batch (completion j scored under prompt i != j), its gradient is not taken, and it is
    clamped at 0 since a KL is non-negative (TRL `KTOTrainer.kto_loss`). In multi-process training
    gather both tensors from all ranks first, as TRL does, so every rank uses the same z0.
    """
    if policy_kl_logps.numel() == 0:
        return policy_kl_logps.new_zeros(())
    return (policy_kl_logps - ref_kl_logps).mean().detach().clamp(min=0)


def kto(
    policy_logps: Tensor,
    ref_logps: Tensor,
    labels: Tensor,
    policy_kl_logps: Tensor,
    ref_kl_logps: Tensor,
    *,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """KTO: Kahneman-Tversky value of each completion relative to the reference point z0.

    Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", Eq. 7
    (TRL `KTOTrainer`, loss_type "kto"), with r = log pi(y|x) - log ref(y|x) on SUMMED log-probs:
        desirable:   lambda_D * (1 - s(beta (r - z0)))
        undesirable: lambda_U * (1 - s(beta (z0 - r)))
    lambda_D = desirable_weight, lambda_U = undesirable_weight (the paper suggests
    lambda_D n_D / (lambda_U n_U) in [1, 4/3] when classes are imbalanced).
    policy_kl_logps / ref_kl_logps are the mismatched-pair log-probs giving z0 (`kto_kl_estimate`);
    pass empty tensors to use z0 = 0. Rewards are beta * r, detached, split by label.
    """
    labels = labels.to(torch.bool)
    kl = kto_kl_estimate(policy_kl_logps, ref_kl_logps)
    logratios = policy_logps - ref_logps
    desirable = desirable_weight * (1 - torch.sigmoid(beta * (logratios - kl)))
    undesirable = undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratios)))
    losses = torch.where(labels, desirable, undesirable)
    rewards = beta * logratios.detach()
    return losses, rewards[labels], rewards[~labels], kl

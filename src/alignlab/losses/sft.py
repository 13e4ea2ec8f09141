"""Supervised fine-tuning loss: token-level negative log-likelihood from token log-probs.

Input is what `alignlab.ops.logprobs.token_logprobs` returns (log p of each label, 0 where the
label is ignored) and the 0/1 mask of trained tokens, both [B, T].
"""

from __future__ import annotations

from typing import Literal

import torch

from alignlab.ops.masked import masked_mean

Tensor = torch.Tensor
Reduction = Literal["token_mean", "sequence_mean", "sum", "per_sequence"]


def nll(
    token_logps: Tensor,
    mask: Tensor,
    reduction: Reduction = "token_mean",
    num_tokens: int | float | Tensor | None = None,
) -> Tensor:
    """Negative log-likelihood of the masked tokens.

    reduction:
      - "token_mean" (default): sum over every trained token of the batch / their count. This is
        the TRL and transformers convention (cross-entropy with mean over non-ignored labels), so
        long answers weigh more than short ones. Under gradient accumulation pass `num_tokens`, the
        trained-token count of the WHOLE accumulated batch (transformers' `num_items_in_batch`), so
        the sum over micro-batches equals the one-big-batch loss.
      - "sequence_mean": mean over sequences of each sequence's token-mean NLL (every example
        weighs the same, whatever its length). Sequences with no trained token count as 0.
      - "sum": total NLL of the batch.
      - "per_sequence": [B] token-mean NLL per sequence (0 for empty ones).
    Shapes: token_logps [B, T], mask [B, T] -> scalar, or [B] for "per_sequence".
    """
    maskf = mask.to(token_logps.dtype)
    total = -(token_logps * maskf)
    if reduction == "token_mean":
        denom = maskf.sum() if num_tokens is None else torch.as_tensor(num_tokens, dtype=token_logps.dtype)
        return total.sum() / denom.clamp(min=1.0)
    if reduction == "sum":
        return total.sum()
    per_seq = -masked_mean(token_logps, mask, dim=-1)
    if reduction == "per_sequence":
        return per_seq
    if reduction == "sequence_mean":
        return per_seq.mean()
    raise ValueError(
        f"unknown reduction {reduction!r}; expected token_mean, sequence_mean, sum or per_sequence"
    )

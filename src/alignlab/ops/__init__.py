"""Tensor ops shared by losses and step functions: token/sequence log-probs and masked reductions."""

from alignlab.ops.logprobs import (
    IGNORE_INDEX,
    chunked_token_logprobs,
    entropy_from_logits,
    sequence_logprobs,
    token_logprobs,
)
from alignlab.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "IGNORE_INDEX",
    "chunked_token_logprobs",
    "entropy_from_logits",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "sequence_logprobs",
    "token_logprobs",
]

"""Masked reductions over token tensors (padding and prompt positions have mask 0).

Conventions follow TRL's `masked_mean` / `masked_var` / `masked_whiten` so advantage whitening
matches the field: the variance is Bessel-corrected by default, and whitening adds 1e-8 inside
the square root.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of x where mask is 1; over all elements (dim=None) or along `dim`."""
    prod = x * mask.to(x.dtype)
    return prod.sum() if dim is None else prod.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over mask-1 positions. An all-zero mask gives 0, not NaN."""
    count = masked_sum(torch.ones_like(x), mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over all mask-1 positions (scalar); Bessel-corrected when `unbiased`."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(x.dtype).sum()
        if n < 2:
            raise ValueError("masked_var with unbiased=True needs at least 2 unmasked elements")
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """(x - mean) / sqrt(var + eps) over mask-1 positions; with shift_mean=False the mean is added back.

    Masked positions are transformed too (callers multiply by the mask where it matters).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    return whitened if shift_mean else whitened + mean

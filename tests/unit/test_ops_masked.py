"""ops.masked: values worked out by hand."""

import math

import torch

from alignlab.ops.masked import masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 200.0]])
M = torch.tensor([[1, 1, 0], [1, 1, 0]])


def test_masked_sum_and_mean():
    """Unmasked values 1, 2, 3, 4: sum 10, mean 2.5; per row: sums [3, 7], means [1.5, 3.5]."""
    assert masked_sum(X, M).item() == 10.0
    assert masked_mean(X, M).item() == 2.5
    torch.testing.assert_close(masked_sum(X, M, dim=1), torch.tensor([3.0, 7.0]))
    torch.testing.assert_close(masked_mean(X, M, dim=1), torch.tensor([1.5, 3.5]))
    torch.testing.assert_close(masked_mean(X, torch.zeros_like(M), dim=1), torch.tensor([0.0, 0.0]))


def test_masked_var():
    """1, 2, 3, 4 around 2.5: squared deviations 2.25+0.25+0.25+2.25 = 5; /4 = 1.25, unbiased /3 = 5/3."""
    assert abs(masked_var(X, M, unbiased=False).item() - 1.25) < 1e-6
    assert abs(masked_var(X, M).item() - 5 / 3) < 1e-6


def test_masked_whiten():
    """(x - 2.5) / sqrt(5/3 + 1e-8): 1 -> -1.5/1.290994 = -1.161895; shift_mean=False adds 2.5 back."""
    w = masked_whiten(X, M)
    s = math.sqrt(5 / 3 + 1e-8)
    expected = torch.tensor([[-1.5 / s, -0.5 / s], [0.5 / s, 1.5 / s]])
    torch.testing.assert_close(w[:, :2], expected)
    assert abs(masked_mean(w, M).item()) < 1e-6
    torch.testing.assert_close(masked_whiten(X, M, shift_mean=False)[:, :2], expected + 2.5)
